"""Objective image-fusion metrics, reproducing the numbers of the common evaluation toolboxes.

Two layers:

* pure functions on 2-D NumPy planes (0..255 scale), one per metric and variant, in
  :mod:`~dig2dig.metrics.information`, :mod:`~dig2dig.metrics.statistical`,
  :mod:`~dig2dig.metrics.gradient`, :mod:`~dig2dig.metrics.structural`,
  :mod:`~dig2dig.metrics.perceptual` and :mod:`~dig2dig.metrics.lpips`, each documented with its
  variant, reference (toolbox + file), direction and units; all indexed by the registry
  (:data:`REGISTRY`, :func:`get_metric`);
* named conventions (``cddfuse``, ``vifb``, ``mefb``) that bundle the variants and the colour
  handling of a toolbox, behind :func:`score`:

>>> from dig2dig.metrics import score, describe
>>> score(fused_rgb_u8, [ir_u8, vis_u8], convention="cddfuse")  # doctest: +SKIP
{'EN': 6.89..., 'SD': 39.3..., ...}
>>> print(describe("vifb"))  # doctest: +SKIP

The metric definitions follow ``shared/metrics_spec.md``.  torch is imported only by LPIPS.
"""

from __future__ import annotations

from ._common import MetricInputError
from .conventions import CONVENTIONS, Convention, ConventionMetric, describe, list_conventions, list_metrics, score
from .gradient import (
    average_gradient,
    average_gradient_matlab,
    edge_intensity,
    labf,
    nabf,
    nabf1,
    petrovic_kumar,
    qabf,
    qabf_petrovic,
    spatial_frequency,
    spatial_frequency_vifb,
)
from .information import cross_entropy, entropy, fmi, mi_bits, mi_nats, mi_vifb, nmi, qncie, tsallis_te
from .lpips import LPIPSWeightsError, load_lpips, lpips_distance, lpips_fusion
from .perceptual import qcb, qcv, vif, vif_pair, viff
from .registry import REGISTRY, MetricSpec, get_metric, higher_is_better, metric_names, variants
from .statistical import (
    correlation_coefficient,
    mse,
    mse_unit,
    psnr,
    psnr_tang,
    psnr_vifb,
    rmse_vifb,
    scd,
    standard_deviation,
)
from .structural import (
    mef_ssim,
    ms_ssim,
    ms_ssim_pair,
    q_piella,
    qc,
    qe,
    qw,
    qy,
    ssim_cdd,
    ssim_matlab,
    ssim_min_cdd,
    ssim_skimage,
    ssim_tang,
    ssim_vifb,
    ssim_wang,
)

__all__ = [
    "CONVENTIONS",
    "REGISTRY",
    "Convention",
    "ConventionMetric",
    "LPIPSWeightsError",
    "MetricInputError",
    "MetricSpec",
    "average_gradient",
    "average_gradient_matlab",
    "correlation_coefficient",
    "cross_entropy",
    "describe",
    "edge_intensity",
    "entropy",
    "fmi",
    "get_metric",
    "higher_is_better",
    "labf",
    "list_conventions",
    "list_metrics",
    "load_lpips",
    "lpips_distance",
    "lpips_fusion",
    "mef_ssim",
    "metric_names",
    "mi_bits",
    "mi_nats",
    "mi_vifb",
    "ms_ssim",
    "ms_ssim_pair",
    "mse",
    "mse_unit",
    "nabf",
    "nabf1",
    "nmi",
    "petrovic_kumar",
    "psnr",
    "psnr_tang",
    "psnr_vifb",
    "q_piella",
    "qabf",
    "qabf_petrovic",
    "qc",
    "qcb",
    "qcv",
    "qe",
    "qncie",
    "qw",
    "qy",
    "rmse_vifb",
    "scd",
    "score",
    "spatial_frequency",
    "spatial_frequency_vifb",
    "ssim_cdd",
    "ssim_matlab",
    "ssim_min_cdd",
    "ssim_skimage",
    "ssim_tang",
    "ssim_vifb",
    "ssim_wang",
    "standard_deviation",
    "tsallis_te",
    "variants",
    "vif",
    "vif_pair",
    "viff",
]
