"""Information-theoretic fusion metrics: EN, MI (three conventions), NMI, CE, Qncie, TE and FMI.

All functions take 2-D planes on the 0..255 scale (``fused`` first, then the sources ``a`` and
``b``) and return a Python float.  Histogram metrics index 256 bins by integer gray level.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._common import MetricInputError, as_plane, as_planes, require_integer_levels
from ._matlab import mround, normalize1

__all__ = [
    "cross_entropy",
    "entropy",
    "fmi",
    "mi_bits",
    "mi_nats",
    "mi_vifb",
    "nmi",
    "qncie",
    "tsallis_te",
]


# --------------------------------------------------------------------------------------------
# histogram helpers


def _plogp(p: np.ndarray, log) -> float:
    """-sum p*log(p) over the non-zero entries."""
    p = p[p > 0]
    return float(-np.sum(p * log(p)))


def _joint_counts(x: np.ndarray, y: np.ndarray, nx: int, ny: int) -> np.ndarray:
    """(nx, ny) joint histogram of two integer label arrays (rows indexed by x)."""
    idx = x.ravel() * ny + y.ravel()
    return np.bincount(idx, minlength=nx * ny).reshape(nx, ny).astype(np.float64)


def _labels(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer labels for the distinct values of ``x`` (identity for small non-negative integers)."""
    if x.min() >= 0 and x.max() < 65536 and np.all(x == np.floor(x)):
        lab = x.astype(np.int64)
        return lab, int(lab.max()) + 1
    uniq, inv = np.unique(x.ravel(), return_inverse=True)
    return inv.reshape(x.shape), len(uniq)


def _mutual_info(x: np.ndarray, y: np.ndarray, nx: int, ny: int, log) -> float:
    """H(X) + H(Y) - H(X, Y) from the joint histogram of integer labels."""
    h = _joint_counts(x, y, nx, ny)
    p = h / h.sum()
    return _plogp(p.sum(axis=1), log) + _plogp(p.sum(axis=0), log) - _plogp(p, log)


# --------------------------------------------------------------------------------------------
# EN


def entropy(fused, *, rounding: str = "round") -> float:
    """EN: Shannon entropy (bits) of the 256-bin gray-level histogram of F.  Higher is better.

    Variants (identical for integer-valued F):

    * ``rounding="round"`` -- CDDFuse ``utils/Evaluator.py`` ``EN`` (``uint8(round(F))``, bincount)
      and Tang's MATLAB ``entropy``;
    * ``rounding="floor"`` -- VIFB/MEFB ``metricsEntropy.m`` (histogram of ``floor(F)``).

    Units: bits (maximum 8).  Values outside 0..255 raise ValueError.
    """
    f = as_plane(fused, "fused")
    if rounding == "round":
        levels = np.round(f)
    elif rounding == "floor":
        levels = np.floor(f)
    else:
        raise MetricInputError(f"rounding must be 'round' or 'floor', got {rounding!r}")
    lv = require_integer_levels(levels, "fused", "EN")
    p = np.bincount(lv.ravel(), minlength=256) / lv.size
    return _plogp(p, np.log2)


# --------------------------------------------------------------------------------------------
# MI


def mi_nats(fused, a, b) -> float:
    """MI (CDDFuse): MI(F, A) + MI(F, B) in **nats**, contingency table over distinct values.

    Reference: CDDFuse ``utils/Evaluator.py`` ``MI`` (``sklearn.metrics.mutual_info_score``).
    No binning: every distinct value is its own label (a 256-bin histogram for integer images).
    Higher is better.
    """
    f, a, b = as_planes(fused, a, b)
    lf, nf = _labels(f)
    total = 0.0
    for s in (a, b):
        ls, ns = _labels(s)
        total += max(_mutual_info(lf, ls, nf, ns, np.log), 0.0)  # sklearn clips at 0
    return total


def mi_bits(fused, a, b) -> float:
    """MI (Tang): MI(F, A) + MI(F, B) in **bits** from 256x256 joint histograms of uint8 images.

    Reference: Tang ``MI_evaluation.m`` + ``Hab.m``.  Equals ``mi_nats / ln 2`` for uint8 data.
    Inputs must hold integer gray levels 0..255.  Higher is better.
    """
    f, a, b = as_planes(fused, a, b)
    fi = require_integer_levels(f, "fused", "MI")
    total = 0.0
    for name, s in (("A", a), ("B", b)):
        si = require_integer_levels(s, name, "MI")
        total += _mutual_info(fi, si, 256, 256, np.log2)
    return total


