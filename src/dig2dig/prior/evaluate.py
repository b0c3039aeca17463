"""The prior as a one-step Gaussian denoiser: the check behind ``dig2dig prior eval``.

Mapping from a noise level σ on the 0–255 scale to the prior (stated exactly):

1. A clean gray image x ∈ [0, 255] gets noise: y = x + σ·n, n ~ N(0, 1) (seeded per image; y is
   not clipped).  In the prior's [-1, 1] units that is y' = y/127.5 - 1 = x' + s·n, s = σ/127.5.
2. The DDPM forward process gives x_t/√ᾱ_t = x' + √((1-ᾱ_t)/ᾱ_t)·ε, so we pick the timestep
   t* = argmin_t |√((1-ᾱ_t)/ᾱ_t) - s| (σ = 15, 25, 50 give t* = 32, 56, 114 on the linear
   schedule; the effective σ is then 15.04, 24.93 and 49.84, within 0.4 %).
3. x_t = √ᾱ_t* · y', one network call: x̂0 = clip(x_t/√ᾱ - √(1/ᾱ - 1)·ε̂(x_t, t*), -1, 1).
4. PSNR = 10 log10(255² / MSE) between x and 127.5(x̂0 + 1) (float, no rounding), per image,
   then averaged over the folder.  Images are reflect-padded to the prior's multiple and cropped.
3-channel priors see the gray image replicated into three channels and answer with their luma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io import READ_SUFFIXES, list_images


def timestep_for_sigma(alphas_cumprod: np.ndarray, sigma255: float) -> int:
    s = sigma255 / 127.5
    levels = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
    if not levels[0] * 127.5 / 2 <= sigma255 <= levels[-1] * 127.5:
        raise ValueError(
            f"sigma {sigma255:g} is outside the noise levels of the schedule "
            f"({levels[0] * 127.5:.2g} to {levels[-1] * 127.5:.0f} on the 0-255 scale); use a sigma "
            f"within them"
        )
    return int(np.argmin(np.abs(levels - s)))


@dataclass
class DenoiseScore:
    sigma: float
    t: int
    psnr: float  # mean over images
    per_image: dict[str, float]


def load_gray_folder(folder: str | Path) -> dict[str, np.ndarray]:
    """Every image in ``folder`` as a float64 gray array on the 0–255 scale."""
    from ..color import luminance
    from ..io import read_image

    folder = Path(folder)
    files = list_images(folder)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(READ_SUFFIXES)}) in {folder}")
    return {p.name: luminance(read_image(p).data).astype(np.float64) * 255.0 for p in files}


@torch.no_grad()
def denoise_scores(den, images: dict[str, np.ndarray], sigmas=(15, 25, 50), seed: int = 0) -> list[DenoiseScore]:
    from ..functional import luma
    from ..geometry import crop, pad, padding_for

    out = []
    for sigma in sigmas:
        t = timestep_for_sigma(den.alphas_cumprod, float(sigma))
        ab = float(den.alphas_cumprod[t])
        per = {}
        for k, (name, x) in enumerate(images.items()):
            rng = np.random.default_rng([seed, int(round(sigma * 1000)), k])
            y = (x + sigma * rng.standard_normal(x.shape)) / 127.5 - 1.0
            height, width = x.shape
            p = padding_for(height, width, den.spatial_multiple)
            xt = torch.from_numpy(pad(y, p).astype(np.float32) * np.float32(math.sqrt(ab)))[None, None]
            xt = xt.to(den.device).repeat(1, den.channels, 1, 1)
            x0 = luma(den.x0(xt, t))
            rec = (crop(x0[0, 0].double().cpu().numpy(), p) + 1.0) * 127.5
            per[name] = float(10 * np.log10(255.0**2 / np.mean((rec - x) ** 2)))
        out.append(DenoiseScore(float(sigma), t, float(np.mean(list(per.values()))), per))
    return out
