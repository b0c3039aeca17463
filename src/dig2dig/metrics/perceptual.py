"""Perceptual / HVS-based fusion metrics: VIF (Sheikh's VIFp, summed), VIFF (Han et al.),
Qcb (Chen-Blum) and Qcv (Chen-Varshney).

All functions take 2-D planes on the 0..255 scale (``fused`` first, then the sources ``a`` and
``b``) and return a Python float.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft

from ._common import as_planes, require_min_size
from ._matlab import blockwise, filter2, freqspace, fspecial_gaussian, gaussian_1d, normalize1, sep_filter2

__all__ = ["qcb", "qcv", "vif", "vif_pair", "viff"]


# --------------------------------------------------------------------------------------------
# Sheikh & Bovik pixel-domain multiscale VIF, and Han et al.'s VIFF built on the same pyramid


def _vif_scales(refs: list[np.ndarray], dist: np.ndarray, sigma_nsq: float):
    """Per reference and scale (4 scales): the maps (num, den, g) of ``vifp_mscale.m``.

    The distorted image's pyramid and local statistics are shared by all references.
    """
    out: list[list] = [[] for _ in refs]
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        win = gaussian_1d(n, n / 5.0)
        if win is not None:

            def filt(v, win=win):
                return sep_filter2(v, win)
        else:  # fspecial truncated some taps: not separable
            kernel = fspecial_gaussian(n, n / 5.0)

            def filt(v, h=kernel):
                return filter2(h, v, "valid")

        if scale > 1:
            refs = [filt(r)[::2, ::2] for r in refs]
            dist = filt(dist)[::2, ::2]
        mu2 = filt(dist)
        s2 = filt(dist * dist) - mu2 * mu2
        s2[s2 < 0] = 0
        low2 = s2 < 1e-10
        for k, ref in enumerate(refs):
            mu1 = filt(ref)
            s1 = filt(ref * ref) - mu1 * mu1
            s12 = filt(ref * dist) - mu1 * mu2
            s1[s1 < 0] = 0
            g = s12 / (s1 + 1e-10)
            sv = s2 - g * s12
            low1 = s1 < 1e-10
            g[low1] = 0
            sv[low1] = s2[low1]
            s1[low1] = 0
            g[low2] = 0
            sv[low2] = 0
            neg = g < 0
            sv[neg] = s2[neg]
            g[neg] = 0
            sv[sv <= 1e-10] = 1e-10
            num = np.log10(1 + g * g * s1 / (sv + sigma_nsq))
            den = np.log10(1 + s1 / sigma_nsq)
            out[k].append((num, den, g))
    return out


def _check_vif_size(x: np.ndarray, metric: str) -> None:
    # scale 4 needs a 3x3 window after three 'valid' filter + decimate steps
    require_min_size(x, 41, metric)


def vif_pair(ref, dist, *, nan_to_one: bool = True) -> float:
    """Sheikh & Bovik's pixel-domain multiscale VIF, VIFp(ref, dist) (``vifp_mscale.m``).

    sigma_n^2 = 2, 4 scales, Gaussian windows N = 2^(5-s)+1 with std N/5, 'valid' filtering.
    ``nan_to_one`` maps a NaN result (0/0 for flat references) to 1, as CDDFuse does.
    """
    ref, dist = as_planes(ref, dist)
    _check_vif_size(ref, "VIF")
    return _vifp_value(_vif_scales([ref], dist, 2.0)[0], nan_to_one)


def _vifp_value(scales, nan_to_one: bool) -> float:
    num = sum(float(np.sum(s[0])) for s in scales)
    den = sum(float(np.sum(s[1])) for s in scales)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.float64(num) / np.float64(den)
    return 1.0 if (nan_to_one and np.isnan(v)) else float(v)


def vif(fused, a, b, *, nan_to_one: bool = True) -> float:
    """VIF (CDDFuse ``Evaluator.VIFF`` / Tang ``vifp_mscale.m``): VIFp(A, F) + VIFp(B, F).

    A **sum** over sources of Sheikh's pixel-domain VIF (:func:`vif_pair`).  Not Han's VIFF
    (:func:`viff`).  Unitless, higher is better.
    """
    f, a, b = as_planes(fused, a, b)
    _check_vif_size(f, "VIF")
    sa, sb = _vif_scales([a, b], f, 2.0)
    return _vifp_value(sa, nan_to_one) + _vifp_value(sb, nan_to_one)


def viff(fused, a, b) -> float:
    """VIFF: Han, Cai, Cao & Xu's fusion VIF (MEFB/MFIFB ``metricsVIF.m``, reported there as "VIF").

    Sheikh's pyramid with sigma_n^2 = 0.005*255^2; per pixel and scale the source with the smaller
    gain g supplies the VID/VIND maps (ties go to B); F_s = sum(VID + C)/sum(VIND + C), C = 1e-7;
    VIFF = sum_s p_s F_s with p = (1, 0, 0.15, 1)/2.15.  Unitless, typically <= 1; higher is better.
    """
    f, a, b = as_planes(fused, a, b)
    _check_vif_size(f, "VIFF")
    sq, c = 0.005 * 255 * 255, 1e-7
    sa, sb = _vif_scales([a, b], f, sq)
    p = np.array([1.0, 0.0, 0.15, 1.0]) / 2.15
    total = 0.0
    for (num_a, den_a, g_a), (num_b, den_b, g_b), w in zip(sa, sb, p):
        use_a = g_a < g_b
        vid = np.where(use_a, num_a, num_b)
        vind = np.where(use_a, den_a, den_b)
        total += w * (np.sum(vid + c) / np.sum(vind + c))
    return float(total)


# --------------------------------------------------------------------------------------------
# Chen-Blum and Chen-Varshney (Z. Liu's metricChenBlum.m / metricChen.m, via VIFB and MEFB)


def _half_spectrum(response: np.ndarray) -> np.ndarray:
    """A centred (``fftshift``-ed) frequency response laid out for ``rfft2`` output."""
    return np.ascontiguousarray(np.fft.ifftshift(response)[:, : response.shape[1] // 2 + 1])


def _csf_filter(x: np.ndarray, half_response: np.ndarray) -> np.ndarray:
    """``ifft2(ifftshift(fftshift(fft2(x)) .* S))`` for a centred, conjugate-symmetric S (real result).

    MATLAB returns a real array here because the product is conjugate symmetric; so do we.
    ``half_response`` is S from :func:`_half_spectrum`.
    """
    spec = sfft.rfft2(x, workers=-1)
    spec *= half_response
    return sfft.irfft2(spec, s=x.shape, workers=-1)


def _qcb_contrast(x: np.ndarray, g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
    """C' = C^3 / (C^2 + 1e-4) with C = |G1*x / G2*x - 1| (unnormalised 31x31 Gaussians, 'same')."""
    buff = sep_filter2(x, g1, "same")
    buff1 = sep_filter2(x, g2, "same")
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.abs(buff / buff1 - 1)
    c2 = c * c
    return c2 * c / (c2 + 1e-4)