def _vifb_levels(x: np.ndarray) -> np.ndarray:
    """VIFB ``mutinf``: min-max to [0, 1], then ``int16(x*255)`` (MATLAB rounding); 0 if constant."""
    hi, lo = x.max(), x.min()
    if hi != lo:
        x = (x - lo) / (hi - lo)
    else:
        x = np.zeros_like(x)
    return mround(x * 255).astype(np.int64)


def mi_vifb(fused, a, b) -> float:
    """MI (VIFB): MI(A, F) + MI(B, F) in **nats** after min-max scaling each image to 0..255.

    Reference: VIFB ``metrics/metricsMutinf.m`` (``int16`` rounding, 256x256 histogram, natural
    log).  Equals :func:`mi_nats` for uint8 inputs.  Higher is better.
    """
    f, a, b = as_planes(fused, a, b)
    fl = _vifb_levels(f)
    return sum(_mutual_info(_vifb_levels(s), fl, 256, 256, np.log) for s in (a, b))


# --------------------------------------------------------------------------------------------
# NMI, Qncie, TE (MEFB / Z. Liu, all on normalize1-ed images)


def _normalized_levels(x: np.ndarray, name: str, metric: str) -> np.ndarray:
    n = normalize1(x)
    if not np.all(np.isfinite(n)):
        raise MetricInputError(
            f"{metric}: {name} is constant and non-zero, which normalize1 maps to NaN "
            "(the MATLAB original fails the same way); use a non-constant image"
        )
    return n.astype(np.int64)


def nmi(fused, a, b) -> float:
    """NMI (MEFB ``metricsNMI.m``, Hossny's revised MI): bits, in [0, 2].  Higher is better.

    NMI = 2 * [MI(A,F)/(H(A)+H(F)) + MI(B,F)/(H(B)+H(F))] on ``normalize1``-ed images
    (256-bin joint histograms, log2).
    """
    f, a, b = as_planes(fused, a, b)
    fl = _normalized_levels(f, "fused", "NMI")
    total = 0.0
    for name, s in (("A", a), ("B", b)):
        sl = _normalized_levels(s, name, "NMI")
        h = _joint_counts(sl, fl, 256, 256)
        p = h / h.sum()
        hs, hf = _plogp(p.sum(axis=1), np.log2), _plogp(p.sum(axis=0), np.log2)
        mi = hs + hf - _plogp(p, np.log2)
        total += mi / (hs + hf)
    return 2.0 * total


def _ncc(x: np.ndarray, y: np.ndarray) -> float:
    """Z. Liu's ``NCC``: MI of two 0..255 images in units of log2(256)."""
    h = _joint_counts(x, y, 256, 256)
    p = h / h.sum()
    return (_plogp(p.sum(axis=0), np.log2) + _plogp(p.sum(axis=1), np.log2) - _plogp(p, np.log2)) / 8.0


