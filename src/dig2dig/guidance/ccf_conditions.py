r"""CCF's condition bank: differentiable fusion losses of x̂0 against fixed sources.

Every condition is a small object built once from the sources (source-side targets -- wavelet
coefficients, edge maps, SSIM statistics, features -- are computed at construction) and called
on x̂0 (B, C, H, W) in [-1, 1]; it returns one loss per batch item, shape (B,), lower = better.
Items never mix, so a batch gives the same losses and gradients as its items one by one.

Sources are a list of N >= 1 tensors with x̂0's shape (role order: for VIF the infrared first,
the visible second).  Two-source rules generalise to N sources as noted per condition.

==========  ========  ========================================================================
name        group     loss (paper intent; ``release_compat=True`` differences in brackets)
==========  ========  ========================================================================
mse         basic     mean_i mean (x - s_i)²
lowfreq     basic     mean (LL(x) - mean_i LL(s_i))², one-level Haar DWT (LL = approximation)
highfreq    basic     mean (H(x) - maxabs_i H(s_i))², the three detail bands; per coefficient
                      the source coefficient of largest magnitude (ties: the later source)
edge        basic     mean (|∇x| - max_i |∇s_i|)², |∇| the Sobel gradient magnitude of the
                      luminance on a [0, 1] scale, replicate borders
                      [release: mean (E(x) - E(vis))², E the clipped 8-neighbour Laplacian below,
                      zero borders -- the visible image twice, the infrared never]
ssim        enhanced  1 - mean_i SSIM(s_i, x), Gaussian 11×11 window (σ 1.5), zero padding,
                      K = (0.01, 0.03) on [0, 1] data, per channel   [release: -mean_i SSIM]
sd          enhanced  -SD(x): per-channel standard deviation (unbiased), averaged over channels
sf          enhanced  -SF(x): sqrt(mean row-difference² + mean column-difference²), luminance
ei          enhanced  -mean |∇x| (Sobel magnitude of the luminance, [0, 1] scale)
                      [release: -mean sqrt(h² + v²) with h, v from the kernels
                      [[1,2,1],[0,0,0],[-1,-2,-1]] and [[-1,0,-1],[2,0,-2],[1,0,-1]] on a
                      0..255 scale, clipped to [0, 255], mapped back to [-1, 1] (a flat image
                      gives sqrt 2), zero borders -- and **detached**: it never has a gradient]
cc          optional  1 - mean_i corr(x, s_i) on the luminance
scd         optional  1 - SCD/N, SCD = Σ_i corr(x - mean_{j≠i} s_j, s_i) (Aslantas & Bendes;
                      for N = 2 the usual corr(x - s2, s1) + corr(x - s1, s2)), luminance
vif         optional  1 - mean_i VIF(s_i → x), pixel-domain VIF (Sheikh & Bovik, 4 scales,
                      σn² = 2 on a 0..255 scale), luminance; scales that do not fit are skipped
msssim      optional  1 - mean_i MS-SSIM(s_i, x), 5 scales (weights 0.0448 … 0.1333, renormalised
                      over the scales that fit), contrast terms clamped at 1e-6 before the powers
feature     task      mean_i mean ‖F(x) - F(s_i)‖² for a user torch callable F (a detector or
                      segmentation backbone ...); F may return a tensor or a list/tuple/dict of
                      tensors (each term averaged over its elements, then summed)
==========  ========  ========================================================================

The bank is a registry: :func:`register_condition` adds a condition of your own under a name
(``feature`` is registered the same way, needing the ``feature_extractor`` option), after which
``conditions="ssim,mse,<name>"`` selects it and the gate treats it like the others.

The optional conditions (cc, scd, vif, msssim) and ``feature`` are not used by the release's
sampler (its ``conditions.py`` defines CC/SCD/VIFF helpers it never calls), so they have one
definition in both modes.

Choices shared by both modes: losses that need a square root carry ε = 1e-12 inside it (SD, SF,
|∇|) so gradients stay finite on flat images, where the release's SF and SD give NaN gradients;
on real images the values move by < 1e-9 relative.  SSIM filters separably (2 × 11 taps instead
of the release's 11×11 window): losses agree with the release to < 1e-6 relative, gradients to
< 5e-8.  The Haar DWT is the release's pytorch_wavelets ``DWTForward(J=1, wave='haar',
mode='zero')``, rebuilt from the same strided 2-tap convolutions so that it is bit-identical --
which matters, because near-ties |s_1| ≈ |s_2| in the high-frequency max-abs selection otherwise
flip (a block-sum formulation changed the high-frequency loss by 2e-5 relative on the fixtures).
Luminance is BT.601 (0.299, 0.587, 0.114), the release's ``rgb2gray``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..functional import (
    SQRT_EPS,
    gaussian_filter,
    gaussian_taps,
    luma,
    separable_filter,
    sobel_magnitude,
    ssim_terms,
    to_unit,
)
from ..options import CCF_CONDITIONS, check_condition_names

_INV_SQRT2 = float(torch.tensor(1.0 / math.sqrt(2.0), dtype=torch.float32))  # pytorch_wavelets' haar taps


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------


def _item_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(1)


def haar_dwt(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One-level Haar DWT: (LL (B, C, ⌈H/2⌉, ⌈W/2⌉), details (B, C, 3, ⌈H/2⌉, ⌈W/2⌉)).

    pytorch_wavelets' ``DWTForward(J=1, wave='haar', mode='zero')`` as the release calls it: two
    strided 2-tap convolutions, along the width and then along the height, with taps
    (1/√2, 1/√2) and (1/√2, -1/√2); detail bands ordered (width-low/height-high,
    width-high/height-low, high/high); an odd size gets one zero row/column at the end.  Written
    as the same convolutions (not as sums of the 2×2 blocks) so that near-ties in the
    high-frequency max-abs selection break as in the release.
    """
    if x.shape[-2] % 2 or x.shape[-1] % 2:
        x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
    b, c, h, w = x.shape
    taps = torch.tensor([[_INV_SQRT2, _INV_SQRT2], [_INV_SQRT2, -_INV_SQRT2]], dtype=x.dtype, device=x.device)
    along_w = F.conv2d(x, taps.view(2, 1, 1, 2).repeat(c, 1, 1, 1), stride=(1, 2), groups=c)
    y = F.conv2d(along_w, taps.view(2, 1, 2, 1).repeat(2 * c, 1, 1, 1), stride=(2, 1), groups=2 * c)
    y = y.view(b, c, 4, h // 2, w // 2)
    return y[:, :, 0], y[:, :, 1:]


SSIM_C1, SSIM_C2 = 0.01**2, 0.03**2


class _SSIMStats:
    """Local means and second moments of fixed references, so each SSIM call filters only x."""

    def __init__(self, refs: Sequence[torch.Tensor], window: torch.Tensor):
        self.g = window
        self.refs = list(refs)
        self.mu = [gaussian_filter(r, window) for r in self.refs]
        self.var = [gaussian_filter(r * r, window) - m * m for r, m in zip(self.refs, self.mu)]

    def ssim_and_cs(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per reference: (SSIM map, contrast-structure map) against x ([0, 1] data)."""
        c = x.shape[1]
        stacked = torch.cat([x, x * x, *[x * r for r in self.refs]], dim=1)
        f = gaussian_filter(stacked, self.g)
        mu_x, var_x = f[:, :c], f[:, c : 2 * c] - f[:, :c] ** 2
        out = []
        for i, (mu_r, var_r) in enumerate(zip(self.mu, self.var)):
            cov = f[:, (2 + i) * c : (3 + i) * c] - mu_r * mu_x
            out.append(ssim_terms(mu_r, mu_x, var_r, var_x, cov, SSIM_C1, SSIM_C2))
        return out


def _kernel(rows, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=like.dtype, device=like.device).view(1, 1, 3, 3)


def release_edge_map(x: torch.Tensor) -> torch.Tensor:
    """The release's ``Sobel.sobel``: an 8-neighbour Laplacian on 0..255, clipped, back to [-1, 1]."""
    y = (luma(x) + 1) * 127.5
    e = F.conv2d(y, _kernel([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], y), padding=1)
    return torch.clip(e, 0, 255) / 127.5 - 1


def release_edge_intensity(x: torch.Tensor) -> torch.Tensor:
    """The release's EI value (B,), computed without a gradient as the release does."""
    with torch.no_grad():
        y = (luma(x) + 1) * 127.5
        h = torch.clip(F.conv2d(y, _kernel([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], y), padding=1), 0, 255) / 127.5 - 1
        v = torch.clip(F.conv2d(y, _kernel([[-1, 0, -1], [2, 0, -2], [1, 0, -1]], y), padding=1), 0, 255) / 127.5 - 1
        return _item_mean(torch.sqrt(h**2 + v**2))


def _corr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / torch.sqrt((a * a).sum(1) * (b * b).sum(1) + SQRT_EPS)


# --------------------------------------------------------------------------------------------
# the conditions
# --------------------------------------------------------------------------------------------


class Condition:
    """A differentiable loss of x̂0 against fixed sources: ``cond(x) -> (B,)`` (lower is better).

    Built by the registry as ``cls(sources, release_compat=..., feature_extractor=...)``; conditions
    that do not use the extractor ignore it.
    """

    name = ""
    group = ""

    def __init__(self, sources: Sequence[torch.Tensor], *, release_compat: bool = False, feature_extractor=None):
        if not sources:
            raise ValueError(f"condition {self.name!r} needs at least one source")
        self.sources = [s.detach() for s in sources]
        self.release_compat = bool(release_compat)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sources={len(self.sources)}, release_compat={self.release_compat})"


class MSE(Condition):
    name, group = "mse", "basic"

    def __call__(self, x):
        return sum(_item_mean((x - s) ** 2) for s in self.sources) / len(self.sources)


class LowFrequency(Condition):
    name, group = "lowfreq", "basic"

    def __init__(self, sources, **kw):
        super().__init__(sources, **kw)
        lows = [haar_dwt(s)[0] for s in self.sources]
        self.target = sum(lows) / len(lows)  # for two sources bit-equal to the release's 0.5 a + 0.5 b

    def __call__(self, x):
        return _item_mean((haar_dwt(x)[0] - self.target) ** 2)


class HighFrequency(Condition):
    name, group = "highfreq", "basic"

    def __init__(self, sources, **kw):
        super().__init__(sources, **kw)
        highs = [haar_dwt(s)[1] for s in self.sources]
        target = highs[0]
        for h in highs[1:]:  # per coefficient the larger magnitude; ties go to the later source
            target = torch.where(target.abs() > h.abs(), target, h)
        self.target = target

    def __call__(self, x):
        return _item_mean((haar_dwt(x)[1] - self.target) ** 2)


class Edge(Condition):
    name, group = "edge", "basic"

    def __init__(self, sources, **kw):
        super().__init__(sources, **kw)
        if self.release_compat:  # the release compares against the visible image (its second, last) twice
            self.target = release_edge_map(self.sources[-1])
        else:
            self.target = torch.stack([sobel_magnitude(s) for s in self.sources]).amax(0)

    def __call__(self, x):
        e = release_edge_map(x) if self.release_compat else sobel_magnitude(x)
        return _item_mean((e - self.target) ** 2)


class SSIM(Condition):
    name, group = "ssim", "enhanced"

    def __init__(self, sources, **kw):
        super().__init__(sources, **kw)
        self.stats = _SSIMStats(
            [to_unit(s) for s in self.sources], gaussian_taps(1.5, 11, self.sources[0].dtype, self.sources[0].device)
        )

    def __call__(self, x):
        mean_ssim = sum(_item_mean(m) for m, _ in self.stats.ssim_and_cs(to_unit(x))) / len(self.sources)
        return -mean_ssim if self.release_compat else 1 - mean_ssim


class StandardDeviation(Condition):
    name, group = "sd", "enhanced"

    def __call__(self, x):
        flat = x.flatten(2)
        var = flat.var(dim=2, unbiased=True)  # (B, C)
        return -torch.sqrt(var + SQRT_EPS).mean(1)


class SpatialFrequency(Condition):
    name, group = "sf", "enhanced"

    def __call__(self, x):
        y = luma(x)
        rf = _item_mean((y[..., 1:, :] - y[..., :-1, :]) ** 2)
        cf = _item_mean((y[..., :, 1:] - y[..., :, :-1]) ** 2)
        return -torch.sqrt(rf + cf + SQRT_EPS)


class EdgeIntensity(Condition):
    name, group = "ei", "enhanced"

    def __call__(self, x):
        if self.release_compat:
            return -release_edge_intensity(x)
        return -_item_mean(sobel_magnitude(x))


class CorrelationCoefficient(Condition):
    name, group = "cc", "optional"

    def __init__(self, sources, **kw):
        super().__init__(sources, **kw)
        self.grays = [luma(s) for s in self.sources]

    def __call__(self, x):
        y = luma(x)
        return 1 - sum(_corr(y, s) for s in self.grays) / len(self.grays)


class SCD(Condition):
    name, group = "scd", "optional"

    def __init__(self, sources, **kw):
        super().__init__(sources, **kw)
        if len(self.sources) < 2:
            raise ValueError("scd needs at least two sources")
        self.grays = [luma(s) for s in self.sources]
        n = len(self.grays)
        self.others = [sum(g for j, g in enumerate(self.grays) if j != i) / (n - 1) for i in range(n)]

    def __call__(self, x):
        y = luma(x)
        scd = sum(_corr(y - o, s) for s, o in zip(self.grays, self.others))
        return 1 - scd / len(self.grays)


def _vif_taps(n: int, dtype, device) -> torch.Tensor:
    """1-D taps of vifp's n×n Gaussian (σ = n/5); the 2-D window is their outer product (for
    n ≤ 17 no tap falls under MATLAB's eps·max cut, so the window is exactly separable)."""
    r = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
    g = torch.exp(-(r**2) / (2 * (n / 5.0) ** 2))
    return (g / g.sum()).to(dtype=dtype, device=device)


VIF_WINDOWS = (17, 9, 5, 3)  # vifp_mscale: N = 2^(4 - scale + 1) + 1 for scales 1..4
VIF_SIGMA_NSQ, VIF_EPS = 2.0, 1e-10


class VIF(Condition):
    """1 - mean_i VIF(s_i → x): Sheikh & Bovik's pixel-domain ``vifp_mscale`` on the luminance.

    At scale k > 1 the image is filtered with scale k's window and subsampled by 2, and local
    statistics use 'valid' windows; scales whose window no longer fits are skipped.  The sources'
    pyramids, local means and variances, and the denominators are computed once; each call
    filters x's pyramid, x² and the N products s_i·x.  The vifp masks (flat windows, negative
    gains) are written with ``torch.where``, so the loss is differentiable.
    """

    name, group = "vif", "optional"

    def __init__(self, sources, **kw):
        super().__init__(sources, **kw)
        like = self.sources[0]
        h, w = like.shape[-2:]
        self.taps = []
        for k, n in enumerate(VIF_WINDOWS):
            if k > 0:
                if min(h, w) < n + 1:
                    break
                h, w = (h - n + 2) // 2, (w - n + 2) // 2  # 'valid' filter, then every second pixel
            if min(h, w) < n:
                break
            self.taps.append(_vif_taps(n, like.dtype, like.device))
        if not self.taps:
            raise ValueError(f"image too small for VIF: {tuple(like.shape[-2:])}")
        self.refs = [self._pyramid((luma(s) + 1) * 127.5) for s in self.sources]  # [source][scale]
        self.mu, self.var, self.den = [], [], []
        for levels in self.refs:
            mus, vars_ = [], []
            den: torch.Tensor | float = 0.0
            for img, g in zip(levels, self.taps):
                f = separable_filter(torch.cat([img, img * img], dim=1), g)
                mu, var = f[:, :1], (f[:, 1:] - f[:, :1] ** 2).clamp_min(0)
                var = torch.where(var < VIF_EPS, torch.zeros_like(var), var)
                mus.append(mu)
                vars_.append(var)
                den = den + torch.log10(1 + var / VIF_SIGMA_NSQ).flatten(1).sum(1)
            self.mu.append(mus)
            self.var.append(vars_)
            assert isinstance(den, torch.Tensor)  # at least one scale (checked above)
            self.den.append(den.clamp_min(VIF_EPS))

    def _pyramid(self, img: torch.Tensor) -> list[torch.Tensor]:
        levels = [img]
        for g in self.taps[1:]:
            levels.append(separable_filter(levels[-1], g)[..., ::2, ::2])
        return levels

    def __call__(self, x):
        ys = self._pyramid((luma(x) + 1) * 127.5)
        n_src = len(self.refs)
        num: list[torch.Tensor | float] = [0.0] * n_src
        for k, (y, g) in enumerate(zip(ys, self.taps)):
            f = separable_filter(torch.cat([y, y * y] + [levels[k] * y for levels in self.refs], dim=1), g)
            mu2 = f[:, :1]
            s2 = (f[:, 1:2] - mu2 * mu2).clamp_min(0)
            flat2 = s2 < VIF_EPS
            for i in range(n_src):
                s1, s12 = self.var[i][k], f[:, 2 + i : 3 + i] - self.mu[i][k] * mu2
                flat1 = s1 == 0
                gain = s12 / (s1 + VIF_EPS)
                sv = torch.where(flat1, s2, s2 - gain * s12)
                sv = torch.where(flat2, torch.zeros_like(sv), sv)
                gain = torch.where(flat1 | flat2, torch.zeros_like(gain), gain)
                sv = torch.where(gain < 0, s2, sv).clamp_min(VIF_EPS)
                gain = gain.clamp_min(0)
                num[i] = num[i] + torch.log10(1 + gain * gain * s1 / (sv + VIF_SIGMA_NSQ)).flatten(1).sum(1)
        return 1 - sum(nm / d for nm, d in zip(num, self.den)) / n_src


MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


class MSSSIM(Condition):
    name, group = "msssim", "optional"

    def __init__(self, sources, **kw):
        super().__init__(sources, **kw)
        h, w = self.sources[0].shape[-2:]
        self.levels = max(1, min(len(MSSSIM_WEIGHTS), int(math.floor(math.log2(min(h, w) / 11))) + 1))
        wts = torch.tensor(MSSSIM_WEIGHTS[: self.levels], dtype=torch.float64)
        self.weights = (wts / wts.sum()).tolist()
        g = gaussian_taps(1.5, 11, self.sources[0].dtype, self.sources[0].device)
        refs = [to_unit(s) for s in self.sources]
        self.stats = []
        for lvl in range(self.levels):
            self.stats.append(_SSIMStats(refs, g))
            if lvl + 1 < self.levels:
                refs = [F.avg_pool2d(r, 2) for r in refs]

    def __call__(self, x):
        x = to_unit(x)
        per_ref = [1.0] * len(self.sources)
        for lvl, (stats, wt) in enumerate(zip(self.stats, self.weights)):
            last = lvl + 1 == self.levels
            for i, (ssim_map, cs_map) in enumerate(stats.ssim_and_cs(x)):
                v = _item_mean(ssim_map if last else cs_map).clamp_min(1e-6)
                per_ref[i] = per_ref[i] * v**wt
            if not last:
                x = F.avg_pool2d(x, 2)
        return 1 - sum(per_ref) / len(per_ref)


def _as_tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, torch.Tensor)]
    if isinstance(out, (list, tuple)):
        return [v for v in out if isinstance(v, torch.Tensor)]
    raise TypeError(f"a feature extractor must return a tensor, or a list/tuple/dict of tensors, got {type(out)}")


