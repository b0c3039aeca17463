"""The metric registry: one record per (short name, variant).

Each :class:`MetricSpec` says what a number means -- direction, units, whether it needs the
sources, and which toolbox file it reproduces -- and holds the pure function computing it on
2-D planes (``func(fused)`` for no-reference metrics, ``func(fused, a, b)`` for two-source metrics,
``func(fused, sources)`` for MEF-SSIM).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from . import gradient as _g
from . import information as _i
from . import lpips as _l
from . import perceptual as _p
from . import statistical as _s
from . import structural as _st
from ._common import MetricInputError

__all__ = ["REGISTRY", "MetricSpec", "get_metric", "metric_names", "variants"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric variant.

    ``needs_sources``: 0 (uses F only), 2 (uses the first two sources, A then B) or -2 (any
    number >= 2 of sources, passed as a list).
    """

    name: str
    variant: str
    func: Callable
    higher_is_better: bool
    needs_sources: int
    units: str
    reference: str
    description: str

    @property
    def direction(self) -> str:
        """'up' when higher is better, 'down' otherwise (for table headers: an arrow)."""
        return "up" if self.higher_is_better else "down"

    @property
    def arrow(self) -> str:
        return "\u2191" if self.higher_is_better else "\u2193"


REGISTRY: dict[tuple[str, str], MetricSpec] = {}
_DEFAULT_VARIANT: dict[str, str] = {}


def _add(name, variant, func, higher, needs, units, reference, description) -> None:
    REGISTRY[(name, variant)] = MetricSpec(name, variant, func, higher, needs, units, reference, description)
    _DEFAULT_VARIANT.setdefault(name, variant)


CDD = "CDDFuse utils/Evaluator.py"
VIFB = "VIFB metrics/"
MEFB = "MEFB metrics/"
TANG = "Tang Image-Fusion Evaluation/"

# --- information theory -------------------------------------------------------------------------
_add("EN", "round", _i.entropy, True, 0, "bits", f"{CDD} EN; {TANG}entropy()", "Shannon entropy of uint8(round(F))")
_add(
    "EN",
    "floor",
    partial(_i.entropy, rounding="floor"),
    True,
    0,
    "bits",
    f"{VIFB}metricsEntropy.m; {MEFB}metricsEntropy.m",
    "Shannon entropy of floor(F)",
)
_add(
    "MI",
    "cdd",
    _i.mi_nats,
    True,
    2,
    "nats",
    f"{CDD} MI (sklearn mutual_info_score)",
    "MI(F,A)+MI(F,B), distinct values",
)
_add("MI", "tang", _i.mi_bits, True, 2, "bits", f"{TANG}MI_evaluation.m, Hab.m", "MI(F,A)+MI(F,B), 256 bins, log2")
_add("MI", "vifb", _i.mi_vifb, True, 2, "nats", f"{VIFB}metricsMutinf.m", "MI sum after min-max to 0..255 (int16)")
_add("NMI", "mefb", _i.nmi, True, 2, "unitless (0..2)", f"{MEFB}metricsNMI.m", "Hossny's normalised MI, normalize1-ed")
_add(
    "CE",
    "vifb",
    _i.cross_entropy,
    False,
    2,
    "bits",
    f"{VIFB}metricsCross_entropy.m; {MEFB}metricsCross_entropy.m",
    "mean KL divergence D(P_S||P_F) of the two sources",
)
_add(
    "Qncie",
    "mefb",
    _i.qncie,
    True,
    2,
    "unitless (0..1)",
    f"{MEFB}metricsQncie.m (Z. Liu metricWang.m)",
    "nonlinear correlation information entropy",
)
_add(
    "TE",
    "mefb",
    _i.tsallis_te,
    True,
    2,
    "unitless",
    f"{MEFB}metricsTE.m (Z. Liu metricMI.m sw=2)",
    "Cvejic's Tsallis entropy metric, q = 1.85",
)
_add(
    "FMI",
    "none",
    _i.fmi,
    True,
    2,
    "unitless (0..1)",
    f"{MEFB}metricsFMI.m feature='none'; {TANG}analysis_fmi.m",
    "fast-FMI on raw pixels, 3x3 windows",
)
_add(
    "FMI",
    "dct",
    partial(_i.fmi, feature="dct"),
    True,
    2,
    "unitless (0..1)",
    f"{MEFB}metricsFMI.m feature='dct'",
    "fast-FMI on orthonormal DCT coefficients",
)
_add(
    "FMI",
    "gradient",
    partial(_i.fmi, feature="gradient"),
    True,
    2,
    "unitless (0..1)",
    f"{MEFB}metricsFMI.m feature='gradient'",
    "fast-FMI on MATLAB gradient (x derivative)",
)

