"""MATLAB-semantics building blocks shared by the metric modules.

The fusion toolboxes we reproduce (VIFB, MEFB, Tang's collection, Z. Liu's originals) are written in
MATLAB; their numbers depend on MATLAB's exact conventions: correlation vs. convolution, zero vs.
replicate padding, round-half-away-from-zero, ``fspecial``'s truncation rule, ``freqspace``'s grid
and so on.  Each helper here states the MATLAB function it stands for.  All work on float64 2-D
arrays unless stated otherwise.

Sliding-window filters go through OpenCV (``cv2.sepFilter2D`` / ``cv2.filter2D``), which correlates
in double precision when given float64 data; separable kernels (every Gaussian used by the
metrics) are applied as two 1-D passes.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from ._cache import memo

__all__ = [
    "blockwise",
    "box_downsample2",
    "constant_windows",
    "conv2_same",
    "filter2",
    "fspecial_gaussian",
    "freqspace",
    "gaussian_1d",
    "imfilter_replicate",
    "matlab_gradient",
    "mround",
    "normalize1",
    "rgb2gray_matlab",
    "sep_filter2",
]

# MATLAB's rgb2gray weights: the first row of inv([1 .956 .621; 1 -.272 -.647; 1 -1.106 1.703]).
_RGB2GRAY = np.linalg.inv(np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]]))[0]


def mround(x: np.ndarray) -> np.ndarray:
    """MATLAB ``round``: half away from zero (NumPy's ``np.round`` rounds half to even).

    Exact for every float: ``x - trunc(x)`` is computed without rounding error, so ties are found
    exactly and moved away from zero; everything else is rounded by ``np.round``.
    """
    x = np.asarray(x, dtype=np.float64)
    t = np.trunc(x)
    r = np.round(x)
    tie = np.abs(x - t) == 0.5
    if np.any(tie):
        r = np.where(tie, t + np.sign(x), r)
    return r


def normalize1(x: np.ndarray) -> np.ndarray:
    """Z. Liu's ``normalize1``: min-max stretch to 0..255 and MATLAB-round.

    If ``max == min == 0`` the data are returned unchanged (as in the original).  A constant
    non-zero image divides 0 by 0 and yields NaN, again as in MATLAB.  Shared between the metrics
    of one ``score`` call (see :mod:`._cache`); treat the result as read-only.
    """
    x = np.asarray(x, dtype=np.float64)

    def compute():
        hi, lo = x.max(), x.min()
        if hi == 0 and lo == 0:
            return x.copy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return mround((x - lo) / (hi - lo) * 255)

    return memo("normalize1", (x,), compute)


def rgb2gray_matlab(rgb: np.ndarray, as_uint8: bool = True) -> np.ndarray:
    """MATLAB ``rgb2gray`` of an (H, W, 3) RGB array.

    ``as_uint8=True`` reproduces the uint8 path (weighted sum, MATLAB-rounded, clipped to 0..255);
    ``False`` the double path (unrounded weighted sum), which MATLAB takes for double input.
    Returns float64 either way.
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    y = rgb[..., 0] * _RGB2GRAY[0] + rgb[..., 1] * _RGB2GRAY[1] + rgb[..., 2] * _RGB2GRAY[2]
    if as_uint8:
        y = np.clip(mround(y), 0, 255)
    return y


@lru_cache(maxsize=64)
def _gaussian_kernel(rows: int, cols: int, sigma: float) -> np.ndarray:
    ry, rx = (rows - 1) / 2.0, (cols - 1) / 2.0
    y, x = np.ogrid[-ry : ry + 1, -rx : rx + 1]
    h = np.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    h[h < np.finfo(np.float64).eps * h.max()] = 0
    h = h / h.sum()
    h.setflags(write=False)
    return h


def fspecial_gaussian(size: int | tuple[int, int], sigma: float) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', size, sigma)``: truncated (< eps*max -> 0) and sum-normalised."""
    rows, cols = size if isinstance(size, (tuple, list)) else (size, size)
    return _gaussian_kernel(int(rows), int(cols), float(sigma)).copy()


@lru_cache(maxsize=64)
def gaussian_1d(size: int, sigma: float) -> np.ndarray | None:
    """The 1-D factor ``g`` with ``outer(g, g) == fspecial_gaussian(size, sigma)`` (to rounding).

    Returns None when fspecial's eps-truncation zeroes some entries (then the 2-D kernel is no
    longer separable and callers must use the full kernel).
    """
    r = (size - 1) / 2.0
    x = np.arange(-r, r + 1)
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    full = np.outer(g, g)
    if np.any(full < np.finfo(np.float64).eps * full.max()):
        return None
    g = g / g.sum()
    g.setflags(write=False)
    return g


def _crop_valid(out: np.ndarray, kr: int, kc: int) -> np.ndarray:
    """Crop a 'same'-sized result to MATLAB's 'valid' region for an odd kr x kc kernel."""
    r, c = kr // 2, kc // 2
    return out[r : out.shape[0] - r, c : out.shape[1] - c]


def _check_valid_size(x: np.ndarray, kr: int, kc: int) -> None:
    if x.shape[0] < kr or x.shape[1] < kc:
        raise ValueError(
            f"image of shape {x.shape} is smaller than the {kr}x{kc} filter window; "
            f"this metric needs images of at least {kr}x{kc} pixels"
        )


def sep_filter2(x: np.ndarray, g: np.ndarray, shape: str = "valid") -> np.ndarray:
    """``filter2(outer(g, g), x, shape)`` for a symmetric odd-length 1-D kernel ``g``.

    Correlation with zero padding ('same') or without padding ('valid'), in float64.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    k = len(g)
    if shape == "valid":
        _check_valid_size(x, k, k)
    out = cv2.sepFilter2D(x, cv2.CV_64F, g, g, borderType=cv2.BORDER_CONSTANT)
    return _crop_valid(out, k, k) if shape == "valid" else out


def filter2(h: np.ndarray, x: np.ndarray, shape: str = "same") -> np.ndarray:
    """MATLAB ``filter2(h, x, shape)``: 2-D correlation, zero padding, odd-sized kernel.

    ``shape`` is 'same' or 'valid'.  Real and complex ``x`` are supported.  An image smaller than
    the kernel raises ValueError for 'valid' (MATLAB would return an empty array).
    """
    h = np.asarray(h, dtype=np.float64)
    kr, kc = h.shape
    if kr % 2 == 0 or kc % 2 == 0:
        raise ValueError(f"filter2 helper supports odd kernel sizes only, got {h.shape}")
    if shape not in ("same", "valid"):
        raise ValueError(f"shape must be 'same' or 'valid', got {shape!r}")
    if np.iscomplexobj(x):
        return filter2(h, x.real, shape) + 1j * filter2(h, x.imag, shape)
    x = np.ascontiguousarray(x, dtype=np.float64)
    if shape == "valid":
        _check_valid_size(x, kr, kc)
    out = cv2.filter2D(x, cv2.CV_64F, h, borderType=cv2.BORDER_CONSTANT)
    return _crop_valid(out, kr, kc) if shape == "valid" else out


def constant_windows(x: np.ndarray, size: int) -> np.ndarray:
    """Boolean 'valid'-region map: True where the ``size`` x ``size`` window of ``x`` is constant.

    Local variances computed as E[x^2] - E[x]^2 leave rounding noise (~1e-12) in such windows,
    and its sign and size depend on the summation order of the filter implementation; ratios of
    two such noises (the lambda weights of Piella's, Cvejic's and Yang's indices, MEF-SSIM's
    consistency) are then arbitrary.  The metric code sets the variance of constant windows to
    its exact value, 0.  Exact test: no non-zero horizontal or vertical neighbour difference
    inside the window (counted with integral images).
    """
    x = np.asarray(x, dtype=np.float64)
    _check_valid_size(x, size, size)
    dh = (x[:, 1:] != x[:, :-1]).view(np.uint8)
    dv = (x[1:, :] != x[:-1, :]).view(np.uint8)
    return (_block_sums(dh, size, size - 1) == 0) & (_block_sums(dv, size - 1, size) == 0)


def _block_sums(a: np.ndarray, kr: int, kc: int) -> np.ndarray:
    """Sums of all kr x kc blocks of a uint8 array ('valid' positions), via an integral image."""
    s = cv2.integral(np.ascontiguousarray(a), sdepth=cv2.CV_32S)
    return s[kr:, kc:] - s[:-kr, kc:] - s[kr:, :-kc] + s[:-kr, :-kc]


def conv2_same(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """MATLAB ``conv2(x, h, 'same')``: true convolution (kernel flipped), zero padding."""
    return filter2(np.asarray(h, dtype=np.float64)[::-1, ::-1], x, "same")


def imfilter_replicate(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """MATLAB ``imfilter(x, h, 'replicate')`` (correlation, edge replication), odd-sized kernel."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    return cv2.filter2D(x, cv2.CV_64F, np.asarray(h, dtype=np.float64), borderType=cv2.BORDER_REPLICATE)


def box_downsample2(x: np.ndarray) -> np.ndarray:
    """``imfilter(x, ones(2)/4, 'symmetric', 'same')`` followed by ``x(1:2:end, 1:2:end)``.

    For MATLAB's 2x2 kernel the anchor is the top-left tap, so each output pixel averages itself
    with its right/lower neighbours; 'symmetric' padding repeats the last row/column.
    """
    x = np.asarray(x, dtype=np.float64)
    p = np.pad(x, ((0, 1), (0, 1)), mode="symmetric")
    s = (p[:-1, :-1] + p[1:, :-1] + p[:-1, 1:] + p[1:, 1:]) / 4
    return s[::2, ::2]


def matlab_gradient(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``[dzdx, dzdy] = gradient(x)``: central differences inside, one-sided at borders.

    ``dzdx`` runs along columns (axis 1), ``dzdy`` along rows (axis 0).
    """
    x = np.asarray(x, dtype=np.float64)
    dzdy, dzdx = np.gradient(x)
    return dzdx, dzdy


def freqspace(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``[u, v] = freqspace([m n], 'meshgrid')``: normalised frequency grids (-1..1).

    ``u`` varies along columns, ``v`` along rows; the zero frequency sits at index
    ``floor(n/2)`` / ``floor(m/2)``, as after ``fftshift``.
    """
    m, n = shape
    u = (np.arange(n) - np.floor(n / 2)) * (2.0 / n)
    v = (np.arange(m) - np.floor(m / 2)) * (2.0 / m)
    return np.meshgrid(u, v)


def blockwise(x: np.ndarray, block: int, reduce: str) -> np.ndarray:
    """MATLAB ``blkproc(x, [block block], fun)`` for ``fun`` = sum or mean of a block.

    Partial blocks at the right/bottom are zero-padded to full size first (as ``blkproc`` does), so
    a block mean always divides by ``block**2``.
    """
    m, n = x.shape
    mb, nb = -(-m // block), -(-n // block)
    p = np.zeros((mb * block, nb * block), dtype=x.dtype)
    p[:m, :n] = x
    s = p.reshape(mb, block, nb, block).sum(axis=(1, 3))
    return s / (block * block) if reduce == "mean" else s