def qncie(fused, a, b) -> float:
    """Qncie: nonlinear correlation information entropy (Wang et al.; MEFB ``metricsQncie.m``).

    The 3x3 matrix of NCC values between A, B and F (``normalize1``-ed, 256 bins) gives
    eigenvalues l_i; Qncie = 1 + sum(l_i * log2(l_i / 3)) / 3 / log2(256).  Unitless, in [0, 1].
    Higher is better.
    """
    f, a, b = as_planes(fused, a, b)
    fl = _normalized_levels(f, "fused", "Qncie")
    al = _normalized_levels(a, "A", "Qncie")
    bl = _normalized_levels(b, "B", "Qncie")
    nab, naf, nbf = _ncc(al, bl), _ncc(al, fl), _ncc(bl, fl)
    r = np.array([[1.0, nab, naf], [nab, 1.0, nbf], [naf, nbf, 1.0]])
    lam = np.linalg.eigvalsh(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        hr = np.sum(lam * np.log2(lam / 3.0) / 3.0)
    return float(1.0 + hr / np.log2(256))


def _tsallis(x: np.ndarray, y: np.ndarray, q: float) -> float:
    """Z. Liu's ``tsallis``: rows of h indexed by x; the original's transposed marginals kept."""
    h = _joint_counts(x, y, 256, 256)
    h = h / h.sum()
    c = h.sum(axis=0)  # column sums, used with the row index i (as in the original)
    r = h.sum(axis=1)  # row sums, used with the column index j
    buff = np.outer(c, r)
    nz = buff != 0
    result = np.sum(h[nz] ** q / buff[nz] ** (q - 1))
    return float((1.0 - result) / (1.0 - q))


def tsallis_te(fused, a, b, q: float = 1.85) -> float:
    """TE: Cvejic's Tsallis-entropy metric, T(A,F) + T(B,F) with q = 1.85 (MEFB ``metricsTE.m``).

    Images are ``normalize1``-ed; the joint histogram has rows indexed by the source.  The
    original code pairs h_ij with (column-sum_i * row-sum_j); that transposition is kept.
    Higher is better.
    """
    f, a, b = as_planes(fused, a, b)
    fl = _normalized_levels(f, "fused", "TE")
    return sum(_tsallis(_normalized_levels(s, n, "TE"), fl, q) for n, s in (("A", a), ("B", b)))


# --------------------------------------------------------------------------------------------
# CE


def cross_entropy(fused, a, b) -> float:
    """CE (VIFB/MEFB ``metricsCross_entropy.m``): mean of the two KL divergences D(P_S || P_F).

    CE = 1/2 * sum_S sum_k P_S(k) log2(P_S(k)/P_F(k)) over bins where both are non-zero; 256-bin
    histograms of integer gray levels.  Units: bits.  Lower is better.
    """
    f, a, b = as_planes(fused, a, b)
    pf = np.bincount(require_integer_levels(f, "fused", "CE").ravel(), minlength=256) / f.size
    total = 0.0
    for name, s in (("A", a), ("B", b)):
        ps = np.bincount(require_integer_levels(s, name, "CE").ravel(), minlength=256) / s.size
        nz = (ps != 0) & (pf != 0)
        total += float(np.sum(ps[nz] * np.log2(ps[nz] / pf[nz])))
    return total / 2.0


# --------------------------------------------------------------------------------------------
# FMI (Haghighat's fast-FMI, fully vectorised over windows)


def _fmi_features(x: np.ndarray, feature: str) -> np.ndarray:
    if feature == "none":
        return x
    if feature == "gradient":  # MATLAB gradient(x) with one output: the x (column) derivative
        return np.gradient(x, axis=1)
    if feature == "dct":
        from scipy.fft import dctn

        return dctn(x, norm="ortho")
    raise MetricInputError(
        f"FMI feature {feature!r} is not implemented; choose 'none', 'gradient' or 'dct' "
        "(the toolboxes' default 'edge' and 'wavelet' are not reproduced)"
    )


def _windows(x: np.ndarray, w: int) -> np.ndarray:
    """All w x w windows, flattened in MATLAB's column-major order: (n_windows, w*w)."""
    v = sliding_window_view(x, (w, w))  # (m-w+1, n-w+1, w, w) [row, col]
    return v.transpose(0, 1, 3, 2).reshape(-1, w * w)


def _minmax_rows(x: np.ndarray) -> np.ndarray:
    """Per-row min-max normalisation; constant rows become all ones (as in the original)."""
    lo = x.min(axis=1, keepdims=True)
    span = x.max(axis=1, keepdims=True) - lo
    const = span[:, 0] == 0
    span[const] = 1.0
    out = (x - lo) / span
    out[const] = 1.0
    return out


def _entropy_bits(p: np.ndarray) -> np.ndarray:
    """Row sums of -p*log2|p|, with 0*log 0 = 0 (MATLAB's real(-p.*log2(p)) for p < 0).

    |p| + 1e-300 equals |p| for every |p| > 1e-284 and turns log(0) into a finite number that is
    then multiplied by 0.
    """
    lg = np.abs(p)
    lg += 1e-300
    np.log2(lg, out=lg)
    return -np.einsum("nk,nk->n", p, lg)


def _rows(a: np.ndarray, ids: np.ndarray | None) -> np.ndarray:
    return a if ids is None else a[ids]


def _fmi_joint_entropy(fcdf, fpdf, xcdf, xpdf, c, degenerate, sd_prod, h_f, h_x, *, lower: bool) -> np.ndarray:
    """Joint entropy (bits) of Nelsen's pdf  w * cells + (1 - w) * u_i v_j  for windows of one sign of c.

    ``cells`` are the masses of the Frechet bound of the joint cdf -- comonotone min(F_i, X_j)
    (``lower=False``, c >= 0) or counter-monotone max(F_i + X_j - 1, 0) (``lower=True``, c < 0);
    w = c / corr(bound) (0 for degenerate windows).  At most 2l - 1 cells are non-zero: the
    segments between the merged, sorted breakpoints of the two cdfs.  The separable part's
    entropy has a closed form, so only those cells need a logarithm.
    """
    n, ll = fcdf.shape
    second = 1.0 - xcdf[:, ::-1] if lower else xcdf  # breakpoints Y_j = 1 - X_j, ascending
    merged = np.concatenate([fcdf, second], axis=1)
    order = np.argsort(merged, axis=1)
    t = np.take(merged.ravel(), order + (np.arange(n) * 2 * ll)[:, None])
    is_f = order < ll
    f_before = np.cumsum(is_f, axis=1, dtype=np.int16) - is_f  # F breakpoints before a position
    s_before = np.arange(2 * ll, dtype=np.int16) - f_before  # source breakpoints before it
    # each (i, j) pair contributes its smaller breakpoint (upper bound) or F_i - Y_j if positive
    opposite = np.where(is_f, s_before, f_before)
    coef = opposite - ll * ~is_f if lower else ll - opposite
    cov = np.einsum("nk,nk->n", t, coef) - fcdf.sum(axis=1) * xcdf.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        weight = np.where(degenerate, 0.0, c / (cov / sd_prod))

    # segment (t[k-1], t[k]] lies in F interval f_before[k] and in source interval s_before[k]
    # (comonotone) or l - s_before[k] (counter-monotone); index l means "outside"
    j_cell = ll - s_before if lower else s_before
    offs = (np.arange(n) * (ll + 1))[:, None]
    upad = np.zeros((n, ll + 1))
    upad[:, :ll] = fpdf
    vpad = np.zeros((n, ll + 1))
    vpad[:, :ll] = xpdf
    u = np.take(upad.ravel(), f_before + offs)
    v = np.take(vpad.ravel(), j_cell + offs)
    mass = np.diff(t, axis=1, prepend=0.0)
    mass *= (f_before < ll) & (j_cell < ll)
    k = 1.0 - weight
    base = k[:, None] * u * v
    full = weight[:, None] * mass + base
    # entropy of k * u_i * v_j over all l x l cells in closed form, then swap in the true cells
    su, sv = fpdf.sum(axis=1), xpdf.sum(axis=1)
    klog = k * np.log2(np.abs(k) + 1e-300)
    h_sep = k * (sv * h_f + su * h_x) - klog * su * sv
    return h_sep - _entropy_bits(base) + _entropy_bits(full)


def _fmi_pass(xw: np.ndarray, fpdf: np.ndarray, fcdf: np.ndarray, fsd: np.ndarray, h_f: np.ndarray) -> np.ndarray:
    """Normalised feature MI between source windows ``xw`` (n, l) and the normalised fused windows.

    Follows the original window by window (min-max, pdf/cdf in column-major order, Pearson c,
    Nelsen's joint pdf with weight c / corr(bound)), vectorised over windows; the l x l joint pdf
    is handled through its at most 2l - 1 non-zero bound cells (see
    :func:`_fmi_joint_entropy`).  Equal to the cell-by-cell sum up to rounding (~1e-15).
    """
    n, ll = xw.shape
    xn = _minmax_rows(xw)
    xpdf = xn / xn.sum(axis=1, keepdims=True)
    xcdf = np.cumsum(xpdf, axis=1)

    # Pearson correlation of the two marginal pdfs, and the pdfs' spreads
    xt = xpdf - xpdf.mean(axis=1, keepdims=True)
    ft = fpdf - fpdf.mean(axis=1, keepdims=True)
    num = np.einsum("ni,ni->n", xt, ft)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.where(num == 0, 0.0, num / np.sqrt(np.einsum("ni,ni->n", xt, xt) * np.einsum("ni,ni->n", ft, ft)))
    idx = np.arange(1, ll + 1, dtype=np.float64)
    e = xpdf @ idx
    with np.errstate(invalid="ignore"):
        xsd = np.sqrt(xpdf @ (idx * idx) - e * e)
    h_x = _entropy_bits(xpdf)
    degenerate = (xsd == 0) | (fsd == 0) | (c == 0)

    h_joint = np.empty(n)
    lower = c < 0
    for is_lower in (False, True):
        ids = np.flatnonzero(lower == is_lower)
        if ids.size == 0:
            continue
        sub = None if ids.size == n else ids
        h_joint[ids] = _fmi_joint_entropy(
            *(_rows(a, sub) for a in (fcdf, fpdf, xcdf, xpdf, c, degenerate, fsd * xsd, h_f, h_x)), lower=is_lower
        )

    mi = h_x + h_f - h_joint
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mi == 0, 0.0, 2.0 * mi / (h_x + h_f))


