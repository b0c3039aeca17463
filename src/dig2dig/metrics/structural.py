"""Structural-similarity fusion metrics: SSIM (three conventions), Wang's MS-SSIM, Ma's MEF-SSIM,
and the SSIM-based fusion indices Qc (Cvejic), Qy (Yang), Qw / Qe (Piella).

All functions take 2-D planes on the 0..255 scale (``fused`` first, then the sources) and return
a Python float.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from scipy.ndimage import uniform_filter

from ._cache import memo
from ._common import MetricInputError, as_plane, as_planes, require_min_size
from ._matlab import box_downsample2, constant_windows, filter2, gaussian_1d, sep_filter2

__all__ = [
    "mef_ssim",
    "ms_ssim",
    "ms_ssim_pair",
    "q_piella",
    "qc",
    "qe",
    "qw",
    "qy",
    "ssim_cdd",
    "ssim_matlab",
    "ssim_skimage",
    "ssim_tang",
    "ssim_vifb",
    "ssim_wang",
]


# --------------------------------------------------------------------------------------------
# local statistics with a symmetric separable window, MATLAB filter2 'valid'


_Stats = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # means, variances, covariance


class _LocalMoments:
    """Local (window-weighted) means, variances and covariances of a few named images.

    Each filtered quantity is computed once and reused across pairs (and across the metrics of one
    ``score`` call, see :mod:`._cache`).  Population form
    (E[xy] - E[x]E[y]), MATLAB ``filter2(.., 'valid')`` positions.  Windows in which an image is
    exactly constant get variance (and covariance) exactly 0 rather than the filter's rounding
    noise (see :func:`~dig2dig.metrics._matlab.constant_windows`).
    """

    def __init__(self, g: np.ndarray, **images: np.ndarray) -> None:
        self.g = g
        self.images = images
        self._cache: dict = {}

    def _get(self, key, make):
        if key not in self._cache:
            inputs = tuple(self.images[k] for k in key[1:])
            self._cache[key] = memo((key[0], self.g.tobytes()), inputs, make)
        return self._cache[key]

    def mean(self, k: str) -> np.ndarray:
        return self._get(("mean", k), lambda: sep_filter2(self.images[k], self.g))

    def flat(self, k: str) -> np.ndarray:
        return self._get(("flat", k), lambda: constant_windows(self.images[k], len(self.g)))

    def cov(self, k1: str, k2: str) -> np.ndarray:
        k1, k2 = sorted((k1, k2))

        def make():
            x, y = self.images[k1], self.images[k2]
            c = sep_filter2(x * y, self.g) - self.mean(k1) * self.mean(k2)
            c[self.flat(k1) | self.flat(k2)] = 0.0
            return c

        return self._get(("cov", k1, k2), make)

    def stats(self, k1: str, k2: str) -> _Stats:
        """(mean1, mean2, var1, var2, cov12)"""
        return self.mean(k1), self.mean(k2), self.cov(k1, k1), self.cov(k2, k2), self.cov(k1, k2)


def _stats(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> _Stats:
    """Local means, variances and covariance of two images (see :class:`_LocalMoments`)."""
    return _LocalMoments(g, x=x, y=y).stats("x", "y")


def _ssim_map(
    mx: np.ndarray, my: np.ndarray, sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray, c1: float, c2: float
) -> np.ndarray:
    """((2 mx my + C1)(2 sxy + C2)) / ((mx^2 + my^2 + C1)(sxx + syy + C2)), with few temporaries."""
    num = mx * my
    num *= 2
    num += c1
    tmp = sxy * 2
    tmp += c2
    num *= tmp
    den = mx * mx
    np.multiply(my, my, out=tmp)
    den += tmp
    den += c1
    np.add(sxx, syy, out=tmp)
    tmp += c2
    den *= tmp
    num /= den
    return num


def _gaussian_window(size: int) -> np.ndarray:
    """The 1-D factor of the ``size`` x ``size`` Gaussian (sigma 1.5); separable for the sizes used here."""
    g = gaussian_1d(size, 1.5)
    assert g is not None, f"the {size}x{size} Gaussian (sigma 1.5) is not separable"
    return g


def _wang_window() -> np.ndarray:
    return _gaussian_window(11)


# --------------------------------------------------------------------------------------------
# SSIM variants


def ssim_skimage(x, y, *, data_range: float, win_size: int = 7, dtype=None) -> float:
    """SSIM as ``skimage.metrics.structural_similarity`` computes it with its defaults.

    ``win_size`` x ``win_size`` uniform window (``scipy.ndimage.uniform_filter``, 'reflect'
    borders), sample covariance (x N/(N-1)), K1 = 0.01, K2 = 0.03, C = (K*data_range)^2, mean
    of the map cropped by (win_size-1)/2.  ``dtype=None`` computes in float32 for float32 input
    (as skimage does) and float64 otherwise.
    """
    if dtype is None:
        dtype = np.float32 if np.asarray(x).dtype == np.float32 else np.float64
    x, y = as_planes(x, y, dtype=dtype)
    if win_size < 3 or win_size % 2 == 0:
        raise MetricInputError(f"win_size must be an odd integer >= 3, got {win_size}")
    require_min_size(x, win_size, "SSIM")
    if not data_range > 0:
        raise MetricInputError(f"data_range must be positive, got {data_range}")
    ux, uy = uniform_filter(x, size=win_size), uniform_filter(y, size=win_size)
    uxx, uyy, uxy = (uniform_filter(v, size=win_size) for v in (x * x, y * y, x * y))
    npix = win_size**2
    cov_norm = npix / (npix - 1.0)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean(dtype=np.float64))


def ssim_cdd(fused, a, b, *, data_range: float = 2.0, win_size: int = 7) -> float:
    """SSIM (CDDFuse): SSIM(F, A) + SSIM(F, B) with skimage defaults.  Sum in [-2, 2]; higher is better.

    Reference: CDDFuse ``utils/Evaluator.py`` ``SSIM`` with scikit-image 0.19: float32 images and
    no ``data_range`` mean **data_range = 2** (the float dtype range), i.e. almost-zero constants.
    Pass ``data_range=255`` for the "fixed" variant.  Float32 input is computed in float32, as
    skimage does; float64 input in float64.
    """
    return ssim_skimage(fused, a, data_range=data_range, win_size=win_size) + ssim_skimage(
        fused, b, data_range=data_range, win_size=win_size
    )


def ssim_min_cdd(fused, a, b, *, data_range: float = 2.0, win_size: int = 7) -> float:
    """min(SSIM(F, A), SSIM(F, B)) with the CDDFuse evaluator's SSIM (:func:`ssim_cdd`'s terms): how much of the
    structure of the source it keeps *least* of.  In [-1, 1]; higher is better.  A fusion that copies one source
    scores high on the sum and low here."""
    return min(
        ssim_skimage(fused, a, data_range=data_range, win_size=win_size),
        ssim_skimage(fused, b, data_range=data_range, win_size=win_size),
    )


def ssim_wang(x, y) -> float:
    """Wang's ``ssim_index``: 11x11 Gaussian (sigma 1.5), K = (0.01, 0.03), L = 255, 'valid', map mean."""
    x, y = as_planes(x, y)
    require_min_size(x, 11, "SSIM")
    st = _stats(x, y, _wang_window())
    return float(np.mean(_ssim_map(*st, (0.01 * 255) ** 2, (0.03 * 255) ** 2)))