class FeatureMatch(Condition):
    """‖F(x) - F(s_i)‖² for a user torch callable F; source features are computed once."""

    name, group = "feature", "task"

    def __init__(self, sources, *, feature_extractor: Callable | None = None, **kw):
        super().__init__(sources, feature_extractor=feature_extractor, **kw)
        if feature_extractor is None or not callable(feature_extractor):
            raise ValueError("the 'feature' condition needs a callable feature_extractor")
        self.extractor = feature_extractor
        try:
            with torch.no_grad():
                self.targets = [[t.detach() for t in _as_tensors(feature_extractor(s))] for s in self.sources]
        except Exception as e:  # noqa: BLE001 -- the user's extractor: say what it did, as an input error
            raise ValueError(
                f"the feature extractor {getattr(feature_extractor, '__name__', type(feature_extractor).__name__)}"
                f" failed on a source ({type(e).__name__}: {' '.join(str(e).split())[:160]}); it must map a "
                f"(B, C, H, W) tensor to a tensor or a list/dict of tensors"
            ) from None
        if not any(t.numel() for target in self.targets for t in target):
            raise ValueError("the feature extractor returned no tensors for the sources")

    def __call__(self, x):
        feats = _as_tensors(self.extractor(x))
        total: torch.Tensor | float = 0.0
        for target in self.targets:
            if len(target) != len(feats):
                raise ValueError("the feature extractor returned a different number of maps for x̂0 and a source")
            total = total + sum(_item_mean((f - t) ** 2) for f, t in zip(feats, target))
        return total / len(self.targets)


