"""Colour: one BT.601 full-range luminance/chroma split, and the per-task chroma policies.

dig2dig fuses *luminance*.  Colour sources are split into Y (BT.601 luma, full range, the JPEG
convention) and chroma Cb/Cr; the fused Y is recombined with chroma chosen per task:

* ``"source"`` (VIF, MIF): chroma of the colour source (the visible image, the PET/SPECT map).
  With several colour sources the first one in the task's role order is used.
* ``"saturation"`` (MEF, MFF): chroma fused from every colour source, each pixel weighted by
  its saturation ``|C - 1/2|`` (+ a small floor so flat regions average), separately for Cb and
  Cr -- well-exposed/in-focus pixels carry the stronger colour.

Gray sources (2-D, or three channels equal within :data:`GRAY_TOLERANCE`) contribute no chroma;
when every source is gray the output is gray.

All arrays are float in [0, 1]: Y ∈ [0, 1], Cb/Cr ∈ [0, 1] centred on 1/2.
"""

from __future__ import annotations

import numpy as np

KR, KG, KB = 0.299, 0.587, 0.114  # BT.601 luma weights, the one definition (arrays here, tensors in functional)
GRAY_TOLERANCE = 2.5 / 255.0  # max |R-G|, |G-B| for "three equal channels" (JPEG rounding)
SATURATION_FLOOR = 1.0 / 255.0
CHROMA_POLICIES = ("source", "saturation")


def is_gray(img: np.ndarray, tol: float = GRAY_TOLERANCE) -> bool:
    if img.ndim == 2:
        return True
    return bool(np.abs(img[..., 0] - img[..., 1]).max() <= tol and np.abs(img[..., 1] - img[..., 2]).max() <= tol)


def luminance(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB image; a gray image is returned as is (float32)."""
    if img.ndim == 2:
        return img.astype(np.float32, copy=False)
    return (KR * img[..., 0] + KG * img[..., 1] + KB * img[..., 2]).astype(np.float32)


def rgb_to_ycbcr(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = luminance(rgb)
    cb = 0.5 + (rgb[..., 2] - y) * (0.5 / (1.0 - KB))
    cr = 0.5 + (rgb[..., 0] - y) * (0.5 / (1.0 - KR))
    return y, cb.astype(np.float32), cr.astype(np.float32)


def ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    r = y + (cr - 0.5) * (2.0 * (1.0 - KR))
    b = y + (cb - 0.5) * (2.0 * (1.0 - KB))
    g = (y - KR * r - KB * b) / KG
    return np.clip(np.stack([r, g, b], axis=-1), 0.0, 1.0).astype(np.float32)


def fuse_chroma(sources: list[np.ndarray], policy: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Chroma (Cb, Cr) for the fused image from the sources, or None if all are gray.

    ``sources`` are in the task's role order (see :mod:`dig2dig.tasks`).
    """
    if policy not in CHROMA_POLICIES:
        raise ValueError(f"unknown chroma policy {policy!r}; use one of {CHROMA_POLICIES}")
    colour = [s for s in sources if not is_gray(s)]
    if not colour:
        return None
    if policy == "source" or len(colour) == 1:
        _, cb, cr = rgb_to_ycbcr(colour[0])
        return cb, cr
    chans = [rgb_to_ycbcr(s)[1:] for s in colour]
    out = []
    for c in range(2):
        vals = np.stack([ch[c] for ch in chans])
        w = np.abs(vals - 0.5) + SATURATION_FLOOR
        out.append((np.sum(w * vals, axis=0) / np.sum(w, axis=0)).astype(np.float32))
    return out[0], out[1]


def compose(y: np.ndarray, chroma: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Fused luminance + chroma -> RGB (H, W, 3), or gray (H, W) when chroma is None."""
    y = np.clip(y, 0.0, 1.0).astype(np.float32)
    if chroma is None:
        return y
    return ycbcr_to_rgb(y, *chroma)