# --- pixel statistics -----------------------------------------------------------------------------
_add(
    "SD",
    "population",
    _s.standard_deviation,
    True,
    0,
    "gray levels",
    f"{CDD} SD; {VIFB}metricsVariance.m; {MEFB}metricsSD.m; {TANG}SD_evaluation.m",
    "population std of F",
)
_add("MSE", "cdd", _s.mse, False, 2, "gray levels^2 (0..255 scale)", f"{CDD} MSE", "mean of the two MSEs")
_add("MSE", "tang", _s.mse_unit, False, 2, "0..1 scale squared", f"{TANG}MSE_evaluation.m", "mean of two MSEs on 0..1")
_add("RMSE", "vifb", _s.rmse_vifb, False, 2, "gray levels / pixel", f"{VIFB}metricsRmse.m", "mean of sqrt(SSE)/(MN)")
_add("PSNR", "cdd", _s.psnr, True, 2, "dB", f"{CDD} PSNR", "10 log10(max(F)^2 / MSE_255)")
_add("PSNR", "tang", _s.psnr_tang, True, 2, "dB", f"{TANG}PSNR_evaluation.m", "20 log10(255 / sqrt(MSE_01))")
_add(
    "PSNR",
    "vifb",
    _s.psnr_vifb,
    True,
    2,
    "dB",
    f"{VIFB}metricsPsnr.m; {MEFB}metricsPsnr.m",
    "20 log10(255 / sqrt(RMSE_VIFB))",
)
_add(
    "CC",
    "cdd",
    _s.correlation_coefficient,
    True,
    2,
    "unitless (-1..1)",
    f"{CDD} CC; {TANG}CC_evaluation.m",
    "mean Pearson correlation with the sources",
)
_add(
    "SCD",
    "cdd",
    _s.scd,
    True,
    2,
    "unitless (-2..2)",
    f"{CDD} SCD; {TANG}analysis_SCD.m",
    "sum of the correlations of differences",
)

# --- gradients / edges ----------------------------------------------------------------------------
_add(
    "SF",
    "cdd",
    _g.spatial_frequency,
    True,
    0,
    "gray levels",
    f"{CDD} SF; {TANG}SF_evaluation.m",
    "sqrt(mean row-diff^2 + mean col-diff^2)",
)
_add(
    "SF",
    "vifb",
    _g.spatial_frequency_vifb,
    True,
    0,
    "gray levels",
    f"{VIFB}metricsSpatial_frequency.m; {MEFB}metricsSpatial_frequency.m",
    "difference sums divided by MN",
)
_add("AG", "cdd", _g.average_gradient, True, 0, "gray levels", f"{CDD} AG", "mean of sqrt((Gx^2+Gy^2)/2)")
_add(
    "AG",
    "matlab",
    _g.average_gradient_matlab,
    True,
    0,
    "gray levels",
    f"{VIFB}metricsAvg_gradient.m; {MEFB}metricsAvg_gradient.m; {TANG}AG_evaluation.m",
    "sum / ((M-1)(N-1))",
)
_add(
    "EI",
    "vifb",
    _g.edge_intensity,
    True,
    0,
    "gray levels",
    f"{VIFB}metricsEdge_intensity.m; {MEFB}metricsEdge_intensity.m",
    "mean Sobel magnitude (not /8), replicate borders",
)
_add(
    "EI",
    "cv2",
    partial(_g.edge_intensity, border="reflect101"),
    True,
    0,
    "gray levels",
    "cv2.Sobel default borders",
    "mean Sobel magnitude, reflect-101 borders",
)
_add(
    "Qabf",
    "xydeas",
    _g.qabf,
    True,
    2,
    "unitless (0..1)",
    f"{VIFB}metricsQabf.m; {MEFB}metricsQabf.m; {TANG}analysis_Qabf.m; {CDD} Qabf",
    "Xydeas-Petrovic edge transfer",
)
_add(
    "Qabf",
    "kumar",
    _g.qabf_petrovic,
    True,
    2,
    "unitless (0..1)",
    f"{TANG}analysis_nabf.m (QABF output)",
    "Petrovic-weighted QABF of Kumar's code (Td = 2, Lg = 1.5)",
)
_add(
    "Nabf", "kumar", _g.nabf, False, 2, "unitless (0..1)", f"{TANG}analysis_nabf.m", "Kumar's modified fusion artifacts"
)
_add(
    "Nabf1",
    "petrovic",
    _g.nabf1,
    False,
    2,
    "unitless",
    f"{TANG}analysis_nabf.m (NABF1 output)",
    "Petrovic's original fusion artifacts",
)
_add(
    "Labf",
    "petrovic",
    _g.labf,
    False,
    2,
    "unitless (0..1)",
    f"{TANG}analysis_nabf.m (LABF output)",
    "Petrovic's information loss",
)

