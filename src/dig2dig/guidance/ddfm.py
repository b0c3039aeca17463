r"""DDFM: the EM rectification of Zhao et al., "DDFM: Denoising Diffusion Model for Multi-Modality
Image Fusion", ICCV 2023 (arXiv 2303.06840).

The model
---------
Two registered sources fill two *slots*, ``I`` and ``V``.  With ``y = I - V`` and the unknown
``x = f - V`` (f the fused image), DDFM asks for

    x̂ = argmin_x  ||y - x||_1 + φ ||∇x||_1 ,

i.e. f close to I in intensity and f - V smooth.  Both ℓ1 terms are written as Gaussian scale
mixtures, which turns the problem into a hierarchical Bayesian model solved by EM.  At every
reverse diffusion step the prior's x̂0 (its luminance ``f_pre``) is the current guess; **one** EM
iteration moves it toward the sources and the rectified luminance replaces x̂0's luminance.  The
EM state (C, D, F1, F2, H, τa, τb) is carried from step to step; it is initialised at the first
step as C = D = 1, F1 = F2 = H = 0, τa = τb = 1.

One EM iteration (X = f_pre - V, Y = I - V; products and quotients per pixel)::

    E-step   D  = sqrt(2 / (τb (X² + 1e-6)))            precision of the "f near V" term
             C  = sqrt(2 / (τa (Y - X + 1e-6)²))        precision of the "f near I" term
             D  = min(D, 2C)
             τb = mean(1 / (D + 1e-10) + τb / 2)        (mean over the image)
             τa = mean(1 / (C + 1e-10) + τa / 2)
    M-step   H  = argmin_H ||H - (Y - X)||² + ||k1 * H - F1||² + ||k2 * H - F2||²   (FFT solve)
             F1 = ρ / (2λ + ρ) · Δ1 H,  F2 = ρ / (2λ + ρ) · Δ2 H      (λ = 0.5, ρ = 0.001)
             X  = (2C·Y + ρ (Y - H)) / (2C + 2D + ρ)

k1 = [1, -1] and k2 = [1, -1]ᵀ are circular first differences applied through their optical
transfer functions (the FFT solve divides by 1 + |K1|² + |K2|²); Δ1 H = H[:, j] - H[:, j+1] with
the last column kept as H itself (Δ2 likewise on rows), exactly as released.  Since C and D are
≥ ~1/|residual| and ρ = 1e-3, the x-update is dominated by ``X ≈ C·Y / (C + D)``: an iteratively
reweighted ℓ1 fit that leans toward whichever source the current estimate already resembles.

Output mappings -- where the release and the paper differ
---------------------------------------------------------
``mapping="paper"`` follows the paper's Algorithm 1: **f = x + v**, i.e. F = X + V, and
the slots follow the paper's roles: I = the *intensity* source i (infrared for VIF), V = the
*texture* source v (visible).  Luminance is BT.601 full range on [-1, 1] (:mod:`dig2dig.color`),
and the new luminance is written back by adding ΔY to every RGB channel, which keeps Cb and Cr.

``mapping="release"`` (dig2dig's default for ``method="ddfm"``) reproduces MMIF-DDFM @589f5cb
(``sample.py``, ``EM_onestep``) number for number.  It is the default because it is what the
published DDFM numbers come from, and because on real pairs it behaves like a fusion (visible
texture with the thermal targets, MRI detail with CT bone), whereas the paper mapping's
self-reinforcing weights (plus the cap D ≤ 2C, which favours slot I) converge piecewise to one
source and leave patchy seams.  Differences from the paper, each kept only in this mode:

1. **Output**: F = I - X instead of f = X + V.  Because X ≈ w·(I - V) with w = C / (C + D),
   the paper gives f = (1-w)V + wI while the release gives f = wV + (1-w)I: the weights are
   swapped, so the release pulls toward the source the estimate is *farther* from.
2. **Slots**: ``sample.py`` reads the *visible* image into the argument named for the infrared
   one, so I = visible and V = infrared -- the reverse of the paper's i/v roles.  Our release
   mode therefore puts the texture source in slot I and the intensity source in slot V.
3. **Colour**: x̂0 (RGB in [-1, 1]) is converted with skimage's studio-swing ``rgb2ycbcr``
   (meant for [0, 1] input) and divided by 255, so f_pre = (16 + 65.481R + 128.553G + 24.966B)/255
   ∈ [-0.796, 0.922] -- a different scale from the sources' [-1, 1].  The rectified Y goes back
   through ``ycbcr2rgb`` (float64) with x̂0's own Cb/Cr and is **not clipped**, so x̂0' can leave
   [-1, 1] (the fixture reaches [-2.7, 2.3]).  With a one-channel prior there is no colour
   conversion and both mappings use the luminance directly.
4. **τ means**: the release averages τa, τb over the whole batch tensor; we average per image so
   that a batch gives the same results as its items one by one (identical for batch size 1).
5. **Final image**: the release min–max normalises the final Y before saving; dig2dig clips the
   final luminance to [-1, 1] and maps it linearly to [0, 1] (min–max would change contrast per
   image).  This is done by the pipeline, not here.
6. **Size**: the release crops each source to a multiple of 32 (a 70×100 pair is fused at
   64×96 and the rest is lost); dig2dig reflect-pads to the prior's multiple and crops back, so
   every input pixel is fused and the output has the input's size.  The fixtures are compared at
   the release's cropped size.

What is shared: the EM iteration above (one per diffusion step), λ = 0.5, ρ = 0.001, the E-step
regularisers (1e-6, 1e-10), the cap D ≤ 2C and the FFT solve.  (``EM_onestep``'s default
argument is ρ = 0.01, but ``sample.py`` passes 0.001: what was run, and what we use.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..functional import luma, with_luma
from ..options import DDFMOptions
from ..sampler import Rectifier

# skimage.color's BT.601 studio-swing matrix (rgb2ycbcr) and its inverse, float64
_YCBCR_FROM_RGB = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]])
_RGB_FROM_YCBCR = np.linalg.inv(_YCBCR_FROM_RGB)
_YCBCR_OFFSET = np.array([16.0, 128.0, 128.0])


@dataclass(frozen=True)
class EMState:
    """DDFM's EM state, one entry per batch item (tensors (B, 1, H, W); τ's (B, 1, 1, 1))."""

    C: torch.Tensor
    D: torch.Tensor
    F1: torch.Tensor
    F2: torch.Tensor
    H: torch.Tensor
    tau_a: torch.Tensor
    tau_b: torch.Tensor


def em_initial(like: torch.Tensor) -> EMState:
    ones, zeros = torch.ones_like(like), torch.zeros_like(like)
    tau = torch.ones((like.shape[0], 1, 1, 1), dtype=like.dtype, device=like.device)
    return EMState(C=ones, D=ones.clone(), F1=zeros, F2=zeros.clone(), H=zeros.clone(), tau_a=tau, tau_b=tau.clone())


class DifferenceOTF:
    """Transfer functions of the circular differences k1 = [1, -1], k2 = [1, -1]ᵀ on an H×W grid."""

    def __init__(self, height: int, width: int, device: torch.device):
        # psf2otf places k = [1, -1] so that k[0, 0] = -1 and k[0, W-1] = 1: a forward difference,
        # K1(u, v) = exp(2πi v / W) - 1 (and K2 likewise along rows).
        v = torch.arange(width, dtype=torch.float64)
        u = torch.arange(height, dtype=torch.float64)
        k1 = torch.polar(torch.ones(width, dtype=torch.float64), 2 * math.pi * v / width) - 1
        k2 = torch.polar(torch.ones(height, dtype=torch.float64), 2 * math.pi * u / height) - 1
        self.k1 = k1.to(torch.complex64)[None, :].expand(height, width).to(device)
        self.k2 = k2.to(torch.complex64)[:, None].expand(height, width).to(device)
        self.denom = (1 + (self.k1.conj() * self.k1) + (self.k2.conj() * self.k2)).to(device)

    def prox(self, target: torch.Tensor, F1: torch.Tensor, F2: torch.Tensor) -> torch.Tensor:
        """argmin_H ||H - target||² + ||k1*H - F1||² + ||k2*H - F2||², solved in the Fourier domain."""
        num = torch.fft.fft2(target) + self.k1.conj() * torch.fft.fft2(F1) + self.k2.conj() * torch.fft.fft2(F2)
        return torch.fft.ifft2(num / self.denom).real


def _diff_keep_last(h: torch.Tensor, dim: int) -> torch.Tensor:
    out = torch.empty_like(h)
    n = h.shape[dim]
    out.narrow(dim, 0, n - 1).copy_(h.narrow(dim, 0, n - 1) - h.narrow(dim, 1, n - 1))
    out.narrow(dim, n - 1, 1).copy_(h.narrow(dim, n - 1, 1))
    return out


def em_step(
    f_pre: torch.Tensor,
    I: torch.Tensor,
    V: torch.Tensor,
    state: EMState,
    otf: DifferenceOTF,
    lamb: float = 0.5,
    rho: float = 0.001,
) -> tuple[torch.Tensor, EMState]:
    """One EM iteration; returns the M-step's X (= f - V) and the new state."""
    Y = I - V
    X = f_pre - V
    # E-step
    D = torch.sqrt(2 / state.tau_b / (X**2 + 1e-6))
    C = torch.sqrt(2 / state.tau_a / ((Y - X + 1e-6) ** 2))
    D = torch.minimum(D, 2 * C)
    tau_b = (1.0 / (D + 1e-10) + state.tau_b / 2).mean(dim=(1, 2, 3), keepdim=True)
    tau_a = (1.0 / (C + 1e-10) + state.tau_a / 2).mean(dim=(1, 2, 3), keepdim=True)
    # M-step
    H = otf.prox(Y - X, state.F1, state.F2)
    shrink = rho / (2 * lamb + rho)
    F1 = shrink * _diff_keep_last(H, 3)
    F2 = shrink * _diff_keep_last(H, 2)
    X = (2 * C * Y + rho * (Y - H)) / (2 * C + 2 * D + rho)
    return X, EMState(C=C, D=D, F1=F1, F2=F2, H=H, tau_a=tau_a, tau_b=tau_b)