@dataclass(frozen=True)
class ConditionEntry:
    """A registered condition: ``factory(sources, *, release_compat, feature_extractor) -> condition``."""

    name: str
    factory: Callable[..., Callable[[torch.Tensor], torch.Tensor]]
    group: str
    needs_extractor: bool = False


CONDITIONS: dict[str, ConditionEntry] = {}


def register_condition(
    name: str,
    factory: Callable[..., Callable[[torch.Tensor], torch.Tensor]],
    *,
    group: str = "user",
    needs_extractor: bool = False,
    replace: bool = False,
) -> ConditionEntry:
    """Add a condition to CCF's bank under ``name``.

    ``factory(sources, *, release_compat, feature_extractor)`` gets the N source tensors (B, C, H, W)
    in [-1, 1] and returns ``cond(x) -> (B,)``: one loss per batch item, lower is better,
    differentiable in x, items never mixed (a :class:`Condition` subclass is such a factory).
    ``needs_extractor`` makes the ``feature_extractor`` option required.  Names are lower case; an
    existing name is refused unless ``replace=True``.
    """
    key = str(name).strip().lower()
    if not key or "," in key:
        raise ValueError(f"a condition name must be non-empty and contain no comma, got {name!r}")
    if key in CONDITIONS and not replace:
        raise ValueError(f"a CCF condition named {key!r} is already registered; pass replace=True to replace it")
    if not callable(factory):
        raise ValueError(f"the factory for condition {key!r} must be callable, got {factory!r}")
    CONDITIONS[key] = entry = ConditionEntry(key, factory, group, needs_extractor)
    CCF_CONDITIONS[key] = needs_extractor  # the name, where the ccf options are checked
    return entry


