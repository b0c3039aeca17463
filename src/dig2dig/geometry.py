"""Geometry: any H×W in, the same H×W out.

The prior's UNet needs H and W to be multiples of its down-sampling factor.  Images are padded
at the bottom and right by reflection (so the padding continues the scene rather than adding
flat borders the guidance would have to fight) and the result is cropped back.  Reflection
repeats as needed, so even an image smaller than the pad is padded sensibly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SizeMismatchError


@dataclass(frozen=True)
class Padding:
    height: int  # original
    width: int
    padded_height: int
    padded_width: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.padded_height, self.padded_width


def padding_for(height: int, width: int, multiple: int) -> Padding:
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    return Padding(height, width, -(-height // multiple) * multiple, -(-width // multiple) * multiple)


def pad(img: np.ndarray, p: Padding) -> np.ndarray:
    """Reflect-pad a (H, W) or (H, W, C) array to ``p.shape`` (bottom/right)."""
    if img.shape[:2] != (p.height, p.width):
        raise ValueError(f"image is {img.shape[:2]}, padding was planned for {(p.height, p.width)}")
    widths = [(0, p.padded_height - p.height), (0, p.padded_width - p.width)] + [(0, 0)] * (img.ndim - 2)
    if all(w == (0, 0) for w in widths):
        return img
    return np.pad(img, widths, mode="symmetric" if min(img.shape[:2]) < 2 else "reflect")


def crop(img, p: Padding):
    """Undo :func:`pad` on an array (…, H, W) in either layout: numpy HW[C] or torch [B]CHW."""
    if img.ndim >= 3 and img.shape[-2:] == p.shape:
        return img[..., : p.height, : p.width]
    return img[: p.height, : p.width]


def check_same_size(images: list[np.ndarray], names: list[str]) -> None:
    sizes = [im.shape[:2] for im in images]
    if len(set(sizes)) > 1:
        desc = ", ".join(f"{n} is {w}x{h}" for n, (h, w) in zip(names, sizes))
        head = f"sources must be registered images of one size, but {desc}; "
        e = SizeMismatchError(
            f"{head}align them to the first with register='affine' (or 'rigid', 'homography'), or pass "
            "resize=True to resample every source to the first one's size"
        )
        e.spelled = {
            "cli": f"{head}align them to the first with --register affine (or rigid, homography), or pass "
            "--resize to resample every source to the first one's size",
            "web": f"{head}choose Register: affine (or rigid, homography) to align them to the first, or tick "
            "'Resize every source to the first one's size'",
        }
        raise e


def resize_to(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resample to (height, width): area averaging to shrink, bicubic to enlarge."""
    if img.shape[:2] == (height, width):
        return img
    import cv2

    shrink = height * width < img.shape[0] * img.shape[1]
    out = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