# --- the release's colour round trip (3-channel priors only) ------------------------------------


def release_rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """skimage ``rgb2ycbcr`` on an NCHW float32 batch, divided by 255 (as DDFM does)."""
    m = torch.from_numpy(_YCBCR_FROM_RGB.astype(np.float32)).to(x.device)
    off = torch.from_numpy(_YCBCR_OFFSET.astype(np.float32)).to(x.device)
    ycc = torch.einsum("ij,bjhw->bihw", m, x) + off[None, :, None, None]
    return ycc / 255


def release_ycbcr_to_rgb(ycc: torch.Tensor) -> torch.Tensor:
    """skimage ``ycbcr2rgb(255 * ycc)`` computed in float64, returned as float32."""
    a = ycc.double() * 255 - torch.from_numpy(_YCBCR_OFFSET).to(ycc.device)[None, :, None, None]
    rgb = torch.einsum("ij,bjhw->bihw", torch.from_numpy(_RGB_FROM_YCBCR).to(ycc.device), a)
    return rgb.float()


# --- the guidance -------------------------------------------------------------------------------


class DDFMGuidance(Rectifier):
    """The rectifier ``(x̂0, step, state) -> (x̂0', state)`` for :func:`dig2dig.sampler.ddim`.

    ``intensity`` and ``texture`` are (B, 1, H, W) luminance tensors in [-1, 1]: the paper's i
    (infrared, CT/PET/SPECT) and v (visible, MRI).  Keyword options
    (:class:`dig2dig.options.DDFMOptions`): ``mapping`` picks the paper's or the release's slot order
    and output (see the module docstring), ``lamb`` and ``rho`` weigh the TV term.
    """

    name = "ddfm"

    def __init__(self, intensity: torch.Tensor, texture: torch.Tensor, opts: DDFMOptions | None = None):
        self.opts = o = DDFMOptions.ensure(opts)
        if intensity.shape != texture.shape or intensity.ndim != 4 or intensity.shape[1] != 1:
            raise ValueError(
                f"sources must be two (B, 1, H, W) tensors of one shape, got "
                f"{tuple(intensity.shape)} and {tuple(texture.shape)}"
            )
        self.I, self.V = (intensity, texture) if o.mapping == "paper" else (texture, intensity)
        self.otf = DifferenceOTF(intensity.shape[-2], intensity.shape[-1], intensity.device)

    def initial_state(self, x0_hat: torch.Tensor | None = None) -> EMState:
        return em_initial(self.I)

    def fuse_luma(self, f_pre: torch.Tensor, state: EMState) -> tuple[torch.Tensor, EMState]:
        X, state = em_step(f_pre, self.I, self.V, state, self.otf, self.opts.lamb, self.opts.rho)
        return (X + self.V if self.opts.mapping == "paper" else self.I - X), state

    def __call__(self, x0_hat: torch.Tensor, step, state: EMState):
        if self.opts.mapping == "release" and x0_hat.shape[1] == 3:
            ycc = release_rgb_to_ycbcr(x0_hat)
            F, state = self.fuse_luma(ycc[:, :1], state)
            return release_ycbcr_to_rgb(torch.cat([F, ycc[:, 1:]], dim=1)), state
        F, state = self.fuse_luma(luma(x0_hat), state)
        return with_luma(x0_hat, F), state