def _fmi_chunk(xa: np.ndarray, xb: np.ndarray, xf: np.ndarray) -> float:
    """Sum over one chunk of windows of (FMI_AF + FMI_BF) / 2."""
    ll = xf.shape[1]
    idx = np.arange(1, ll + 1, dtype=np.float64)
    fn = _minmax_rows(xf)
    fpdf = fn / fn.sum(axis=1, keepdims=True)
    fcdf = np.cumsum(fpdf, axis=1)
    e = fpdf @ idx
    with np.errstate(invalid="ignore"):
        fsd = np.sqrt(fpdf @ (idx * idx) - e * e)
    h_f = _entropy_bits(fpdf)

    same_a = np.all(xa == xf, axis=1)
    fmi_a = _fmi_pass(xa, fpdf, fcdf, fsd, h_f)
    fmi_a = np.where(same_a, 1.0, fmi_a)
    # the original overwrites F's window by its normalised version unless the A pass
    # short-circuited; the B pass compares against that
    f_seen = np.where(same_a[:, None], xf, fn)
    same_b = np.all(xb == f_seen, axis=1)
    fmi_b = _fmi_pass(xb, fpdf, fcdf, fsd, h_f)
    fmi_b = np.where(same_b, 1.0, fmi_b)
    return float(np.sum((fmi_a + fmi_b) / 2.0))


