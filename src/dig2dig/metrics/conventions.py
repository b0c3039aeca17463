"""Named evaluation conventions: which metric variants a toolbox reports and how it treats colour.

* ``cddfuse`` -- the CDDFuse evaluator (``utils/Evaluator.py`` + ``test_IVF.py``), the convention
  behind DDFM / CCF / Dig2DIG tables.  Every image is reduced to luminance the way
  ``image_read_cv2(path, 'GRAY')`` does it (OpenCV BGR->GRAY on float32, then ``np.round``) and
  kept in float32.  Plus Kumar's Nabf and, on request (``metrics=[...]``), LPIPS (with local
  weights) and every other registered metric on the same luminance planes (EI, CE, NMI, FMI,
  Qncie, TE, RMSE, MS-SSIM, MEF-SSIM, Petrović's Nabf1 and Labf, Qc, Qy, Qw, Qe, VIFF, Qcb, Qcv).
* ``vifb`` -- the VIFB MATLAB toolbox's 13 metrics.  Colour images are scored per RGB channel and
  the channel values averaged; a single-channel source is paired with every channel of F; SF
  treats an RGB image as one M x 3N plane (``[m,n] = size(F)`` on a 3-D array).
* ``mefb`` -- the MEFB (and MFIFB) MATLAB toolbox set.  Per RGB channel like VIFB, except that
  when both sources are single-channel and F is RGB only F's first channel is used (AG uses
  F's unrounded ``rgb2gray``), and MEF-SSIM works on ``rgb2gray`` images.

:func:`score` takes **decoded** images as read from a file: uint8 or uint16 arrays, (H, W) or
(H, W, 3) in RGB order (convert from OpenCV's BGR first).  16-bit images are reduced to 8 bits
(``round(x / 257)``) because all three toolboxes evaluate 8-bit data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from ._cache import shared_results
from ._common import MetricInputError
from ._matlab import rgb2gray_matlab
from .registry import MetricSpec, get_metric, metric_names

__all__ = ["CONVENTIONS", "Convention", "ConventionMetric", "describe", "list_conventions", "list_metrics", "score"]


@dataclass(frozen=True)
class ConventionMetric:
    """A metric as a convention reports it."""

    spec: MetricSpec
    label: str  #: the toolbox's own column name (e.g. MEFB's "Qw" is our Qe)
    colour: str  #: how colour images are reduced for this metric (see the convention)
    default: bool = True  #: computed when ``metrics=None``
    note: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def higher_is_better(self) -> bool:
        return self.spec.higher_is_better


@dataclass(frozen=True)
class Convention:
    name: str
    description: str
    metrics: tuple[ConventionMetric, ...]
    prepare: Callable = field(repr=False)
    compute: Callable = field(repr=False)

    def get(self, name: str) -> ConventionMetric:
        for m in self.metrics:
            if m.name == name:
                return m
        known = [m.name for m in self.metrics]
        if name in metric_names():
            raise MetricInputError(
                f"metric {name!r} is not part of the {self.name!r} convention (it defines {', '.join(known)}); "
                f"choose another convention or call get_metric({name!r}).func from dig2dig.metrics directly"
            )
        raise MetricInputError(f"unknown metric {name!r}; the {self.name!r} convention defines: {', '.join(known)}")


# ------------------------------------------------------------------------------------------------
# input handling


def _decoded(img, name: str) -> np.ndarray:
    """A decoded uint8/uint16 image as float64 0..255 integer levels, (H, W) or (H, W, 3)."""
    if not isinstance(img, np.ndarray):
        raise MetricInputError(f"{name} must be a NumPy array (a decoded image), got {type(img).__name__}")
    if img.dtype not in (np.uint8, np.uint16):
        raise MetricInputError(
            f"{name} has dtype {img.dtype}; score() takes decoded images as read from a file (uint8 or "
            "uint16). Convert float images in [0, 1] with (np.clip(x, 0, 1) * 255).round().astype(np.uint8), "
            "or call the metric functions (0..255 float planes) directly"
        )
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] == 4:
        raise MetricInputError(f"{name} has 4 channels {img.shape}; drop the alpha channel first (img[..., :3])")
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise MetricInputError(f"{name} has shape {img.shape}; expected (H, W) gray or (H, W, 3) RGB")
    if img.dtype == np.uint16:
        return np.round(img.astype(np.float64) / 257.0)
    return img.astype(np.float64)


def _check_inputs(fused, sources, need: int) -> tuple[np.ndarray, list[np.ndarray]]:
    if isinstance(sources, np.ndarray):
        raise MetricInputError(
            "sources must be a list of images (e.g. [ir, vis]), got a single array; wrap it in a list"
        )
    if sources is None:
        sources = []
    f = _decoded(fused, "fused")
    srcs = [_decoded(s, f"sources[{i}]") for i, s in enumerate(sources)]
    for i, s in enumerate(srcs):
        if s.shape[:2] != f.shape[:2]:
            raise MetricInputError(
                f"the fused image is {f.shape[1]}x{f.shape[0]} but source {i + 1} is {s.shape[1]}x{s.shape[0]} "
                "(width x height); fused images must have their sources' size"
            )
    if len(srcs) < need:
        raise MetricInputError(
            f"the requested metrics need at least {need} source images, got {len(srcs)}; pass "
            "sources=[A, B] (for infrared-visible: A = infrared, B = visible)"
        )
    return f, srcs


def _call(spec: MetricSpec, fused, srcs, options: dict) -> float:
    if spec.needs_sources == 0:
        return float(spec.func(fused))
    if spec.needs_sources == -2:
        return float(spec.func(fused, srcs))
    if spec.name == "LPIPS":
        return float(spec.func(fused, srcs[0], srcs[1], weights=options.get("lpips_weights")))
    return float(spec.func(fused, srcs[0], srcs[1]))


# ------------------------------------------------------------------------------------------------
# cddfuse: OpenCV luminance, np.round, float32


def _cdd_gray(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return img.astype(np.float32)
    # image_read_cv2(path, 'GRAY'): float32 BGR -> GRAY (= RGB2GRAY on RGB data), then np.round
    return np.round(cv2.cvtColor(img.astype(np.float32), cv2.COLOR_RGB2GRAY))


def _cdd_prepare(fused, srcs):
    return _cdd_gray(fused), [_cdd_gray(s) for s in srcs]


def _cdd_compute(cm: ConventionMetric, state, options) -> float:
    f, srcs = state
    return _call(cm.spec, f, srcs, options)


# ------------------------------------------------------------------------------------------------
# vifb / mefb: MATLAB per-channel wrappers


class _Planes:
    """An image as the MATLAB wrappers index it: the full array plus its channels as contiguous
    planes, split once per ``score`` call so that every metric sees the same plane objects (and
    can share intermediate results, see :mod:`._cache`)."""

    def __init__(self, img: np.ndarray) -> None:
        self.img = img
        self.channels = [img] if img.ndim == 2 else [np.ascontiguousarray(img[:, :, k]) for k in range(img.shape[2])]
        self._gray: dict[bool, np.ndarray] = {}

    @property
    def is_colour(self) -> bool:
        return self.img.ndim == 3

    def channel(self, k: int) -> np.ndarray:
        """Channel k, or the single plane of a gray image (the wrappers reuse it for every k)."""
        return self.channels[k] if self.is_colour else self.channels[0]

    def gray(self, as_uint8: bool = True) -> np.ndarray:
        """MATLAB ``rgb2gray`` (uint8 path by default); the plane itself for a gray image."""
        if not self.is_colour:
            return self.channels[0]
        if as_uint8 not in self._gray:
            self._gray[as_uint8] = rgb2gray_matlab(self.img, as_uint8=as_uint8)
        return self._gray[as_uint8]


def _matlab_prepare(fused, srcs):
    return _Planes(fused), [_Planes(s) for s in srcs]


def _channel_mean(spec: MetricSpec, f: _Planes, srcs: list[_Planes], options, f_plane=None) -> float:
    """The toolboxes' wrapper loop: score channel k of F against channel k of each source (a gray
    source is reused for every k), then average.  A gray F meets MATLAB-``rgb2gray``-ed sources.
    ``f_plane`` replaces F by one plane (MEFB's gray-source rule)."""
    if f_plane is not None or not f.is_colour:
        plane = f.channels[0] if f_plane is None else f_plane
        return _call(spec, plane, [s.gray() for s in srcs], options)
    values = [_call(spec, f.channels[k], [s.channel(k) for s in srcs], options) for k in range(len(f.channels))]
    return float(np.mean(values))


def _vifb_compute(cm: ConventionMetric, state, options) -> float:
    f, srcs = state
    if cm.colour == "planes-side-by-side" and f.is_colour:
        return _call(cm.spec, np.concatenate(f.channels, axis=1), [s.img for s in srcs], options)
    return _channel_mean(cm.spec, f, srcs, options)


def _mefb_compute(cm: ConventionMetric, state, options) -> float:
    f, srcs = state
    if cm.colour == "rgb2gray":
        return _call(cm.spec, f.gray(), [s.gray() for s in srcs], options)
    if f.is_colour and not any(s.is_colour for s in srcs[:2]):
        # MEFB wrappers: both sources gray and F RGB -> F(:,:,1); AG uses rgb2gray(double F)
        plane = f.gray(as_uint8=False) if cm.colour == "per-channel-ag" else f.channels[0]
        return _channel_mean(cm.spec, f, srcs, options, f_plane=plane)
    return _channel_mean(cm.spec, f, srcs, options)


# ------------------------------------------------------------------------------------------------
# the conventions


def _cm(name, variant, label=None, colour="per-channel", default=True, note=""):
    return ConventionMetric(get_metric(name, variant), label or name, colour, default, note)


_CDD_METRICS = (
    _cm("EN", "round", colour="luminance"),
    _cm("SD", "population", colour="luminance"),
    _cm("SF", "cdd", colour="luminance"),
    _cm("AG", "cdd", colour="luminance"),
    _cm("MI", "cdd", colour="luminance", note="nats"),
    _cm("SCD", "cdd", colour="luminance"),
    _cm("VIF", "sheikh-sum", label="VIFF", colour="luminance", note="Evaluator.VIFF: Sheikh VIFp summed"),
    _cm("Qabf", "xydeas", colour="luminance"),
    _cm("SSIM", "cdd", colour="luminance", note="sum, data_range=2, float32"),
    _cm("CC", "cdd", colour="luminance"),
    _cm("MSE", "cdd", colour="luminance", note="0..255 scale"),
    _cm("PSNR", "cdd", colour="luminance", note="peak max(F)"),
    _cm("Nabf", "kumar", colour="luminance", note="not in the evaluator; Tang analysis_nabf.m on 0..255"),
    _cm(
        "LPIPS",
        "alex-v0.1",
        colour="luminance replicated to 3 channels",
        default=False,
        note="needs local weights (lpips_weights= or DIG2DIG_LPIPS_WEIGHTS)",
    ),
) + tuple(  # on request only: not in the evaluator; computed on the same luminance planes
    _cm(name, variant, colour="luminance", default=False, note="extra: not in the evaluator")
    for name, variant in (
        ("SSIM_min", "cdd"),
        ("EI", "vifb"),
        ("CE", "vifb"),
        ("NMI", "mefb"),
        ("FMI", "none"),
        ("Qncie", "mefb"),
        ("TE", "mefb"),
        ("RMSE", "vifb"),
        ("MS_SSIM", "wang"),
        ("MEF_SSIM", "ma"),
        ("Nabf1", "petrovic"),
        ("Labf", "petrovic"),
        ("Qc", "cvejic"),
        ("Qy", "yang"),
        ("Qw", "sw2"),
        ("Qe", "sw3"),
        ("VIFF", "han"),
        ("Qcb", "chen-blum"),
        ("Qcv", "chen-varshney"),
    )
)

_VIFB_METRICS = (
    _cm("CE", "vifb", label="Cross_entropy"),
    _cm("EN", "floor", label="Entropy"),
    _cm("MI", "vifb", label="Mutinf", note="nats"),
    _cm("PSNR", "vifb", label="Psnr"),
    _cm("AG", "matlab", label="Avg_gradient"),
    _cm("EI", "vifb", label="Edge_intensity", note="whole 3-D array = mean over channels"),
    _cm("Qabf", "xydeas", label="Qabf"),
    _cm("SD", "population", label="Variance", note="VIFB's 'Variance' returns the SD"),
    _cm("SF", "vifb", label="Spatial_frequency", colour="planes-side-by-side"),
    _cm("RMSE", "vifb", label="Rmse"),
    _cm("SSIM", "vifb", label="Ssim", note="sum of two"),
    _cm("Qcb", "chen-blum", label="Qcb"),
    _cm("Qcv", "chen-varshney", label="Qcv"),
)

_MEFB_METRICS = (
    _cm("CE", "vifb", label="Cross_entropy"),
    _cm("EN", "floor", label="Entropy"),
    _cm(
        "FMI",
        "none",
        label="FMI",
        default=False,
        note="feature='none'; MEFB's default feature 'edge' (MATLAB edge()) is not reproduced",
    ),
    _cm("NMI", "mefb", label="NMI"),
    _cm("PSNR", "vifb", label="Psnr"),
    _cm("Qncie", "mefb", label="Qncie"),
    _cm("TE", "mefb", label="TE"),
    _cm("AG", "matlab", label="Avg_gradient", colour="per-channel-ag"),
    _cm("EI", "vifb", label="Edge_intensity"),
    _cm("Qabf", "xydeas", label="Qabf"),
    _cm("SD", "population", label="SD"),
    _cm("SF", "vifb", label="Spatial_frequency"),
    _cm("Qc", "cvejic", label="Qc", note="order-dependent: A = sources[0]"),
    _cm("Qe", "sw3", label="Qw", note="MEFB's 'Qw' is Piella's edge-dependent Qe"),
    _cm("Qy", "yang", label="Qy"),
    _cm("MEF_SSIM", "ma", label="MEF_SSIM", colour="rgb2gray", note="all sources"),
    _cm("Qcb", "chen-blum", label="Qcb"),
    _cm("Qcv", "chen-varshney", label="Qcv"),
    _cm("VIFF", "han", label="VIF", note="MEFB's 'VIF' is Han's VIFF"),
)

CONVENTIONS: dict[str, Convention] = {
    "cddfuse": Convention(
        "cddfuse",
        "CDDFuse utils/Evaluator.py: OpenCV luminance rounded with np.round, float32; sums for MI/SSIM/VIF",
        _CDD_METRICS,
        _cdd_prepare,
        _cdd_compute,
    ),
    "vifb": Convention(
        "vifb",
        "VIFB MATLAB toolbox (metrics/*.m): per-RGB-channel mean, 13 metrics",
        _VIFB_METRICS,
        _matlab_prepare,
        _vifb_compute,
    ),
    "mefb": Convention(
        "mefb",
        "MEFB / MFIFB MATLAB toolbox (metrics/*.m): per-RGB-channel mean, F(:,:,1) for gray sources; Qp omitted",
        _MEFB_METRICS,
        _matlab_prepare,
        _mefb_compute,
    ),
}


def _convention(name: str) -> Convention:
    if name not in CONVENTIONS:
        raise MetricInputError(f"unknown convention {name!r}; choose one of {', '.join(CONVENTIONS)}")
    return CONVENTIONS[name]


def list_conventions() -> list[str]:
    return list(CONVENTIONS)


def list_metrics(convention: str = "cddfuse", *, include_optional: bool = True) -> list[ConventionMetric]:
    """The metrics a convention defines, in its order (``default=False`` ones are computed on request)."""
    conv = _convention(convention)
    return [m for m in conv.metrics if include_optional or m.default]


def describe(convention: str = "cddfuse") -> str:
    """A Markdown table of a convention's metrics: name, toolbox label, direction, units, variant, source."""
    rows = ["| metric | label | better | units | variant | reference |", "|---|---|---|---|---|---|"]
    for m in list_metrics(convention):
        s = m.spec
        extra = f" ({m.note})" if m.note else ""
        rows.append(f"| {s.name} | {m.label} | {s.arrow} | {s.units} | {s.variant}{extra} | {s.reference} |")
    return "\n".join(rows)


def score(
    fused: np.ndarray,
    sources: Sequence[np.ndarray] = (),
    convention: str = "cddfuse",
    metrics: Sequence[str] | str | None = None,
    *,
    lpips_weights=None,
) -> dict[str, float]:
    """Score a fused image against its sources the way a toolbox does.

    ``fused`` and each of ``sources``: decoded uint8/uint16 images, (H, W) or (H, W, 3) **RGB**.
    Two-source metrics use ``sources[0]`` as A and ``sources[1]`` as B (for infrared-visible:
    A = infrared, B = visible); MEF-SSIM uses all sources.  ``metrics``: short names (see
    :func:`list_metrics`); None computes the convention's default set.  Returns
    ``{short_name: value}`` in the convention's order.  ``lpips_weights``: local LPIPS weight
    file(s) for ``LPIPS`` (otherwise ``$DIG2DIG_LPIPS_WEIGHTS``).
    """
    conv = _convention(convention)
    if metrics is None:
        selected = [m for m in conv.metrics if m.default]
    else:
        names = [metrics] if isinstance(metrics, str) else list(metrics)
        if not names:
            raise MetricInputError(f"metrics is empty; pass None for the default {convention!r} set or a list of names")
        selected = [conv.get(n) for n in names]
    need = max((2 if m.spec.needs_sources else 0) for m in selected)
    f, srcs = _check_inputs(fused, sources, need)
    options = {"lpips_weights": lpips_weights}
    with shared_results():
        state = conv.prepare(f, srcs)
        return {m.name: conv.compute(m, state, options) for m in selected}