def ssim_vifb(fused, a, b) -> float:
    """SSIM (VIFB ``metricsSsim.m``): Wang SSIM(A, F) + SSIM(B, F).  Sum in [-2, 2]; higher is better."""
    return ssim_wang(a, fused) + ssim_wang(b, fused)


def ssim_matlab(x, y, *, dynamic_range: float = 1.0) -> float:
    """MATLAB Image Processing Toolbox ``ssim(x, y)`` with its defaults, as we understand them.

    Gaussian window sigma 1.5 (11 taps, normalised), 'replicate' padding, population statistics,
    C1 = (0.01*DynamicRange)^2, C2 = (0.03*DynamicRange)^2 (C3 = C2/2, unit exponents), mean of the
    full-size map.  MATLAB's DynamicRange defaults to 1 for double input, so on 0..255 data the
    constants are tiny.  Not validated against MATLAB itself (see the metric spec, section 3.13).
    """
    x, y = as_planes(x, y)
    g = _wang_window()

    def blur(v):
        return cv2.sepFilter2D(np.ascontiguousarray(v), cv2.CV_64F, g, g, borderType=cv2.BORDER_REPLICATE)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (0.01 * dynamic_range) ** 2, (0.03 * dynamic_range) ** 2
    return float(np.mean(_ssim_map(mx, my, sxx, syy, sxy, c1, c2)))


def ssim_tang(fused, a, b) -> float:
    """SSIM (Tang): [ssim(F, A) + ssim(F, B)] / 2 with MATLAB's ``ssim`` defaults (DynamicRange 1).

    A **mean** (<= 1), unlike the CDDFuse/VIFB sums.  See :func:`ssim_matlab`.  Higher is better.
    """
    return (ssim_matlab(fused, a) + ssim_matlab(fused, b)) / 2.0


