"""The image math every method shares, as pure functions on torch batches (B, C, H, W).

One home for: luminance (BT.601, constants in :mod:`dig2dig.color`), the public [0, 1] ↔ the
prior's [-1, 1], Gaussian taps and separable filtering, Gaussian and Laplacian pyramids, the local
SSIM map, Sobel gradients, x̂0 from ε, and seeded per-item noise.  Method files import these; none
of them keeps a private copy.

Float conventions, kept because the reference implementations' numbers depend on them:

* Gaussian taps are computed in float64 (``math.exp``), rounded to float32 and normalised in
  float32 (pytorch_ssim's ``gaussian``, which CCF's release uses).
* The DDIM/x̂0 coefficients sqrt(1/ᾱ) and sqrt(1/ᾱ - 1) are computed in float64 and rounded to
  float32 before use, as guided-diffusion does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .color import KB, KG, KR

# --- luminance and range -------------------------------------------------------------------------


def luma(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luminance of a (B, 3, H, W) batch; a one-channel batch is returned as is.

    The weights sum to one, so the formula holds on [-1, 1] as on [0, 1].
    """
    if x.shape[1] == 1:
        return x
    return KR * x[:, 0:1] + KG * x[:, 1:2] + KB * x[:, 2:3]


def with_luma(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Replace the luminance of ``x`` by ``y`` keeping its chroma (Cb, Cr ∝ B - Y, R - Y)."""
    if x.shape[1] == 1:
        return y
    return x + (y - luma(x))


def to_signed(x):
    """[0, 1] -> [-1, 1] (arrays or tensors): the prior's range."""
    return x * 2 - 1


def to_unit(x):
    """[-1, 1] -> [0, 1] (arrays or tensors): the public range."""
    return (x + 1) / 2


# --- filters -------------------------------------------------------------------------------------


def gaussian_taps(sigma: float, size: int | None = None, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps; ``size`` defaults to 2·ceil(3σ) + 1."""
    if size is None:
        size = 2 * max(1, int(math.ceil(3 * sigma))) + 1
    g = torch.tensor([math.exp(-((i - size // 2) ** 2) / (2 * sigma**2)) for i in range(size)], dtype=torch.float32)
    return (g / g.sum()).to(dtype=dtype, device=device)


def separable_filter(x: torch.Tensor, taps: torch.Tensor, padding: int = 0) -> torch.Tensor:
    """Filter every channel with taps ⊗ taps (zero ``padding`` on each side; 0 = 'valid').

    Depthwise and channels-last: oneDNN runs that layout several times faster on a CPU than
    NCHW depthwise or one-channel convolutions (forward and backward), with identical results.
    """
    c = x.shape[1]
    x = x.contiguous(memory_format=torch.channels_last)
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, padding), groups=c)
    x = F.conv2d(x, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(padding, 0), groups=c)
    return x.contiguous()


def gaussian_filter(x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """'Same'-size separable filtering with zero padding (pytorch_ssim's window)."""
    return separable_filter(x, taps, taps.numel() // 2)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """'Same'-size Gaussian blur with σ in pixels and reflected borders (replicated on tiny images)."""
    if sigma <= 0:
        return x
    size = 2 * max(1, int(math.ceil(3 * sigma))) + 1
    size = min(size, 2 * max(x.shape[-2:]) + 1)  # a kernel wider than the image adds nothing but cost
    taps = gaussian_taps(sigma, size, dtype=x.dtype, device=x.device)
    r = taps.numel() // 2
    x = F.pad(x, (r, r, r, r), mode="reflect" if min(x.shape[-2:]) > r else "replicate")
    return separable_filter(x, taps)


_BINOMIAL5 = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)  # Burt & Adelson's generating kernel


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """One level down a Gaussian pyramid: the 5-tap binomial blur (reflected borders), every second pixel.

    An H×W image becomes ceil(H/2)×ceil(W/2).
    """
    taps = torch.tensor(_BINOMIAL5, dtype=x.dtype, device=x.device)
    x = F.pad(x, (2, 2, 2, 2), mode="reflect" if min(x.shape[-2:]) > 2 else "replicate")
    return separable_filter(x, taps)[..., ::2, ::2]


def pyr_up(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """One level up: bilinear interpolation to ``size`` (the finer level's H, W)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def pyramid_levels(height: int, width: int, levels: int | None = None) -> int:
    """Detail levels of a Laplacian pyramid: ``levels`` if given, else as many as keep the coarsest
    level at least 8 pixels on its short side, at most 5 (the coarsest then holds structures of 32+ pixels)."""
    if levels is not None:
        return int(levels)
    return int(max(1, min(5, math.floor(math.log2(max(min(height, width), 16) / 8)))))


def laplacian_pyramid(x: torch.Tensor, levels: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(detail bands, finest first; the coarsest Gaussian level): ``collapse`` inverts it exactly."""
    bands = []
    for _ in range(levels):
        down = pyr_down(x)
        bands.append(x - pyr_up(down, x.shape[-2:]))
        x = down
    return bands, x


def gaussian_pyramid_top(x: torch.Tensor, levels: int) -> torch.Tensor:
    """The coarsest level of ``x``'s Gaussian pyramid (``levels`` steps down)."""
    for _ in range(levels):
        x = pyr_down(x)
    return x


def collapse(bands: Sequence[torch.Tensor], base: torch.Tensor) -> torch.Tensor:
    """The image of a Laplacian pyramid: up from ``base`` through ``bands`` (finest first)."""
    x = base
    for band in reversed(bands):
        x = band + pyr_up(x, band.shape[-2:])
    return x


def box_mean(x: torch.Tensor, win: int) -> torch.Tensor:
    """'Same'-size mean over win × win windows, replicated borders."""
    pad = win // 2
    return F.avg_pool2d(F.pad(x, (pad,) * 4, mode="replicate"), win, stride=1)


def ssim_terms(mu_a, mu_b, var_a, var_b, cov, c1: float, c2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(SSIM map, contrast-structure map) from local statistics."""
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    return (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1) * cs, cs


def local_ssim(a: torch.Tensor, b: torch.Tensor, win: int = 7, data_range: float = 2.0) -> torch.Tensor:
    """SSIM map over uniform win × win windows (replicated borders), same size as the input.

    ``data_range`` is 2 for [-1, 1] data (K = 0.01, 0.03 as in Wang et al.).
    """
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ma, mb = box_mean(a, win), box_mean(b, win)
    va, vb, cov = box_mean(a * a, win) - ma**2, box_mean(b * b, win) - mb**2, box_mean(a * b, win) - ma * mb
    return ssim_terms(ma, mb, va, vb, cov, c1, c2)[0]


SQRT_EPS = 1e-12  # inside square roots: finite gradients on flat images


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|∇| of the luminance of a [-1, 1] batch on a [0, 1] scale: Sobel with replicated borders,
    sqrt(gx² + gy² + ε).

    Written with shifted slices (smooth [1, 2, 1] one way, difference the other): on a CPU this
    is several times faster than a one-channel 3×3 convolution, forward and backward.
    """
    y = F.pad(to_unit(luma(x)), (1, 1, 1, 1), mode="replicate")
    sv = y[..., :-2, :] + 2 * y[..., 1:-1, :] + y[..., 2:, :]  # smoothed along the height
    sh = y[..., :, :-2] + 2 * y[..., :, 1:-1] + y[..., :, 2:]  # smoothed along the width
    gx = sv[..., 2:] - sv[..., :-2]
    gy = sh[..., 2:, :] - sh[..., :-2, :]
    return torch.sqrt(gx * gx + gy * gy + SQRT_EPS)


# --- diffusion ----------------------------------------------------------------------------------


def x0_coefficients(alpha_bar: float) -> tuple[float, float]:
    """(sqrt(1/ᾱ), sqrt(1/ᾱ - 1)), computed in float64 and rounded to float32."""
    return float(np.float32(np.sqrt(1.0 / alpha_bar))), float(np.float32(np.sqrt(1.0 / alpha_bar - 1.0)))


def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, alpha_bar: float, clip: bool = True) -> torch.Tensor:
    """x̂0 = sqrt(1/ᾱ) x - sqrt(1/ᾱ - 1) ε, clipped to [-1, 1] unless ``clip=False``."""
    c1, c2 = x0_coefficients(alpha_bar)
    x0 = x * c1 - eps * c2
    return x0.clamp(-1.0, 1.0) if clip else x0


def item_noise(
    shape: Sequence[int], seeds: Sequence[int], device=None, dtype=torch.float32, salt: int = 0
) -> torch.Tensor:
    """Standard normal noise for a batch: item ``i`` is ``randn(shape)`` from a CPU generator seeded
    ``seeds[i] ^ salt``, so an item's noise does not depend on its batch or the device.

    ``salt`` separates independent streams of one item (the initial noise uses 0, so ``seeds=[3407]``
    reproduces ``torch.manual_seed(3407); torch.randn(shape)``).
    """
    items = [torch.randn((1, *shape), generator=torch.Generator().manual_seed(int(s) ^ salt)) for s in seeds]
    return torch.cat(items).to(device=device, dtype=dtype)
