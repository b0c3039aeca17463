"""Classical fusion baselines: quick, deterministic references for benchmarks and tests.

All take N ≥ 2 registered luminance images (float32 in [0, 1], one shape) and return the fused
luminance in [0, 1].  Colour is handled by the caller like for every other method.

* ``average``   -- (1/N) Σ s_i.  The reference that SSIM/MSE/CC-to-sources metrics favour; report
  it beside every method.
* ``maxabs``    -- per pixel the source of largest absolute value (choose-max; for non-negative
  images the brightest source).
* ``laplacian`` -- Laplacian-pyramid fusion (Burt & Adelson 1985): detail levels take the
  coefficient of largest magnitude, the coarsest (Gaussian) level is averaged.
* ``guided``    -- guided-filtering fusion, GFF (Li, Kang & Hu, IEEE TIP 2013): two-scale split by a
  31×31 mean filter, saliency = Gaussian-smoothed |Laplacian|, winner-take-all weight maps refined
  by guided filters (r = 45, ε = 0.3 for the base layer; r = 7, ε = 1e-6 for the detail layer).
* ``mertens``   -- exposure fusion (Mertens, Kautz & Van Reeth 2007) through OpenCV's ``MergeMertens``:
  per-pixel weights from contrast (|Laplacian|) and well-exposedness (a Gaussian around 0.5, σ = 0.2),
  blended over Laplacian pyramids.  It runs on the luminances dig2dig fuses, so its saturation term
  (the spread of R, G, B) has no weight; colour comes from the task's chroma policy as for every method.
"""

from __future__ import annotations

import numpy as np


def _stack(sources: list[np.ndarray]) -> np.ndarray:
    if len(sources) < 2:
        raise ValueError(f"fusion needs at least two sources, got {len(sources)}")
    shapes = {s.shape for s in sources}
    if len(shapes) != 1 or sources[0].ndim != 2:
        raise ValueError(f"sources must be 2-D luminance images of one shape, got {sorted(shapes)}")
    return np.stack([np.asarray(s, np.float32) for s in sources])


def average(sources: list[np.ndarray]) -> np.ndarray:
    return _stack(sources).mean(axis=0)


def maxabs(sources: list[np.ndarray]) -> np.ndarray:
    s = _stack(sources)
    idx = np.abs(s).argmax(axis=0)
    return np.take_along_axis(s, idx[None], axis=0)[0]


def laplacian(sources: list[np.ndarray], levels: int | None = None) -> np.ndarray:
    import cv2

    s = _stack(sources)
    h, w = s.shape[1:]
    if levels is None:
        levels = int(max(1, min(5, np.floor(np.log2(min(h, w) / 8)))))
    pyramids = []
    for img in s:
        gauss = [img]
        for _ in range(levels):
            gauss.append(cv2.pyrDown(gauss[-1]))
        lap = [g - cv2.pyrUp(gn, dstsize=(g.shape[1], g.shape[0])) for g, gn in zip(gauss[:-1], gauss[1:])]
        pyramids.append(lap + [gauss[-1]])
    fused = []
    for lvl in range(levels + 1):
        coeffs = np.stack([p[lvl] for p in pyramids])
        if lvl == levels:
            fused.append(coeffs.mean(axis=0))
        else:
            idx = np.abs(coeffs).argmax(axis=0)
            fused.append(np.take_along_axis(coeffs, idx[None], axis=0)[0])
    out = fused[-1]
    for lvl in range(levels - 1, -1, -1):
        out = cv2.pyrUp(out, dstsize=(fused[lvl].shape[1], fused[lvl].shape[0])) + fused[lvl]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _box(x: np.ndarray, r: int) -> np.ndarray:
    import cv2

    r = min(int(r), max(x.shape))  # a box wider than the image averages the same pixels, only slower
    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter (gray guide), O(1) per pixel via box filters."""
    mean_i, mean_p = _box(guide, r), _box(src, r)
    cov = _box(guide * src, r) - mean_i * mean_p
    var = _box(guide * guide, r) - mean_i * mean_i
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    return _box(a, r) * guide + _box(b, r)


def guided(sources: list[np.ndarray], r1: int = 45, eps1: float = 0.3, r2: int = 7, eps2: float = 1e-6) -> np.ndarray:
    import cv2

    s = _stack(sources).astype(np.float32)
    base = np.stack([_box(x, 15) for x in s])
    detail = s - base
    sal = np.stack([cv2.GaussianBlur(np.abs(cv2.Laplacian(x, cv2.CV_32F, ksize=1)), (11, 11), 5) for x in s])
    win = (sal == sal.max(axis=0, keepdims=True)).astype(np.float32)
    wb = np.stack([guided_filter(x, p, r1, eps1) for x, p in zip(s, win)])
    wd = np.stack([guided_filter(x, p, r2, eps2) for x, p in zip(s, win)])
    wb = np.clip(wb, 0, None) + 1e-6
    wd = np.clip(wd, 0, None) + 1e-6
    fused = (wb * base).sum(0) / wb.sum(0) + (wd * detail).sum(0) / wd.sum(0)
    return np.clip(fused, 0.0, 1.0).astype(np.float32)


def mertens(sources: list[np.ndarray], contrast: float = 1.0, exposedness: float = 1.0) -> np.ndarray:
    import cv2

    s = _stack(sources)
    # MergeMertens reads any input as 0..255 data (it divides by 255) and returns 0..1 (unclipped)
    fused = cv2.createMergeMertens(float(contrast), 0.0, float(exposedness)).process([x * 255.0 for x in s])
    return np.clip(fused, 0.0, 1.0).astype(np.float32)


BASELINES = {"average": average, "maxabs": maxabs, "laplacian": laplacian, "guided": guided, "mertens": mertens}