# --------------------------------------------------------------------------------------------
# Wang's multi-scale SSIM

_MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_pair(x, y) -> float:
    """Wang's 5-scale MS-SSIM (``msssim.m``) of two images.

    Per scale: Wang SSIM statistics (11x11 Gaussian sigma 1.5, K = (0.01, 0.03), L = 255, 'valid');
    the contrast-structure mean at scales 1-4 and the full SSIM at scale 5, combined as
    prod(cs_l^w_l) * ssim_5^w_5 with w = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333).  Between scales:
    2x2 box filter ('symmetric') and decimation by 2.  Needs at least 176 px per side.
    """
    x, y = as_planes(x, y)
    require_min_size(x, 11 * 2 ** (len(_MS_WEIGHTS) - 1), "MS-SSIM")
    g = _wang_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    out = 1.0
    for level, w in enumerate(_MS_WEIGHTS):
        mx, my, sxx, syy, sxy = _stats(x, y, g)
        cs = (2 * sxy + c2) / (sxx + syy + c2)
        if level == len(_MS_WEIGHTS) - 1:
            value = np.mean((2 * mx * my + c1) / (mx * mx + my * my + c1) * cs)
        else:
            value = np.mean(cs)
            x, y = box_downsample2(x), box_downsample2(y)
        with np.errstate(invalid="ignore"):
            out *= float(value) ** w if value >= 0 else float("nan")
    return out


def ms_ssim(fused, a, b) -> float:
    """MS-SSIM (Wang 2003, 5 scales), mean of MS-SSIM(F, A) and MS-SSIM(F, B).  Higher is better.

    This is **not** the "MS_SSIM" of Tang's toolbox, which is Ma's MEF-SSIM (:func:`mef_ssim`).
    """
    return (ms_ssim_pair(fused, a) + ms_ssim_pair(fused, b)) / 2.0


# --------------------------------------------------------------------------------------------
# Ma-Zeng-Wang MEF-SSIM, multi-scale

_MEF_WEIGHTS = np.array([0.0448, 0.2856, 0.3001])


