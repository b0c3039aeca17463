"""Pixel-statistics fusion metrics: SD, MSE, RMSE, PSNR, CC and SCD.

All functions take 2-D planes on the 0..255 scale (``fused`` first, then the sources ``a`` and
``b``) and return a Python float.
"""

from __future__ import annotations

import numpy as np

from ._common import as_plane, as_planes

__all__ = [
    "correlation_coefficient",
    "mse",
    "mse_unit",
    "psnr",
    "psnr_tang",
    "psnr_vifb",
    "rmse_vifb",
    "scd",
    "standard_deviation",
]


def standard_deviation(fused) -> float:
    """SD: population standard deviation of F (ddof = 0), gray levels.  Higher is better.

    Reference: CDDFuse ``Evaluator.SD`` (``np.std``), Tang ``SD_evaluation.m``, VIFB
    ``metricsVariance.m`` (named "Variance" but returns the SD), MEFB ``metricsSD.m``.
    """
    f = as_plane(fused, "fused")
    return float(np.sqrt(np.mean((f - f.mean()) ** 2)))


def mse(fused, a, b) -> float:
    """MSE (CDDFuse): [mean((A-F)^2) + mean((B-F)^2)] / 2 on the **0..255** scale.  Lower is better.

    Reference: CDDFuse ``utils/Evaluator.py`` ``MSE``.  Units: gray levels squared.
    """
    f, a, b = as_planes(fused, a, b)
    return float((np.mean((a - f) ** 2) + np.mean((b - f) ** 2)) / 2.0)


def mse_unit(fused, a, b) -> float:
    """MSE (Tang): the CDDFuse formula on **0..1** images, i.e. ``mse / 255**2``.  Lower is better.

    Reference: Tang ``MSE_evaluation.m`` (inputs ``im2double``-ed).
    """
    return mse(fused, a, b) / 255.0**2


def psnr(fused, a, b) -> float:
    """PSNR (CDDFuse): 10*log10(max(F)^2 / MSE) with the 0..255 :func:`mse`.  dB, higher is better.

    Reference: CDDFuse ``utils/Evaluator.py`` ``PSNR`` -- the peak is the maximum of F, not 255.
    """
    f = as_plane(fused, "fused")
    return float(10.0 * np.log10(f.max() ** 2 / mse(f, a, b)))


def psnr_tang(fused, a, b) -> float:
    """PSNR (Tang): 20*log10(255 / sqrt(MSE_01)), mixing a 0..1 MSE with a 255 peak.  dB, higher is better.

    Reference: Tang ``PSNR_evaluation.m``.  Equals 10*log10(255^2/MSE_255) + 48.13 dB.
    """
    return float(20.0 * np.log10(255.0 / np.sqrt(mse_unit(fused, a, b))))


def _vifb_error(x: np.ndarray, f: np.ndarray) -> float:
    """VIFB's ``mse``: sqrt(sum((X-F)^2)) / (M*N) -- not a mean squared error."""
    return float(np.sqrt(np.sum((x - f) ** 2)) / x.size)


def rmse_vifb(fused, a, b) -> float:
    """RMSE (VIFB/MEFB ``metricsRmse.m``): [e(A,F) + e(B,F)]/2 with e = sqrt(SSE)/(M*N).  Lower is better.

    Note: e is **not** sqrt(mean((X-F)^2)); values are ~0.04-0.3 for 8-bit images.
    """
    f, a, b = as_planes(fused, a, b)
    return (_vifb_error(a, f) + _vifb_error(b, f)) / 2.0


def psnr_vifb(fused, a, b) -> float:
    """PSNR (VIFB/MEFB ``metricsPsnr.m``): 20*log10(255 / sqrt(RMSE_VIFB)).  dB, higher is better."""
    return float(20.0 * np.log10(255.0 / np.sqrt(rmse_vifb(fused, a, b))))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    xd, yd = x - x.mean(), y - y.mean()
    return float(np.sum(xd * yd) / np.sqrt(np.sum(xd * xd) * np.sum(yd * yd)))


def correlation_coefficient(fused, a, b) -> float:
    """CC: [r(A,F) + r(B,F)] / 2 with Pearson's r over all pixels.  Unitless, higher is better.

    Reference: CDDFuse ``Evaluator.CC``, Tang ``CC_evaluation.m``.  NaN if an image is constant.
    """
    f, a, b = as_planes(fused, a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (_pearson(a, f) + _pearson(b, f)) / 2.0


def scd(fused, a, b) -> float:
    """SCD: sum of the correlations of differences, r(F-B, A) + r(F-A, B).  Higher is better.

    Reference: CDDFuse ``Evaluator.SCD``, Tang ``analysis_SCD.m``.  Unitless, roughly [-2, 2].
    """
    f, a, b = as_planes(fused, a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _pearson(a, f - b) + _pearson(b, f - a)