def fmi(fused, a, b, *, feature: str = "none", window: int = 3, chunk: int = 16384) -> float:
    """FMI: Haghighat's fast feature mutual information, mean over w x w sliding windows.

    Reference: MEFB ``metricsFMI.m`` / Tang ``analysis_fmi.m`` (fast-FMI, Haghighat & Razian 2014).
    ``feature``: 'none' (raw pixels), 'gradient' (MATLAB ``gradient`` x-derivative) or 'dct'
    (orthonormal ``dct2``).  The toolboxes' default 'edge' (MATLAB ``edge``) and 'wavelet' (dmey)
    are not reproduced.  Per window: min-max normalise (constant -> ones), pdf/cdf in column-major
    order, Nelsen's joint pdf from the Frechet bound, FMI_XF = 2*MI/(H_X+H_F) (bits); a window
    identical to F scores 1, and F's window is compared *after* the A pass normalised it (as in the
    original).  FMI = mean over windows of (FMI_AF + FMI_BF)/2.  Unitless, in [0, 1].  Higher is
    better.
    """
    f, a, b = as_planes(fused, a, b)
    if window < 1 or window % 2 == 0:
        raise MetricInputError(f"window must be an odd positive integer, got {window}")
    if min(f.shape) < window:
        raise MetricInputError(f"FMI needs images of at least {window}x{window} pixels, got {f.shape}")
    fa, fb, ff = (_fmi_features(x, feature) for x in (a, b, f))
    wa, wb, wf = (_windows(x, window) for x in (fa, fb, ff))
    starts = range(0, wf.shape[0], chunk)
    # chunks are independent and numpy releases the GIL in the heavy calls (sort, einsum, log):
    # two threads on two cores; the chunk sums are added in order, so the result does not depend
    # on the thread count
    workers = min(2, os.cpu_count() or 1, len(starts))

    def part(s: int) -> float:
        return _fmi_chunk(wa[s : s + chunk], wb[s : s + chunk], wf[s : s + chunk])

    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            sums = list(pool.map(part, starts))
    else:
        sums = [part(s) for s in starts]
    return sum(sums) / wf.shape[0]