def _mef_ssim_scale(seq: list[np.ndarray], f: np.ndarray, k_const: float = 0.03) -> float:
    """One scale of ``mef_ssim.m``, vectorised: every 11x11 patch statistic from filtered products."""
    eps = np.finfo(np.float64).eps
    wsize, npix = 11, 121
    gauss = _wang_window()
    box = np.full(wsize, 1.0 / wsize)
    n_src = len(seq)

    mu = [sep_filter2(x, box) for x in seq]  # box means
    flat = [constant_windows(x, wsize) for x in seq]
    # bcov[i, j]: sum over the patch of (x_i - mu_i)(x_j - mu_j); exactly 0 for constant patches
    bcov = {}
    for i in range(n_src):
        for j in range(i, n_src):
            c = npix * (sep_filter2(seq[i] * seq[j], box) - mu[i] * mu[j])
            c[flat[i] | flat[j]] = 0.0
            bcov[i, j] = bcov[j, i] = c

    norms = [np.sqrt(np.maximum(bcov[i, i], 0.0)) for i in range(n_src)]  # ||x_k - mu_k|| per patch
    ed = [nrm + 0.001 for nrm in norms]
    denominator = sum(norms)
    sum_var = sum(bcov[i, j] for i in range(n_src) for j in range(n_src))  # patch of sum_k x_k
    numerator = np.sqrt(np.maximum(sum_var, 0.0))
    r = (numerator + eps) / (denominator + eps)
    r = np.where(r > 1, 1 - eps, r)
    r = np.where(r < 0, eps, r)
    p = np.minimum(np.tan(np.pi / 2 * r), 10.0)

    wmap = [(e / wsize) ** p + eps for e in ed]
    wsum = sum(wmap)
    coef = [w / wsum / e for w, e in zip(wmap, ed)]  # r_patch = sum_k coef_k (x_k - mu_k)
    max_ed = np.maximum.reduce(ed)

    # the patch norm of the structure vector, and its rescaling to norm max(ed)
    norm_sq = sum(coef[i] * coef[j] * bcov[i, j] for i in range(n_src) for j in range(n_src))
    norm = np.sqrt(np.maximum(norm_sq, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(norm > 0, max_ed / norm, 1.0)

    gx = [sep_filter2(x, gauss) for x in seq]
    gf = sep_filter2(f, gauss)
    gff = sep_filter2(f * f, gauss)
    mu_r = scale * sum(c * (g - m) for c, g, m in zip(coef, gx, mu))
    second = 0.0  # Gaussian-weighted sum of the (unscaled) structure vector squared
    for i in range(n_src):
        for j in range(i, n_src):
            term = sep_filter2(seq[i] * seq[j], gauss) - mu[j] * gx[i] - mu[i] * gx[j] + mu[i] * mu[j]
            second = second + (1 if i == j else 2) * coef[i] * coef[j] * term
    var_r = scale * scale * second - mu_r * mu_r
    cross = scale * sum(c * (sep_filter2(x * f, gauss) - m * gf) for c, x, m in zip(coef, seq, mu))
    cov_rf = cross - mu_r * gf
    var_f = gff - gf * gf
    c = (k_const * 255) ** 2
    q = (2 * cov_rf + c) / (var_r + var_f + c)
    return float(np.mean(q))


def mef_ssim(fused, sources: Sequence, *, levels: int = 3) -> float:
    """MEF-SSIM: Ma, Zeng & Wang's multi-exposure fusion SSIM, multi-scale form (3 levels).

    Reference: MEFB ``mef_ms_ssim.m`` / ``mef_ssim.m`` (= Tang ``analysis_ms_ssim.m``, reported
    there as "MS_SSIM").  Any number (>= 2) of sources.  Per scale: 11x11 patches; a reference
    structure built from the sources' normalised patches weighted by (ed/11)^p, p set by the
    patches' consistency R; q = (2 sigma_rF + C)/(sigma_r^2 + sigma_F^2 + C) with Gaussian
    (11, 1.5) weighting and C = (0.03*255)^2; Q = mean q.  Scales are linked by a 2x2 box filter
    and decimation; MS = prod Q_l^w_l with w = (0.0448, 0.2856, 0.3001)/sum.  Unitless, higher is
    better.  Needs at least 11 * 2^(levels-1) px per side.
    """
    f = as_plane(fused, "fused")
    if isinstance(sources, np.ndarray) and sources.ndim == 2:
        raise MetricInputError("sources must be a sequence of at least 2 images, got a single 2-D array")
    seq = as_planes(f, *sources)[1:]
    if len(seq) < 2:
        raise MetricInputError(f"MEF-SSIM needs at least 2 sources, got {len(seq)}")
    if levels < 1 or levels > len(_MEF_WEIGHTS):
        raise MetricInputError(f"levels must be 1..{len(_MEF_WEIGHTS)}, got {levels}")
    require_min_size(f, 11 * 2 ** (levels - 1), "MEF-SSIM")
    weights = _MEF_WEIGHTS[:levels] / _MEF_WEIGHTS[:levels].sum() if levels > 1 else np.ones(1)
    scores = []
    for level in range(levels):
        scores.append(_mef_ssim_scale(seq, f))
        if level < levels - 1:
            seq = [box_downsample2(x) for x in seq]
            f = box_downsample2(f)
    with np.errstate(invalid="ignore"):
        return float(np.prod(np.array(scores) ** weights))


# --------------------------------------------------------------------------------------------
# Qc, Qy (ssim_yang: 7x7 Gaussian, C1 = C2 = 2e-16)


def _ssim_yang(mom: _LocalMoments, k1: str, k2: str):
    """Z. Liu's ``ssim_yang``: 7x7 Gaussian (sigma 1.5), C1 = C2 = 2e-16 -> (map, var1, var2, cov)."""
    mx, my, sxx, syy, sxy = mom.stats(k1, k2)
    inputs = (mom.images[k1], mom.images[k2])
    return memo("ssim_yang", inputs, lambda: _ssim_map(mx, my, sxx, syy, sxy, 2e-16, 2e-16)), sxx, syy, sxy


def qc(fused, a, b) -> float:
    """Qc: Cvejic's SSIM-based fusion metric (MEFB ``metricsQc.m`` = Z. Liu ``metricCvejic.m``).

    lambda = sigma_AF / (sigma_AF + sigma_BF); Q = lambda SSIM(A,F) + (1-lambda) SSIM(B,F), set to 0
    where lambda < 0 and 1 where lambda > 1; NaN dropped; mean.  Uses ``ssim_yang`` (7x7 Gaussian
    sigma 1.5, C1 = C2 = 2e-16, 'valid').  **Order-dependent** in (A, B).  Higher is better.
    """
    f, a, b = as_planes(fused, a, b)
    require_min_size(f, 11, "Qc")
    mom = _LocalMoments(_gaussian_window(7), a=a, b=b, f=f)
    s_af, _, _, cov_af = _ssim_yang(mom, "a", "f")
    s_bf, _, _, cov_bf = _ssim_yang(mom, "b", "f")
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = cov_af / (cov_af + cov_bf)
        sim = lam * s_af + (1 - lam) * s_bf
    sim = np.where(lam < 0, 0.0, sim)
    sim = np.where(lam > 1, 1.0, sim)
    sim = sim[~np.isnan(sim)]
    return float(np.mean(sim)) if sim.size else float("nan")


def qy(fused, a, b) -> float:
    """Qy: Yang's SSIM-based fusion metric (MEFB ``metricsQy.m`` = Z. Liu ``metricYang.m``).

    Where SSIM(A,B) >= 0.75: lambda SSIM(A,F) + (1-lambda) SSIM(B,F) with
    lambda = sigma_A^2/(sigma_A^2+sigma_B^2); elsewhere max(SSIM(A,F), SSIM(B,F)); NaN dropped;
    mean.  ``ssim_yang`` windows as in :func:`qc`.  Higher is better.
    """
    f, a, b = as_planes(fused, a, b)
    require_min_size(f, 11, "Qy")
    mom = _LocalMoments(_gaussian_window(7), a=a, b=b, f=f)
    s_ab, var_a, var_b, _ = _ssim_yang(mom, "a", "b")
    s_af = _ssim_yang(mom, "a", "f")[0]
    s_bf = _ssim_yang(mom, "b", "f")[0]
    both = s_ab >= 0.75
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = var_a / (var_a + var_b)
        q = (lam * s_af + (1 - lam) * s_bf) * both + np.maximum(s_af, s_bf) * (~both)
    q = q[~np.isnan(q)]
    return float(np.mean(q)) if q.size else float("nan")


# --------------------------------------------------------------------------------------------
# Piella's indices (MEFB metricsQw.m = Z. Liu metricPeilla.m)

_PREWITT_X = np.array([[1.0, 0.0, -1.0], [1.0, 0.0, -1.0], [1.0, 0.0, -1.0]])
_PREWITT_Y = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])


