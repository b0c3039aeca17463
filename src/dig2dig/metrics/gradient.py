"""Gradient- and edge-based fusion metrics: SF, AG, EI, Qabf and the Petrovic/Kumar family
(Nabf, Nabf1, Labf and Petrovic-weighted Qabf).

All functions take 2-D planes on the 0..255 scale (``fused`` first, then the sources ``a`` and
``b``) and return a Python float.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ._common import MetricInputError, as_plane, as_planes
from ._matlab import conv2_same, imfilter_replicate, matlab_gradient

__all__ = [
    "PetrovicKumar",
    "average_gradient",
    "average_gradient_matlab",
    "edge_intensity",
    "labf",
    "nabf",
    "nabf1",
    "petrovic_kumar",
    "qabf",
    "qabf_petrovic",
    "spatial_frequency",
    "spatial_frequency_vifb",
]

_SOBEL = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])  # fspecial('sobel')


# --------------------------------------------------------------------------------------------
# SF, AG, EI


def spatial_frequency(fused) -> float:
    """SF (CDDFuse/Tang): sqrt(mean of squared row differences + mean of squared column differences).

    Each mean runs over its own difference array (M x (N-1) and (M-1) x N).  Reference: CDDFuse
    ``Evaluator.SF``, Tang ``SF_evaluation.m``.  Gray levels, higher is better.
    """
    f = as_plane(fused, "fused")
    return float(np.sqrt(np.mean(np.diff(f, axis=1) ** 2) + np.mean(np.diff(f, axis=0) ** 2)))


def spatial_frequency_vifb(fused) -> float:
    """SF (VIFB/MEFB ``metricsSpatial_frequency.m``): both squared-difference sums divided by M*N.

    Slightly smaller than :func:`spatial_frequency`.  (VIFB applies it to an RGB image as one
    M x 3N plane; :func:`dig2dig.metrics.score` reproduces that.)  Gray levels, higher is better.
    """
    f = as_plane(fused, "fused")
    rf = np.sum(np.diff(f, axis=1) ** 2) / f.size
    cf = np.sum(np.diff(f, axis=0) ** 2) / f.size
    return float(np.sqrt(rf + cf))


def _ag_map(f: np.ndarray) -> np.ndarray:
    gx, gy = matlab_gradient(f)
    return np.sqrt((gx * gx + gy * gy) / 2.0)


def average_gradient(fused) -> float:
    """AG (CDDFuse): mean over all M*N pixels of sqrt((Gx^2 + Gy^2)/2), MATLAB-``gradient`` differences.

    Reference: CDDFuse ``Evaluator.AG``.  Gray levels per pixel, higher is better.
    """
    f = as_plane(fused, "fused")
    if min(f.shape) < 2:
        raise MetricInputError(f"AG needs at least 2x2 pixels, got {f.shape}")
    return float(np.mean(_ag_map(f)))


def average_gradient_matlab(fused) -> float:
    """AG (Tang/VIFB/MEFB ``metricsAvg_gradient.m``): sum of the AG map divided by (M-1)(N-1).

    Equals :func:`average_gradient` * M*N/((M-1)(N-1)).  Higher is better.
    """
    f = as_plane(fused, "fused")
    if min(f.shape) < 2:
        raise MetricInputError(f"AG needs at least 2x2 pixels, got {f.shape}")
    m, n = f.shape
    return float(np.sum(_ag_map(f)) / ((m - 1) * (n - 1)))


def edge_intensity(fused, *, border: str = "replicate") -> float:
    """EI (VIFB/MEFB ``metricsEdge_intensity.m``): mean Sobel magnitude, kernel **not** divided by 8.

    gx = imfilter(F, fspecial('sobel'), border), gy with the transposed kernel; EI = mean of
    sqrt(gx^2 + gy^2).  ``border='replicate'`` is the toolbox (and ``scipy.ndimage.sobel``) value;
    ``'reflect101'`` is what ``cv2.Sobel`` gives by default.  Gray levels, higher is better.
    """
    f = as_plane(fused, "fused")
    if border == "replicate":
        gx = imfilter_replicate(f, _SOBEL)
        gy = imfilter_replicate(f, _SOBEL.T)
    elif border == "reflect101":
        fc = np.ascontiguousarray(f)
        gx = cv2.filter2D(fc, cv2.CV_64F, _SOBEL, borderType=cv2.BORDER_REFLECT_101)
        gy = cv2.filter2D(fc, cv2.CV_64F, _SOBEL.T, borderType=cv2.BORDER_REFLECT_101)
    else:
        raise MetricInputError(f"border must be 'replicate' or 'reflect101', got {border!r}")
    return float(np.mean(np.sqrt(gx * gx + gy * gy)))


# --------------------------------------------------------------------------------------------
# Qabf (Xydeas-Petrovic, R. Hong's code used by VIFB/MEFB/Tang/CDDFuse)

_H1 = _SOBEL  # y response
_H3 = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])  # x response


def _qabf_edges(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sx = conv2_same(x, _H3)
    sy = conv2_same(x, _H1)
    g = np.sqrt(sx * sx + sy * sy)
    zero = sx == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(zero, np.pi / 2, np.arctan(sy / np.where(zero, 1.0, sx)))
    return g, alpha


def _qabf_preservation(g_x, a_x, g_f, a_f) -> np.ndarray:
    tg, kg, dg, ta, ka, da = 0.9994, -15.0, 0.5, 0.9879, -22.0, 0.8
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.minimum(g_x, g_f) / np.maximum(g_x, g_f)
    equal = g_x == g_f
    rel[equal] = g_f[equal]  # the original's quirk: G = g_F (not 1) where g_X == g_F
    orient = 1.0 - np.abs(a_x - a_f) / (np.pi / 2)
    return tg / (1.0 + np.exp(kg * (rel - dg))) * (ta / (1.0 + np.exp(ka * (orient - da))))


def qabf(fused, a, b) -> float:
    """Qabf: Xydeas-Petrovic gradient-based edge-information transfer.  Unitless [0, 1], higher is better.

    Reference: VIFB/MEFB ``metricsQabf.m``, Tang ``analysis_Qabf.m`` (R. Hong's code) and its 1:1
    port CDDFuse ``Evaluator.Qabf``.  Un-normalised Sobel by ``conv2(..,'same')`` (zero padding),
    alpha = atan(Sy/Sx) (pi/2 where Sx == 0), constants Tg 0.9994, kg -15, Dg 0.5, Ta 0.9879,
    ka -22, Da 0.8, L = 1, and the original's quirk G = g_F where g_X == g_F.
    Qabf = sum(Q_AF g_A + Q_BF g_B) / sum(g_A + g_B).
    """
    f, a, b = as_planes(fused, a, b)
    gf, af = _qabf_edges(f)
    ga, aa = _qabf_edges(a)
    gb, ab = _qabf_edges(b)
    qaf = _qabf_preservation(ga, aa, gf, af)
    qbf = _qabf_preservation(gb, ab, gf, af)
    return float(np.sum(qaf * ga + qbf * gb) / np.sum(ga + gb))


# --------------------------------------------------------------------------------------------
# Petrovic metrics as modified by B. K. Shreyamsha Kumar (Tang analysis_nabf.m)

_KUMAR_V = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
_KUMAR_H = np.array([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]) / 8.0


def _kumar_edges(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel/8 on a mirror-extended image (``per_extn_im_fn``: no edge repetition) -> (g, alpha)."""
    ext = np.ascontiguousarray(np.pad(x, 1, mode="reflect"))
    gv = cv2.filter2D(ext, cv2.CV_64F, _KUMAR_V)[1:-1, 1:-1]
    gh = cv2.filter2D(ext, cv2.CV_64F, _KUMAR_H)[1:-1, 1:-1]
    g = np.sqrt(gh * gh + gv * gv)
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where((gv == 0) & (gh == 0), 0.0, np.arctan(gv / gh))  # gh == 0 -> +-pi/2
    return g, alpha


def _kumar_q(g_x, a_x, g_f, a_f) -> np.ndarray:
    nrg, kg, sg, nra, ka, sa = 0.9999, 19.0, 0.5, 0.9995, 22.0, 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where((g_x == 0) | (g_f == 0), 0.0, np.where(g_x > g_f, g_f / g_x, g_x / g_f))
    orient = np.abs(np.abs(a_x - a_f) - np.pi / 2) * 2 / np.pi
    qg = nrg / (1.0 + np.exp(-kg * (rel - sg)))
    qa = nra / (1.0 + np.exp(-ka * (orient - sa)))
    return np.sqrt(qg * qa)


@dataclass(frozen=True)
class PetrovicKumar:
    """All outputs of Kumar's ``objective_fusion_perform_fn`` (Tang ``analysis_nabf.m``)."""

    qabf: float  #: Petrovic-weighted QABF (Td = 2, Lg = 1.5) -- not the VIFB Qabf
    labf: float  #: information loss
    nabf1: float  #: Petrovic's original fusion-artifact measure
    nabf: float  #: Kumar's modified fusion-artifact measure (the "Nabf" papers report)


def petrovic_kumar(fused, a, b) -> PetrovicKumar:
    """Petrovic's objective fusion measures with Kumar's modified artifact term.

    Reference: Tang ``analysis_nabf.m`` + ``sobel_fn.m`` + ``per_extn_im_fn.m`` (= Kumar's
    ``objective_fusion_perform_fn.m``, shipped in VIFB ``methods/CBF/``).  Sobel/8 gradients on a
    mirror extension, Td = 2, wt_min = 0.001, Lg = 1.5, Nrg 0.9999, kg 19, sigma_g 0.5, Nra 0.9995,
    ka 22, sigma_a 0.5.  The gradient threshold Td makes the values scale-dependent: the test
    vectors and CDDFuse-style evaluations use the 0..255 scale.
    """
    f, a, b = as_planes(fused, a, b)
    gf, af = _kumar_edges(f)
    ga, aa = _kumar_edges(a)
    gb, ab = _kumar_edges(b)
    qaf = _kumar_q(ga, aa, gf, af)
    qbf = _kumar_q(gb, ab, gf, af)
    td, wt_min, lg = 2.0, 0.001, 1.5
    wa = np.where(ga >= td, ga**lg, wt_min)
    wb = np.where(gb >= td, gb**lg, wt_min)
    wsum = np.sum(wa + wb)
    artifact = (gf > ga) & (gf > gb)
    return PetrovicKumar(
        qabf=float(np.sum(qaf * wa + qbf * wb) / wsum),
        labf=float(np.sum(np.where(artifact, 0.0, (1 - qaf) * wa + (1 - qbf) * wb)) / wsum),
        nabf1=float(np.sum(np.where(artifact, (2 - qaf - qbf) * (wa + wb), 0.0)) / wsum),
        nabf=float(np.sum(np.where(artifact, (1 - qaf) * wa + (1 - qbf) * wb, 0.0)) / wsum),
    )


def nabf(fused, a, b) -> float:
    """Nabf (Kumar's modified fusion artifacts; Tang ``analysis_nabf.m``).  Unitless, lower is better.

    NABF = sum[1{g_F > g_A and g_F > g_B} ((1-Q_AF) w_A + (1-Q_BF) w_B)] / sum(w_A + w_B).
    See :func:`petrovic_kumar`.
    """
    return petrovic_kumar(fused, a, b).nabf


def nabf1(fused, a, b) -> float:
    """Nabf1 (Petrovic's original fusion-artifact measure, from Kumar's code).  Lower is better."""
    return petrovic_kumar(fused, a, b).nabf1


def labf(fused, a, b) -> float:
    """Labf (Petrovic's information-loss measure, from Kumar's code).  Lower is better."""
    return petrovic_kumar(fused, a, b).labf


def qabf_petrovic(fused, a, b) -> float:
    """QABF as returned by Kumar's code (Petrovic weights Td = 2, Lg = 1.5).  Higher is better.

    Not the VIFB/CDDFuse :func:`qabf` (0.697 vs 0.399 on the ``ramps64`` test vector).
    """
    return petrovic_kumar(fused, a, b).qabf