def unregister_condition(name: str) -> None:
    """Remove a condition added with :func:`register_condition` (its name too)."""
    key = str(name).strip().lower()
    CONDITIONS.pop(key, None)
    CCF_CONDITIONS.pop(key, None)


for _cls in (
    MSE,
    LowFrequency,
    HighFrequency,
    Edge,
    SSIM,
    StandardDeviation,
    SpatialFrequency,
    EdgeIntensity,
    CorrelationCoefficient,
    SCD,
    VIF,
    MSSSIM,
):
    register_condition(_cls.name, _cls, group=_cls.group)
register_condition(FeatureMatch.name, FeatureMatch, group=FeatureMatch.group, needs_extractor=True)
assert list(CONDITIONS) == list(CCF_CONDITIONS)[: len(CONDITIONS)], "the options' built-in names and the bank agree"


def make_condition(
    name: str,
    sources: Sequence[torch.Tensor],
    *,
    release_compat: bool = False,
    feature_extractor: Callable | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Build the registered condition ``name`` for these sources (see :data:`CONDITIONS`)."""
    check_condition_names([name], feature_extractor)
    return CONDITIONS[name].factory(sources, release_compat=release_compat, feature_extractor=feature_extractor)


def condition_gradients(conditions: Sequence[Condition], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses (B, n) and per-condition gradients (n, B, C, H, W) of ``conditions`` at ``x``.

    Conditions without a gradient (the release's EI) get zeros.  For tests and inspection; the
    rectifier streams the same gradients without stacking them.
    """
    with torch.enable_grad():
        z = x.detach().clone().requires_grad_(True)
        losses = [c(z) for c in conditions]
        grads = torch.stack(list(iter_gradients(losses, z)))
    return torch.stack([v.detach() for v in losses], dim=1), grads


def iter_gradients(losses: Sequence[torch.Tensor], z: torch.Tensor):
    """Yield ∂(Σ_b loss[b])/∂z for each per-item loss (B,) in ``losses`` -- per item, as items never mix.

    Each loss is differentiated on its own (never through a stacked tensor, whose backward would
    walk every condition's graph), keeping the shared graph until the last differentiable one.
    """
    live = [i for i, v in enumerate(losses) if v.requires_grad]
    for i, v in enumerate(losses):
        if i not in live:
            yield torch.zeros_like(z)
            continue
        (g,) = torch.autograd.grad(v.sum(), z, retain_graph=i != live[-1], allow_unused=True)
        yield torch.zeros_like(z) if g is None else g