def _piella_core(f: np.ndarray, a: np.ndarray, b: np.ndarray, weighted: bool) -> float:
    g = _wang_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mom = _LocalMoments(g, a=a, b=b, f=f)
    var_a, var_b = mom.cov("a", "a"), mom.cov("b", "b")
    zero = (var_a + var_b) == 0
    var_a = var_a + 0.5 * zero
    var_b = var_b + 0.5 * zero
    lam = var_a / (var_a + var_b)
    s_fa = _ssim_map(*mom.stats("f", "a"), c1, c2)
    s_fb = _ssim_map(*mom.stats("f", "b"), c1, c2)
    q = lam * s_fa + (1 - lam) * s_fb
    if not weighted:
        return float(np.mean(q))
    cw = np.maximum(var_a, var_b)
    return float(np.sum(cw / np.sum(cw) * q))


def _piella_inputs(fused, a, b, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f, a, b = as_planes(fused, a, b)
    require_min_size(f, 11, metric)
    return f, a, b


def q_piella(fused, a, b) -> float:
    """Piella's fusion quality index Q (``metricPeilla.m`` sw = 1): unweighted mean.  Higher is better.

    Q = mean(lambda SSIM(F,A) + (1-lambda) SSIM(F,B)), lambda = sigma_A^2/(sigma_A^2+sigma_B^2)
    (0.5 added to both where their sum is 0); Wang SSIM 11x11 Gaussian, 'valid'.
    """
    return _piella_core(*_piella_inputs(fused, a, b, "Q_piella"), weighted=False)


def qw(fused, a, b) -> float:
    """Qw: Piella's weighted fusion quality index (``metricPeilla.m`` sw = 2).  Higher is better.

    As :func:`q_piella` but weighted by c = max(sigma_A^2, sigma_B^2) / sum(max(...)).
    """
    return _piella_core(*_piella_inputs(fused, a, b, "Qw"), weighted=True)


def _prewitt_magnitude(x: np.ndarray) -> np.ndarray:
    gx = filter2(_PREWITT_X, x, "same")
    gy = filter2(_PREWITT_Y, x, "same")
    return np.sqrt(gx * gx + gy * gy)


def qe(fused, a, b) -> float:
    """Qe: Piella's edge-dependent index with alpha = 1 -- what MEFB ``metricsQw.m`` reports as "Qw".

    :func:`qw` applied to Prewitt edge-magnitude images (``filter2(..,'same')``, zero padding):
    sqrt(filter2([1 0 -1;1 0 -1;1 0 -1])^2 + filter2([1 1 1;0 0 0;-1 -1 -1])^2).  Higher is better.
    """
    f, a, b = _piella_inputs(fused, a, b, "Qe")
    return _piella_core(_prewitt_magnitude(f), _prewitt_magnitude(a), _prewitt_magnitude(b), weighted=True)
