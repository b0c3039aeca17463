r"""Dig2DIG: diffusion information gains as dynamic, per-pixel fusion weights.

Cao, Cai, Zhang, Hu, "Dig2DIG: Dig into Diffusion Information Gains for Image Fusion",
arXiv 2503.18627.  No code was released; this module is our reading of the paper, with every
choice the paper leaves open written down here (and measured in ``benchmarks/``).

1. Diffusion information gain (DIG)
-----------------------------------
For source c_i (luminance in [-1, 1]) and a shared noise ε, noise the source to level t with the
DDPM forward process, x^i_t = √ᾱ_t c_i + √(1-ᾱ_t) ε, and denoise it in one prior call,
x̂0^i(t) = (x^i_t - √(1-ᾱ_t) ε̂(x^i_t, t)) / √ᾱ_t.  With a per-pixel distance map
d_i(t) = G_σ * dist(x̂0^i(t), c_i) (G_σ a Gaussian, σ = ``smooth`` pixels),

    DIG_i(t) = d_i(t_S) - d_i(t),        t_S = the grid timestep S steps earlier (noisier),

how much closer the denoised estimate of the source got to the source itself between the two
noise levels: large where the prior "finishes" that source's structure in this stretch of the
trajectory (infrared targets early, visible texture late).

Choices:

* **The shared ε** is drawn once per image (from the item's seed) and reused at every refresh and
  for every source, so DIG differences reflect the sources, not the noise.  Because the noise is
  fixed, the level t_S of refresh k is the level t of refresh k - S: its distance maps are cached
  and each refresh costs **one batched prior forward of the N sources** at the new level.
* **Refreshes** happen at steps 0, S, 2S, … (S = ``interval`` = 10 as in the paper) and the
  weights are held between them.  ``window`` says which stretch of the trajectory a refresh
  measures.  ``backward`` (default; the paper's formula read literally, t_S = the level S steps
  *earlier*): the stretch just traversed.  At step 0 there is no noisier level, so the first
  refresh only records d_i(t_0) and the first S steps run with equal weights (with DIG-25 and
  S = 10, t = 999 … 360).  ``forward``: the stretch about to be traversed, DIG_i = d_i(t_k) -
  d_i(t_{k+S}) (t_{k+S} capped at the last grid point), so the weights steer exactly the steps
  whose gain they measure and act from step 0; the first refresh then denoises two levels, in the
  same one batched forward.  Either way each level is denoised once and reused by the next refresh.
  ``benchmarks/dig2dig_ablations.py`` (part ``window``) compares the two.
* **x̂0 of a noised source** is clipped to [-1, 1], as the sampler clips its own x̂0.
* **What DIG is measured on.**  The default pyramid blend (section 2) measures it **per scale**:
  the distance is taken between the Laplacian-pyramid bands of x̂0^i(t) and of c_i (band k of the
  DIG-resolution pyramid), each smoothed by a Gaussian of ``band_smooth`` = 1 pixel of that band, so
  DIG_i^k says how much of source i's detail *at that scale* the prior finished in the stretch.  The
  pixel blend (the rule of dig2dig 0.1-0.2, ``blend="pixel"``) measures it on intensities,
  d_i(t) = G_σ * dist(x̂0^i(t), c_i) with σ = ``smooth`` image pixels.  A DIG map comes from one draw
  of ε, and at the noisiest levels x̂0 of a noised source is mostly the prior's guess from that ε
  (√ᾱ_999 ≈ 0.006): the same blotchy guess g(ε) for every source, so the cross-source differences of
  d_i(999) = (g - c_i)² are linear in g and carry its ~20-30-pixel blotches into intensity weights.
  The pixel blend therefore needs wide smoothing (``preset="select"``: σ = 32; ``"soft"``: 12), and
  with weights that select, σ is the size of the regions a source wins -- the round blobs and
  region-shaped brightness steps of dig2dig 0.2.  Per band, the blotches of g sit in the coarse
  bands, and each band's own smoothing is a pixel of that band.
* **Resolution** (``dig_scale``, default 0.5): DIG maps are computed on sources resized by this
  factor and upsampled back.  It cuts a refresh to a quarter of a full-size forward, which is what
  keeps DIG-25 under 1/3.5 of DDFM-100's time on a CPU.  At 0.5, band k of the DIG pyramid holds the
  detail of the image's band k + 1; the image's finest band takes the DIG of its next band.
* **Distances** (``distance``): ``l2`` (default; squared error, the paper's best), ``l1``
  (absolute error), ``ssim`` (1 - local SSIM, 7×7 window; pixel blend only), and ``none``: a gain with no
  reference to the clean source, the change of the estimate itself,
  DIG_i = G_σ * (x̂0^i(t) - x̂0^i(t_S))².  The paper's Table 3 "no metric" row equals its DDFM
  row, i.e. fixed guidance -- ``weights="equal"`` here; ``none`` is our own variant.
* **The grid** (DIG-N): the paper only asks for big steps at high noise and small ones at low
  noise; we use t_i = 999·(i/(N-1))^p with p = ``power`` = 2 (:func:`dig2dig.schedule.power_grid`).
  The default is the paper's DIG-25 with S = 10.  DIG-18 with S = 7 (``steps=18, interval=7``:
  refreshes at steps 0, 7, 14, as many as DIG-25/10 has, seven steps fewer) is the fast setting: on
  the dev sets (section 2's table) it matches DIG-25/10 within 0.6 % on Qabf, VIF, SF, SD, SSIM and
  CC (MI 1-3 % higher, Nabf 8-15 % higher, still ~1e-3) and takes 10.7 s against DDFM-100's 55.1 s
  for a 640×480 pair on the 2-core CPU (5.15×; DIG-25: 13.6 s, 4.0×), but it keeps small infrared
  pedestrians a little less well (VIFB ``manlight``: one of three clearly, against two), so it is
  not the default.
* **Acceleration** (``accelerate`` = r, default 0 = off; the paper names DIG-driven acceleration
  without specifying it): after a refresh, if the total gain Σ-mean of DIG_i over the window is
  below r × the largest total gain of this image so far, the steps up to the next refresh are
  merged in pairs (DDIM from grid point i straight to i + 2, never past the next refresh) -- the
  sources have little left to add there.  With ``window="forward"`` the gain is that of the very
  stretch being merged; with ``backward`` the previous stretch stands in for it.  The decision is
  per image, so :func:`dig2dig.fuse_batch` runs accelerated items one at a time.

2. Where the weights act: a pyramid data term (the default)
-----------------------------------------------------------
dig2dig 0.2 put one weight per pixel on each source's *intensity* in the EM step (section 4) and
sharpened the weights into a 32-pixel selection.  Large, simple, bright structures (CT bone, clipped
highlights, haze) are finished first by the prior and won whole regions: MRI-CT came out as the CT,
a multi-exposure pair as its bright frame, and infrared-visible scenes switched source in round,
σ-sized regions with a brightness step around them.  A choice between intensities cannot carry the
MRI's detail *inside* the CT's bright skull, nor the dark frame's detail inside a clipped highlight.

``blend="pyramid"`` (the default) moves the weights to where exposure fusion and Laplacian-pyramid
fusion put theirs (Burt & Adelson 1983; Mertens et al. 2007): the EM target is assembled scale by
scale from the sources' Laplacian pyramids (``levels``: as many as keep the coarsest level 8 pixels
or more, at most 5, i.e. structures of 32+ pixels).

* **Detail (every band but the coarsest).**  At each refresh, each band's DIG (section 1) goes
  through the softmax of section 3 (τ = ``temperature`` = 0.2, L = ``limit`` = 5): w_i^k, how much
  of the detail at scale k the prior found in source i.  The *salience* of a source at a pixel is
  its detail magnitude weighted by those gains and summed over scales, S_i = G_σ * Σ_l w_i^l |L_i^l|
  (σ = ``smooth`` = 4 pixels) -- detail that the prior finishes counts, detail it does not (sensor
  noise, blotches of ε) counts less.  Each pixel takes its detail from the most salient source (ties
  shared), and that choice is carried to every band through its own Gaussian pyramid, so the
  transition between two sources is as wide as each band's structures: no seams, no blobs.
  Choosing one source per pixel for all bands, rather than each coefficient on its own, keeps a
  source's structure whole (VIFB: Qabf 0.696 against 0.675, VIF 0.96 against 0.92, on 4 dev pairs).
* **The coarsest level (``base``)** is mixed by the EM precisions of section 4, per task (the task
  records in :mod:`dig2dig.tasks`, ``base="auto"``): ``consensus`` (MIF, MEF) uses the released DDFM's
  precisions, a blend near the sources' mean, so the CT's bone and the bright frame cannot take the
  MRI's soft tissue or the dark frame's highlights with them; ``select`` (VIF, MFF) uses the
  intensity DIG weights (σ = ``smooth``, the coarsest level's own Gaussian pyramid smooths them to
  32+ pixels) times the paper's attractive precisions, so each region keeps the brightness of the
  source DIG favours: a night scene keeps its visible context and its bright infrared targets, an
  in-focus region its source's values.

The detail stays fixed between refreshes (until the first informative refresh: the sources' mean
detail); the coarsest level is mixed again at every step from the current x̂0.  Per step this costs
a Gaussian pyramid of N weight maps and one collapse: nothing next to the prior's forward.

What each choice measured (the fast proxy: DIG-25's refreshes and the EM's fixed point without the
reverse steps, which matched the full sampler within 0.002 Qabf; first 2-4 pairs of each dev set):

    candidate                               VIFB Qabf/VIF/SD/MI       MRI-CT Qabf/VIF/MI/SSIM_min
    per-coefficient DIG-weighted max        0.675 0.918 46.1 2.01     0.612 0.483 1.35 0.561
    one choice per pixel, consensus base    0.696 0.962 45.7 2.09     0.611 0.615 1.41 0.515
      + base from the intensity DIG (τ 0.2)  0.701 0.984 46.0 2.09     0.612 0.700 1.51 0.508
      + the paper's precisions (select)    0.707 1.046 54.4 2.47     0.617 0.737 1.57 0.468
    the choice itself as base weights       0.698 1.027 55.4 3.14     0.617 0.743 1.58 0.437
    the better of guided and laplacian      0.711 1.015 49.0 2.99     0.619 0.558 1.52 0.577

The selecting bases give MRI-CT its best Qabf and VIF, but they whiten the bone and drop the MRI
detail inside it (SSIM_min 0.44-0.47), hence ``consensus`` for MIF; for MEF ``consensus`` scored
MEF-SSIM 0.990 / 0.989 on SICE / IIDMEF against 0.982 / 0.976 for well-exposedness weights
(Mertens' measure) on the coarsest level and on the salience, which were dropped.

On the full dev sets (``benchmarks/results/task_quality.md``, ``benchmarks/task_quality.py``) the default
reaches 5 of the 13 per-task bars -- VIF's VIF and SD, MIF's Qabf and VIF, MFF's Qabf -- and misses the
others by 0.2-4 % (VIF Qabf 0.651 vs guided's 0.673, MI 2.02 vs 2.04; MIF MI 1.74 vs 1.80, SSIM_min
0.590 vs 0.616; MEF-SSIM 0.986 vs 0.988; MFF MI 4.48 vs 4.55, SF 21.8 vs 22.2).  Against DDFM-100 it
wins Qabf only: SSIM, MSE, CC, PSNR and Nabf reward a blend of the sources, and DDFM's consensus is one.
Seen in the images: MRI detail inside the CT's bone is fainter than ``laplacian``'s (the consensus base
greys the bone, but the choice hands its detail to the CT's edges where both have some), a faint halo
follows the skull outside it (the coarse bands of two sources mixed by the choice), MSRS night scenes come
out darker than the visible image, and on MFFW 01 a small part of the in-focus snout still comes from the
blurred source (the salience sums all bands, and a blurred edge has more energy at the middle scales).
Next: weigh each band's share of the salience by its DIG spread (fine bands for focus, middle bands for
targets), keep the choice off the coarsest two bands, and give the consensus base the well-exposed or
brighter source's share per region (MRI-CT bone, night scenes).

3. Weights
----------
w_i = softmax_i(DIG_i / (τ·s)) per pixel, with τ = ``temperature`` (default 0.2) and s the largest
cross-source spread, mean |DIG_i - mean_j DIG_j| over sources and pixels, of any refresh of this
image so far.  DIG is an absolute quantity whose size depends on the image and the noise level, so
a raw softmax would be uniform by accident (DIG ≪ 1 on [-1, 1] data) and a fixed τ would fit some
images and not others.  Only differences between sources move a softmax, so the scale leaves out
the part of DIG that all sources share (the general fall of the estimation error with the noise).
Taking the image's own largest spread makes the most informative refresh clearly non-uniform while
later refreshes, whose gains are small because the sources are nearly recovered, fade toward equal
weights instead of amplifying noise.  The scaled, centred gains are softly limited to ±L
(z ↦ L tanh(z / L), L = ``limit``, default 5; L = 0 lifts the limit).  The pyramid blend scales
each band on its own (its own running spread).  The weights are a partition
of unity at every pixel.  ``weights="equal"`` fixes w_i = 1/N (the fixed-guidance ablation, i.e.
DDFM-style guidance with N sources).

**The pixel blend's selection (dig2dig 0.2, ``preset="select"``).** With τ = 1 and L = 1 (dig2dig
0.1, ``preset="soft"``) two-source weights stayed within 0.12 … 0.88: every pixel was a blend, the
EM step then settles near the mean of the sources, and the result scored like the plain average on
the metrics that reward carrying each source's structure (VIFB Qabf 0.448 vs 0.408 for the average;
SF 11.1 vs 10.4). A small τ with a wide limit turns the weights into a smooth *selection*: where one
source's structure is finished by the prior first, that source's data term takes the pixel, and the
σ-wide transitions between regions keep the seams invisible. Chosen on the dev sets (VIFB 21, MSRS
10, MFFW 13 pairs; cddfuse convention; ``benchmarks/dig2dig_default.py``, table in
``benchmarks/records/dig2dig_default.md``) among the rules the paper allows; ``preset="paper"`` is
the paper read literally (a per-pixel blend, the paper's attractive mixing, no limit, no smoothing,
τ = 1). Means over pairs, 0.2's selection vs 0.1's soft weights vs the plain average:

    dataset   Qabf               VIF                SF                 SSIM (sum of two)
    VIFB      0.646 0.441 0.408  0.905 0.657 0.650  16.6 10.7 10.1     0.926 0.920 0.925
    MSRS      0.587 0.373 0.353  0.836 0.664 0.662   7.96 5.47 5.24    0.861 0.769 0.763
    MFFW      0.710 0.619 0.554  1.260 0.988 0.950  21.4 15.3 13.2     1.245 1.315 1.358

What it costs: the measures a plain average optimises get worse -- CC with the sources (VIFB
0.52 vs 0.64, MFFW 0.948 vs 0.970) and MSE to them (VIFB 2588 vs 1703) -- and Nabf rises from ~1e-6
to ~1e-3 (the published multi-focus methods' median is 8.6e-3); on MFFW the summed SSIM falls 5 %,
and on MSRS MI falls to 1.80 (average 2.21).  τ = 0.01 with σ = 64 scores
higher still on every dataset (VIFB Qabf 0.675, MSRS SSIM 0.926, MFFW MI 5.12) but hands small
infrared pedestrians to the visible background around them, which is why σ = 32 and τ = 0.02 were
0.2's default.  The paper-literal rule (attractive mixing) selects without smoothing and tears the
image into the sources' pieces (VIFB SSIM 0.47, Nabf 0.066).

4. Guidance: the DDFM EM step for N sources with per-pixel weights
-------------------------------------------------------------------
The paper writes the weights into the score of the guided reverse process,
∇ log p(x_t | c) ≈ ∇ log p(x_t) + Σ_i w_i ∇ log p(c_i | x_t), and builds on DDFM, whose
conditional term is realised as an EM rectification of x̂0.  We therefore put w_i where the
data term of source i enters that EM step, not into an explicit likelihood gradient.
DDFM (see :mod:`dig2dig.guidance.ddfm`) rectifies x̂0's luminance f by one EM iteration per step.
Dropping its tiny TV term (ρ = 1e-3 against precisions ≳ 1) and the two-source cap D ≤ 2C, its
E-step gives each source a precision from the current residual r_i = f - c_i,

    P_i = sqrt(2 / (τ_i (r_i² + 1e-6))),      τ_i ← mean(1/(P_i + 1e-10) + τ_i/2),

and its M-step mixes the sources.  Weighting source i's data term by w_i:

* ``mixing="complementary"`` (default of the pixel blend) -- the released DDFM's rule, generalised:
  f' = Σ_i (w_i / P_i) c_i / Σ_i (w_i / P_i).  For N = 2 and equal weights this is exactly the
  release's F = (D·I + C·V)/(C + D).  Since 1/P_i ∝ |r_i|, it is one reweighted-least-squares step
  for Σ_i w_i √τ_i |f - c_i|³ / 3: an ℓ3 consensus that blends the sources (its fixed point
  with equal weights is near their mean), pulled per pixel toward the sources DIG favours.
* ``mixing="attractive"`` -- the paper's rule f = x + v, generalised: f' = Σ_i w_i P_i c_i /
  Σ_i w_i P_i, one IRLS step for Σ_i w_i |f - c_i| (a weighted median: per-pixel selection).

With ``blend="pyramid"`` the E-step is the same and the M-step assembles f' by scales (section 2):
f' = D + up(Σ_i Ĝ(a_i) Ĝ(c_i) / Σ_i Ĝ(a_i)), where D is the chosen detail collapsed to full size, Ĝ
the coarsest level of a Gaussian pyramid, ``up`` the pyramid's expansion back to full size, and
a_i = 1/P_i (``consensus``) or w_i P_i (``select``: the intensity DIG weights times the attractive
precisions).  ``mixing`` is the pixel blend's rule; the pyramid's base names its own.

Everything is per batch item (τ means are per image), so a batch equals its items run alone.

5. What the ablations measured
------------------------------
(``benchmarks/records/dig2dig_ablations.md``: embedded prior, cddfuse convention, MSRS/LLVIP; made
with the soft weights of dig2dig 0.1, ``preset="soft"``, before the defaults of section 2.)
Against DDFM-100 on the first 10 MSRS + 2 LLVIP pairs, Dig2DIG-25 wins SSIM, Nabf, PSNR and Qabf
and loses MSE and CC by < 0.3 % -- the two metrics a plain average of the sources maximises.
Over equal weights the DIG weights raise Qabf by 6-12 % and SSIM slightly.  ℓ2 is the best
distance (ℓ1 trades Nabf and CC for Qabf; the SSIM map is clearly worse).  The refresh interval
and the step count share one failure mode: the weights are strongest at the first informative
refresh (the running-max scale makes later ones milder), and if that refresh is the *last* one
-- S = 20 with DIG-25, or DIG-15/DIG-20 with S = 10, whose second refresh falls at t ≈ 80-220 --
strong per-pixel weights steer the final low-noise steps, where the EM blend sets the output
directly, and the result is a region-wise blend of the sources (SSIM 0.73 → 0.59, Nabf × 200).
DIG-25 with S = 10 keeps its strong weights in the middle of the trajectory (t ≈ 340 … 28) and
is as good as DIG-50.  The forward window spends its strongest weights at high noise, where the
trajectory forgets them: it measures like equal weights.  Step merging (``accelerate``) saves
forwards at a small cost in quality; it is off by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..functional import (
    collapse,
    gaussian_blur,
    gaussian_pyramid_top,
    item_noise,
    laplacian_pyramid,
    local_ssim,
    luma,
    pyr_down,
    pyr_up,
    pyramid_levels,
    with_luma,
)
from ..options import DIGOptions
from ..sampler import Rectifier

NOISE_SALT = 0x5D1A  # the shared ε's stream, apart from the item's initial noise


# one noise level's DIG input: a distance map (N, B, 1, h, w), or with the pyramid blend one per band
Level = torch.Tensor | list[torch.Tensor]


@dataclass
class DIGState:
    tau: torch.Tensor  # (N, B, 1, 1, 1) EM scale per source
    weights: torch.Tensor  # (N, B, 1, H, W), partition of unity over N
    levels: dict[int, Level] = field(default_factory=dict)  # t -> (N, B, 1, h, w) distance maps (x̂0 for "none")
    last_t: int | None = None  # timestep of the last refresh
    next_refresh: int = 0  # grid index of the next refresh
    scale: torch.Tensor | None = None  # running max of mean|DIG - mean_j DIG_j| over the refreshes so far
    gain_max: torch.Tensor | None = None  # running max of the total gain (B,), for acceleration
    stride: int = 1  # grid points per reverse step until the next refresh (2 = merged steps)
    detail: torch.Tensor | None = None  # pyramid blend: the weighted detail bands, collapsed (B, 1, H, W)
    band_scale: list | None = None  # pyramid blend: the running max spread of each band's DIG
    base_weights: torch.Tensor | None = None  # pyramid blend, base="select": the coarsest level's DIG weights
    history: list = field(default_factory=list)  # one record per refresh


def distance_map(x0: torch.Tensor, ref: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "l2":
        return (x0 - ref) ** 2
    if kind == "l1":
        return (x0 - ref).abs()
    if kind == "ssim":
        return 1.0 - local_ssim(x0, ref, 7)
    raise ValueError(f"distance must be one of l2, l1, ssim, got {kind!r}")


def dig_scale_of(dig: torch.Tensor) -> torch.Tensor:
    """mean |DIG_i - mean_j DIG_j| over sources and pixels, per batch item: (1, B, 1, 1, 1).

    Only differences between sources move a softmax, so the part of DIG common to all sources
    (the general drop in estimation error as the noise falls) is left out of the scale.
    """
    return (dig - dig.mean(dim=0, keepdim=True)).abs().mean(dim=(0, 2, 3, 4), keepdim=True)


def softmax_weights(dig: torch.Tensor, temperature: float, scale: torch.Tensor, limit: float = 1.0) -> torch.Tensor:
    """softmax over sources (dim 0) of the centred DIG / (τ · scale), softly limited to ±``limit``
    (z ↦ limit · tanh(z / limit); limit 1: two-source weights within 0.12 … 0.88; 0: no limit)."""
    z = (dig - dig.mean(dim=0, keepdim=True)) / (temperature * scale.clamp_min(1e-12))
    return torch.softmax(limit * torch.tanh(z / limit) if limit > 0 else z, dim=0)


class DIGGuidance(Rectifier):
    """The Dig2DIG rectifier for :func:`dig2dig.sampler.ddim`.

    ``sources``: list of N (B, 1, H, W) luminance tensors in [-1, 1]; ``prior`` answers the DIG
    forwards; ``noise_seeds`` fix the shared ε per batch item; ``record`` keeps the DIG maps and the
    per-level curves for the figures.  Keyword options: :class:`dig2dig.methods.DIGOptions`.
    """

    name = "dig2dig"

    def __init__(
        self,
        sources: list[torch.Tensor],
        prior,
        grid: list[int],
        opts: DIGOptions | None = None,
        *,
        noise_seeds: list[int] | None = None,
        record: bool = False,
        task: str | None = None,
    ):
        if len(sources) < 2:
            raise ValueError(f"Dig2DIG fuses two or more sources, got {len(sources)}")
        if len({tuple(s.shape) for s in sources}) != 1 or sources[0].ndim != 4 or sources[0].shape[1] != 1:
            raise ValueError("sources must be (B, 1, H, W) tensors of one shape")
        self.opts = o = DIGOptions.ensure(opts)
        self.src = torch.stack(sources)  # (N, B, 1, H, W)
        self.prior, self.grid, self.record = prior, list(grid), record
        n, b, _, h, w = self.src.shape
        self.pyramid = o.blend == "pyramid"
        m = prior.spatial_multiple
        # DIG works on (optionally) downscaled sources, at a size the prior accepts
        hs = max(m, int(round(h * o.dig_scale / m)) * m)
        ws = max(m, int(round(w * o.dig_scale / m)) * m)
        self.small = (hs, ws)
        flat = self.src.reshape(n * b, 1, h, w)
        self.src_small = F.interpolate(flat, size=self.small, mode="area") if (hs, ws) != (h, w) else flat
        seeds = noise_seeds if noise_seeds is not None else list(range(b))
        if len(seeds) != b:
            raise ValueError(f"need one noise seed per batch item ({b}), got {len(seeds)}")
        eps = item_noise((1, hs, ws), seeds, self.src.device, self.src.dtype, salt=NOISE_SALT)
        self.eps = eps.repeat(n, 1, 1, 1)  # the same ε for every source of an item
        self.refresh_forwards = 0
        self._curve: dict[str, Any] | None = None  # record mode: d_i at every grid level, computed once after sampling
        if self.pyramid:
            self._init_pyramid(task)

    def _init_pyramid(self, task: str | None) -> None:
        """The sources' pyramids (fixed for the whole run) and the coarsest level's rule for this task."""
        from ..tasks import task_record

        n, b, _, h, w = self.src.shape
        o = self.opts
        self.n_levels = pyramid_levels(h, w, o.levels)
        bands, top = laplacian_pyramid(self.src.reshape(n * b, 1, h, w), self.n_levels)
        self.src_bands = [x.reshape(n, b, 1, *x.shape[-2:]) for x in bands]
        self.src_top = top.reshape(n, b, 1, *top.shape[-2:])
        self.band_sizes = [tuple(x.shape[-2:]) for x in bands]
        # the DIG maps are at dig_scale: their band k holds the detail of the image's band k + 1 (at 0.5)
        self.small_bands = max(1, self.n_levels - 1)
        self.src_small_bands = laplacian_pyramid(self.src_small, self.small_bands)[0]
        self.base = task_record(task).dig_base if o.base == "auto" else o.base

    # --- DIG -----------------------------------------------------------------------------
    def _levels(self, state: DIGState, ts: list[int]) -> list[Level]:
        """Distance maps (x̂0 for ``none``) at timesteps ``ts``; the missing ones in one batched forward."""
        n, b = self.src.shape[:2]
        todo = [t for t in dict.fromkeys(ts) if t not in state.levels]
        if todo:
            ab = [float(self.prior.alphas_cumprod[t]) for t in todo]
            xt = torch.cat([math.sqrt(a) * self.src_small + math.sqrt(1 - a) * self.eps for a in ab])
            tt = torch.tensor(todo, device=xt.device).repeat_interleave(n * b)
            eps = self.prior.eps(xt.repeat(1, self.prior.channels, 1, 1), tt)
            self.refresh_forwards += 1
            for k, t in enumerate(todo):
                chunk = slice(k * n * b, (k + 1) * n * b)
                x0 = luma(self.prior.x0_from_eps(xt[chunk].repeat(1, self.prior.channels, 1, 1), eps[chunk], t))
                if self.pyramid:
                    state.levels[t] = self._band_distances(x0)
                    continue
                if self.opts.distance == "none":
                    d = x0
                else:
                    d = gaussian_blur(
                        distance_map(x0, self.src_small, self.opts.distance), self.opts.smooth * self.opts.dig_scale
                    )
                state.levels[t] = d.reshape(n, b, 1, *self.small)
        return [state.levels[t] for t in ts]

    def _band_distances(self, x0: torch.Tensor) -> list[torch.Tensor]:
        """Pyramid blend: per detail band k, the smoothed distance between the denoised source's band and the
        source's, each (N·B, 1, h_k, w_k); with ``base="select"`` the intensity distance map last (``none``: the
        denoised bands and intensity themselves)."""
        bands, _ = laplacian_pyramid(x0, self.small_bands)
        whole = [x0] if self.base == "select" else []
        if self.opts.distance == "none":
            return bands + whole
        out = [
            gaussian_blur(distance_map(x, ref, self.opts.distance), self.opts.band_smooth)
            for x, ref in zip(bands, self.src_small_bands)
        ]
        return out + [
            gaussian_blur(distance_map(x, self.src_small, self.opts.distance), self.opts.smooth * self.opts.dig_scale)
            for x in whole
        ]

    def _band_gains(self, d_from: list[torch.Tensor], d_to: list[torch.Tensor]) -> list[torch.Tensor]:
        """DIG_i of every band (and of the intensity, with ``base="select"``), (N, B, 1, h_k, w_k) each."""
        n, b = self.src.shape[:2]
        out = []
        for k, (f, t) in enumerate(zip(d_from, d_to)):
            sigma = self.opts.band_smooth if k < self.small_bands else self.opts.smooth * self.opts.dig_scale
            g = gaussian_blur((t - f) ** 2, sigma) if self.opts.distance == "none" else f - t
            out.append(g.reshape(n, b, 1, *g.shape[-2:]))
        return out

    def _total(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Pyramid blend: the band maps summed at the DIG resolution, (N, B, 1, h, w) (for records and curves)."""
        flat = [m.reshape(-1, 1, *m.shape[-2:]) for m in maps[: self.small_bands]]
        total = sum(pyr_up(m, self.small) for m in flat)
        assert isinstance(total, torch.Tensor)  # small_bands >= 1
        return total.reshape(*self.src.shape[:2], 1, *self.small)

    def _gain(self, d_from: torch.Tensor, d_to: torch.Tensor) -> torch.Tensor:
        """DIG_i between a noisier level (``d_from``) and a less noisy one (``d_to``): (N, B, 1, h, w)."""
        n, b = self.src.shape[:2]
        if self.opts.distance == "none":
            return gaussian_blur(
                ((d_to - d_from) ** 2).reshape(n * b, 1, *self.small), self.opts.smooth * self.opts.dig_scale
            ).reshape(n, b, 1, *self.small)
        return d_from - d_to

    def refresh(self, state: DIGState, step) -> DIGState:
        """Recompute the weights at this step: DIG over the window, softmax, hold until the next refresh."""
        n, b, _, h, w = self.src.shape
        state.next_refresh = step.index + self.opts.interval
        if self.opts.window == "forward":
            # the gain the prior achieves over the coming stretch, step.t -> the grid point S steps on
            t_from, t_to = step.t, self.grid[min(step.index + self.opts.interval, len(self.grid) - 1)]
        else:
            # the gain over the stretch just traversed, the last refresh's level -> step.t
            t_from, t_to = state.last_t, step.t
        rec = {"step": step.index, "t": step.t, "t_from": None}
        if t_from is not None and t_from != t_to:
            d_from, d_to = self._levels(state, [t_from, t_to])
            if self.pyramid:
                assert isinstance(d_from, list) and isinstance(d_to, list)  # per band
                dig = self._refresh_bands(state, self._band_gains(d_from, d_to))
            else:
                assert isinstance(d_from, torch.Tensor) and isinstance(d_to, torch.Tensor)
                dig = self._gain(d_from, d_to)
                cur = dig_scale_of(dig)
                state.scale = cur if state.scale is None else torch.maximum(state.scale, cur)
                w_small = softmax_weights(dig, self.opts.temperature, state.scale, self.opts.limit)
                weights = F.interpolate(
                    w_small.reshape(n * b, 1, *self.small), size=(h, w), mode="bilinear", align_corners=False
                ).reshape(n, b, 1, h, w)
                state.weights = weights / weights.sum(0, keepdim=True)
            gain = dig.mean(dim=(0, 2, 3, 4))  # total gain per item, (B,)
            state.gain_max = gain if state.gain_max is None else torch.maximum(state.gain_max, gain)
            if self.opts.accelerate > 0:
                # merge pairs of steps up to the next refresh when every item's gain in this window is a
                # small share of its largest so far: the sources have little left to add there
                small = bool((gain < self.opts.accelerate * state.gain_max.clamp_min(1e-12)).all())
                state.stride = 2 if small else 1
            # kept on the device (a copy to the host would stall a GPU); item_records converts them
            rec.update(
                t_from=t_from,
                t_to=t_to,
                dig_mean=dig.mean(dim=(2, 3, 4)).T,
                gain=gain,
                stride=state.stride,
                weights=state.weights.to(torch.float16),
            )
            if self.record:
                rec["dig"] = dig
        elif t_from is None:
            self._levels(state, [t_to])  # the first backward refresh only records its level
        state.levels = {t: state.levels[t] for t in (t_to,) if t in state.levels}  # the one a later refresh reuses
        state.last_t = step.t
        state.history.append(rec)
        return state

    def _refresh_bands(self, state: DIGState, gains: list[torch.Tensor]) -> torch.Tensor:
        """Pyramid blend: which source gives the detail at each pixel, from the DIG-weighted detail magnitudes,
        and the detail bands blended accordingly; with ``base="select"`` the coarsest level's weights from the
        intensity DIG.  Returns the gains summed over bands (for the records)."""
        n, b, _, h, w = self.src.shape
        scales = [dig_scale_of(g) for g in gains]
        state.band_scale = (
            scales if state.band_scale is None else [torch.maximum(s, c) for s, c in zip(state.band_scale, scales)]
        )
        w_small = [
            softmax_weights(g, self.opts.temperature, s, self.opts.limit) for g, s in zip(gains, state.band_scale)
        ]
        # salience: |detail| of every band, weighted by that band's DIG weights, summed at full resolution
        # (the image's band l takes the DIG maps' band max(l - 1, 0): at dig_scale 0.5 DIG band k is image band k + 1)
        salience: torch.Tensor | int = 0
        for lvl, size in enumerate(self.band_sizes):
            wk = w_small[min(max(lvl - 1, 0), self.small_bands - 1)]
            gain = pyr_up(wk.reshape(n * b, 1, *wk.shape[-2:]), size)
            salience = salience + pyr_up(gain * self.src_bands[lvl].abs().reshape(n * b, 1, *size), (h, w))
        assert isinstance(salience, torch.Tensor)  # at least one band
        salience = gaussian_blur(salience, self.opts.smooth).reshape(self.src.shape)
        # every pixel's detail from the most salient source, blended across scales through the Gaussian
        # pyramid of the choice (Burt & Adelson), so that transitions are as wide as each band's structures
        # (ties, e.g. where no source has detail, are shared equally)
        choice = (salience == salience.amax(0, keepdim=True)).to(self.src.dtype)
        choice = choice / choice.sum(0, keepdim=True)
        m = choice.reshape(n * b, 1, h, w)
        bands = []
        for lvl, size in enumerate(self.band_sizes):
            bands.append((m.reshape(n, b, 1, *size) * self.src_bands[lvl]).sum(0))
            m = pyr_down(m)
        state.detail = collapse(bands, torch.zeros_like(self.src_top[0]))
        if self.base == "select":
            wb = pyr_up(w_small[-1].reshape(n * b, 1, *self.small), (h, w)).reshape(self.src.shape)
            state.base_weights = wb / wb.sum(0, keepdim=True)
        state.weights = choice  # what the records and figures show: the source each pixel's detail comes from
        return self._total(gains)

    def advance(self, step, state: DIGState) -> int:
        """Grid points the sampler moves on from this step (the :func:`~dig2dig.sampler.ddim` hook)."""
        if self.opts.accelerate <= 0 or state is None:
            return 1
        # merged steps never jump over the next refresh nor past the end of the grid
        return max(1, min(state.stride, state.next_refresh - step.index))

    def gain_curve(self, chunk: int = 4) -> dict[str, Any]:
        """d_i at every grid timestep (record mode, after sampling): the data of the cumulative-DIG figure.

        DIG depends on the sources, the prior and the shared ε only -- not on the fused trajectory --
        so the curves are computed apart from the sampling state (which they cannot change), a few
        levels per batched forward.  Returns ``{"t": [...], "dist": (K, N, B, h, w)}``.
        """
        scratch = DIGState(tau=torch.empty(0), weights=torch.empty(0))
        maps = []
        for lo in range(0, len(self.grid), chunk):
            ts = self.grid[lo : lo + chunk]
            # a level is a list of band maps exactly with the pyramid blend
            maps += [(self._total(d) if isinstance(d, list) else d).cpu() for d in self._levels(scratch, ts)]
            scratch.levels.clear()
        return {"t": list(self.grid), "dist": torch.stack(maps)[:, :, :, 0]}

    def item_records(self, state: DIGState, b: int, crop) -> dict:
        """Batch item ``b``'s refresh history: weights (N, H, W) per refresh, DIG means and maps."""
        refreshes = []
        for rec in state.history:
            r = {k: rec[k] for k in ("step", "t", "t_from")}
            if "weights" in rec:
                r["weights"] = crop(rec["weights"][:, b, 0].float()).cpu().numpy()
                r["dig_mean"] = rec["dig_mean"][b].tolist()
                r.update(t_to=rec["t_to"], gain=float(rec["gain"][b]), stride=rec["stride"])
            if "dig" in rec:
                r["dig"] = rec["dig"][:, b, 0].float().cpu().numpy()  # at the DIG resolution, uncropped
            refreshes.append(r)
        out = {
            "method": "dig2dig",
            "refreshes": refreshes,
            "dig_size": list(self.small),
            "refresh_forwards": self.refresh_forwards,
            "sources": int(self.src.shape[0]),
        }
        if self.record and self.opts.distance != "none":
            if self._curve is None:
                self._curve = self.gain_curve()
            out["curve"] = {"t": self._curve["t"], "dist": self._curve["dist"][:, :, b].float().numpy()}
        return out

    # --- the rectifier -----------------------------------------------------------------------
    def initial_state(self, x0_hat: torch.Tensor | None = None) -> DIGState:
        n, b, _, h, w = self.src.shape
        return DIGState(
            tau=torch.ones((n, b, 1, 1, 1), dtype=self.src.dtype, device=self.src.device),
            weights=torch.full((n, b, 1, h, w), 1.0 / n, dtype=self.src.dtype, device=self.src.device),
        )

    def fuse_luma(self, f: torch.Tensor, state: DIGState) -> tuple[torch.Tensor, DIGState]:
        r2 = (f.unsqueeze(0) - self.src) ** 2
        P = torch.sqrt(2.0 / state.tau / (r2 + 1e-6))
        state.tau = (1.0 / (P + 1e-10) + state.tau / 2).mean(dim=(2, 3, 4), keepdim=True)
        if self.pyramid:
            return self._fuse_pyramid(P, state), state
        a = state.weights / P if self.opts.mixing == "complementary" else state.weights * P
        return (a * self.src).sum(0) / a.sum(0), state

    def _fuse_pyramid(self, P: torch.Tensor, state: DIGState) -> torch.Tensor:
        """The pyramid M-step: the chosen detail bands (fixed between refreshes) on a coarsest level mixed by the
        released DDFM's precisions (``consensus``) or by the intensity DIG weights times the paper's (``select``)."""
        n, b, _, h, w = self.src.shape
        if self.base == "select":
            a = P if state.base_weights is None else P * state.base_weights
        else:
            a = 1.0 / P
        a = a / a.sum(0, keepdim=True)
        top = gaussian_pyramid_top(a.reshape(n * b, 1, h, w), self.n_levels).reshape(self.src_top.shape)
        base = (top * self.src_top).sum(0) / top.sum(0)
        if state.detail is None:  # equal detail weights until the first informative refresh
            state.detail = collapse([x.mean(0) for x in self.src_bands], torch.zeros_like(base))
        for size in reversed(self.band_sizes):  # the pyramid's expansion of the coarsest level to full size
            base = pyr_up(base, size)
        return state.detail + base

    def __call__(self, x0_hat: torch.Tensor, step, state: DIGState):
        if self.opts.weights == "dig" and step.index >= state.next_refresh:
            state = self.refresh(state, step)
        f, state = self.fuse_luma(luma(x0_hat), state)
        return with_luma(x0_hat, f), state
