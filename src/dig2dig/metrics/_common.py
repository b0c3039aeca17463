"""Input checks shared by the metric functions.

Every metric function takes 2-D arrays on the 0..255 scale (any real dtype; converted to float64
unless the metric documents a float32 path) and raises :class:`MetricInputError` (a ValueError)
naming the offending value and the fix.
"""

from __future__ import annotations

import numpy as np

from ..errors import Dig2DigError
from ._cache import memo


class MetricInputError(Dig2DigError, ValueError):
    """An image or argument handed to a metric cannot be used."""


def as_plane(x, name: str = "image", dtype=np.float64) -> np.ndarray:
    """``x`` as a 2-D float array; ValueError for other ranks, non-real dtypes or non-finite data."""
    arr = np.asarray(x)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise MetricInputError(
            f"{name} has dtype {arr.dtype}; metrics need a real-valued (integer or float) array on the 0..255 scale"
        )
    if arr.ndim != 2:
        raise MetricInputError(
            f"{name} has shape {arr.shape}; this function takes a single 2-D plane (H, W). "
            "For colour images use dig2dig.metrics.score(...), which applies a toolbox's colour handling"
        )
    if arr.size == 0:
        raise MetricInputError(f"{name} is empty (shape {arr.shape})")
    out = arr.astype(dtype, copy=False)
    finite = np.issubdtype(arr.dtype, np.integer) or memo("finite", (arr,), lambda: bool(np.isfinite(arr).all()))
    if not finite:
        raise MetricInputError(f"{name} contains NaN or infinite values; pass finite pixel data")
    return out


def as_planes(fused, *sources, dtype=np.float64) -> list[np.ndarray]:
    """Check and convert a fused image and its sources; all must have the same (H, W)."""
    f = as_plane(fused, "fused", dtype)
    out = [f]
    for i, s in enumerate(sources):
        label = "A" if i == 0 else "B" if i == 1 else f"source {i}"
        p = as_plane(s, label, dtype)
        if p.shape != f.shape:
            raise MetricInputError(
                f"{label} is {p.shape[1]}x{p.shape[0]} but the fused image is {f.shape[1]}x{f.shape[0]} "
                "(width x height); resize or crop the images to the same size first"
            )
        out.append(p)
    return out


def require_integer_levels(x: np.ndarray, name: str, metric: str) -> np.ndarray:
    """Integer gray levels 0..255 as int64 (for histogram metrics that index by value)."""
    if np.any(x != np.floor(x)) or x.min() < 0 or x.max() > 255:
        raise MetricInputError(
            f"{metric} indexes a 256-bin histogram by pixel value, but {name} holds values in "
            f"[{x.min():g}, {x.max():g}] that are not all integers in 0..255; round/clip the image first"
        )
    return x.astype(np.int64)


def require_min_size(x: np.ndarray, min_side: int, metric: str) -> None:
    if min(x.shape) < min_side:
        raise MetricInputError(
            f"{metric} needs images of at least {min_side}x{min_side} pixels, got {x.shape[1]}x{x.shape[0]}"
        )