def _unnormalised_gauss_1d(sigma: float) -> np.ndarray:
    """1-D factor of exp(-(x^2+y^2)/(2 sigma^2)) / (2 pi sigma^2) on -15..15."""
    x = np.arange(-15.0, 16.0)
    return np.exp(-(x * x) / (2 * sigma * sigma)) / np.sqrt(2 * np.pi * sigma * sigma)


def _preservation(cx: np.ndarray, cf: np.ndarray) -> np.ndarray:
    """Q = cx/cf where cx < cf, else cf/cx, built as MATLAB's ``a.*mask + b.*(1-mask)`` (Inf*0 -> NaN)."""
    mask = (cx < cf).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (cx / cf) * mask + (cf / cx) * (1 - mask)


def qcb(fused, a, b) -> float:
    """Qcb: Chen-Blum HVS-based metric (VIFB/MEFB ``metricsQcb.m`` = Z. Liu ``metricChenBlum.m``).

    ``normalize1`` all three images; CSF filtering in the frequency domain with
    S(r) = exp(-(r/15.3870)^2) - 0.7622 exp(-(r/1.3456)^2), r from ``freqspace`` scaled by N/30 and
    M/30; local contrast C = |G1*X / G2*X - 1| with unnormalised 31x31 Gaussians (sigma 2 and 4,
    ``filter2 'same'``), C' = C^3/(C^2 + 1e-4); Q_XF = min-ratio of C'_X and C'_F;
    Qcb = mean(lambda_A Q_AF + lambda_B Q_BF), lambda_A = C'_A^2/(C'_A^2 + C'_B^2).
    Unitless, in [0, 1]; higher is better.
    """
    f, a, b = as_planes(fused, a, b)
    m, n = f.shape
    u, v = freqspace((m, n))
    r = np.sqrt((u * (n / 30)) ** 2 + (v * (m / 30)) ** 2)
    csf = _half_spectrum(np.exp(-((r / 15.3870) ** 2)) - 0.7622 * np.exp(-((r / 1.3456) ** 2)))
    g1, g2 = _unnormalised_gauss_1d(2.0), _unnormalised_gauss_1d(4.0)
    ca, cb, cf = (_qcb_contrast(_csf_filter(normalize1(x), csf), g1, g2) for x in (a, b, f))
    qaf = _preservation(ca, cf)
    qbf = _preservation(cb, cf)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam_a = ca * ca / (ca * ca + cb * cb)
        lam_b = cb * cb / (ca * ca + cb * cb)
    return float(np.mean(lam_a * qaf + lam_b * qbf))


_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = np.array([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]])


def qcv(fused, a, b, *, window: int = 16, alpha: float = 5.0) -> float:
    """Qcv: Chen-Varshney HVS-based metric (VIFB/MEFB ``metricsQcv.m`` = Z. Liu ``metricChen.m``).

    ``normalize1`` all three images; block saliency lambda_X = sum over 16x16 blocks of G_X^5
    (Sobel magnitude, ``filter2 'same'``); difference images X - F filtered with the
    Mannos-Sakrison CSF 2.6 (0.0192 + 0.144 r) exp(-(0.144 r)^1.1) (r from ``freqspace`` scaled by
    N/8, M/8); block error = mean of the squared filtered difference (partial blocks zero-padded, as
    ``blkproc`` does).  Qcv = sum(lambda_A D_A + lambda_B D_B)/sum(lambda_A + lambda_B).
    **Lower is better**; typical values 10^2-10^3.
    """
    f, a, b = (normalize1(x) for x in as_planes(fused, a, b))
    m, n = f.shape
    u, v = freqspace((m, n))
    r = np.sqrt((u * (n / 8)) ** 2 + (v * (m / 8)) ** 2)
    csf = _half_spectrum(2.6 * (0.0192 + 0.144 * r) * np.exp(-((0.144 * r) ** 1.1)))
    num: np.ndarray | float = 0.0
    den: np.ndarray | float = 0.0
    for x in (a, b):
        gx, gy = filter2(_SOBEL_X, x, "same"), filter2(_SOBEL_Y, x, "same")
        mag = np.sqrt(gx * gx + gy * gy)
        saliency = blockwise(mag**4 * mag if alpha == 5 else mag**alpha, window, "sum")
        diff = _csf_filter(x - f, csf)
        err = blockwise(diff * diff, window, "mean")
        num = num + saliency * err
        den = den + saliency
    return float(np.sum(num) / np.sum(den))