# --- structural similarity ------------------------------------------------------------------------
_add(
    "SSIM",
    "cdd",
    _st.ssim_cdd,
    True,
    2,
    "unitless (sum, -2..2)",
    f"{CDD} SSIM (skimage 0.19, data_range=2)",
    "skimage SSIM(F,A)+SSIM(F,B), 7x7 uniform, data_range 2",
)
_add(
    "SSIM_min",
    "cdd",
    _st.ssim_min_cdd,
    True,
    2,
    "unitless (-1..1)",
    f"{CDD} SSIM terms (skimage 0.19, data_range=2)",
    "min(SSIM(F,A), SSIM(F,B)): the source whose structure is kept least",
)
_add(
    "SSIM",
    "cdd-dr255",
    partial(_st.ssim_cdd, data_range=255.0),
    True,
    2,
    "unitless (sum, -2..2)",
    f"{CDD} SSIM with data_range=255",
    "skimage SSIM sum, data_range 255",
)
_add(
    "SSIM",
    "vifb",
    _st.ssim_vifb,
    True,
    2,
    "unitless (sum, -2..2)",
    f"{VIFB}metricsSsim.m",
    "Wang SSIM(A,F)+SSIM(B,F), 11x11 Gaussian, valid",
)
_add(
    "SSIM",
    "tang",
    _st.ssim_tang,
    True,
    2,
    "unitless (mean, -1..1)",
    f"{TANG}analysis_Reference.m (MATLAB ssim)",
    "MATLAB ssim mean over sources, DynamicRange 1",
)
_add(
    "MS_SSIM",
    "wang",
    _st.ms_ssim,
    True,
    2,
    "unitless (0..1)",
    "Wang msssim.m (5 scales)",
    "mean of Wang MS-SSIM(F,A) and (F,B)",
)
_add(
    "MEF_SSIM",
    "ma",
    _st.mef_ssim,
    True,
    -2,
    "unitless (0..1)",
    f"{MEFB}mef_ms_ssim.m, mef_ssim.m; {TANG}analysis_ms_ssim.m",
    "Ma-Zeng-Wang multi-scale MEF-SSIM (3 levels)",
)
_add(
    "Qc",
    "cvejic",
    _st.qc,
    True,
    2,
    "unitless",
    f"{MEFB}metricsQc.m (Z. Liu metricCvejic.m)",
    "Cvejic's metric (order-dependent)",
)
_add("Qy", "yang", _st.qy, True, 2, "unitless", f"{MEFB}metricsQy.m (Z. Liu metricYang.m)", "Yang's metric")
_add("Qw", "sw2", _st.qw, True, 2, "unitless", "Z. Liu metricPeilla.m sw=2", "Piella's weighted fusion quality index")
_add(
    "Qw",
    "sw1",
    _st.q_piella,
    True,
    2,
    "unitless",
    "Z. Liu metricPeilla.m sw=1",
    "Piella's fusion quality index (unweighted)",
)
_add(
    "Qe",
    "sw3",
    _st.qe,
    True,
    2,
    "unitless",
    f"{MEFB}metricsQw.m (sw=3, reported as Qw)",
    "Piella's edge-dependent index, alpha = 1",
)

# --- perceptual -----------------------------------------------------------------------------------
_add(
    "VIF",
    "sheikh-sum",
    _p.vif,
    True,
    2,
    "unitless",
    f"{CDD} VIFF; {TANG}vifp_mscale.m",
    "Sheikh's VIFp(A,F) + VIFp(B,F)",
)
_add("VIFF", "han", _p.viff, True, 2, "unitless", f"{MEFB}metricsVIF.m (Han et al. 2013)", "Han's fusion VIF")
_add("Qcb", "chen-blum", _p.qcb, True, 2, "unitless (0..1)", f"{VIFB}metricsQcb.m; {MEFB}metricsQcb.m", "Chen-Blum")
_add("Qcv", "chen-varshney", _p.qcv, False, 2, "unitless", f"{VIFB}metricsQcv.m; {MEFB}metricsQcv.m", "Chen-Varshney")

# --- learned --------------------------------------------------------------------------------------
_add(
    "LPIPS",
    "alex-v0.1",
    _l.lpips_fusion,
    False,
    2,
    "unitless",
    "lpips 0.1.4 LPIPS(net='alex', version='0.1')",
    "mean of LPIPS(F,A) and LPIPS(F,B), inputs in [-1,1]",
)


def metric_names() -> list[str]:
    """All short names, in registry order."""
    return list(_DEFAULT_VARIANT)


def variants(name: str) -> list[str]:
    """The registered variants of ``name`` (the first is the default)."""
    get_metric(name)
    return [v for (n, v) in REGISTRY if n == name]


def get_metric(name: str, variant: str | None = None) -> MetricSpec:
    """The record for ``name`` (and ``variant``, default: the first registered)."""
    if name not in _DEFAULT_VARIANT:
        raise MetricInputError(f"unknown metric {name!r}; valid names: {', '.join(metric_names())}")
    variant = _DEFAULT_VARIANT[name] if variant is None else variant
    if (name, variant) not in REGISTRY:
        have = [v for (n, v) in REGISTRY if n == name]
        raise MetricInputError(f"metric {name!r} has no variant {variant!r}; choose one of {have}")
    return REGISTRY[(name, variant)]


def higher_is_better(name: str) -> bool:
    """Direction of metric ``name`` (the same for all its variants)."""
    return get_metric(name).higher_is_better
