"""LPIPS (Zhang et al. 2018), AlexNet v0.1, with weights read from LOCAL files only.

The network is our own torch implementation of ``lpips`` 0.1.4's ``LPIPS(net='alex',
version='0.1')`` (see :mod:`dig2dig.metrics._lpips_net`).  Nothing is downloaded: point
``weights=`` (or the environment variable ``DIG2DIG_LPIPS_WEIGHTS``) at the files.

Accepted weight layouts (``.pth``/``.pt`` read with ``torch.load(weights_only=True)``, or
``.safetensors``), one combined file or several files merged in order:

* the AlexNet trunk as torchvision saves it: ``features.{0,3,6,8,10}.{weight,bias}``
  (``classifier.*`` keys are ignored) -- e.g. ``alexnet-owt-7be5be79.pth``;
* the LPIPS linear heads as ``lpips`` ships them (``weights/v0.1/alex.pth``):
  ``lin{0..4}.model.1.weight`` of shapes (1, C, 1, 1) with C = 64, 192, 384, 256, 256
  (``lin{k}.weight`` is accepted too);
* a full ``lpips.LPIPS`` state dict (``net.slice{1..5}.{i}.{weight,bias}`` + ``lin*`` heads;
  ``scaling_layer.*`` is ignored: its constants are fixed);
* this module's own layout (``net.features.*``, ``lins.{k}.weight``).

Several paths go in a list, or in the environment variable separated by ``os.pathsep``
(``:`` on Linux), e.g. ``DIG2DIG_LPIPS_WEIGHTS=alexnet-owt-7be5be79.pth:alex.pth``.

torch is imported only when LPIPS is used, so ``import dig2dig.metrics`` stays light.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from ._common import MetricInputError

__all__ = ["ENV_VAR", "LPIPSWeightsError", "load_lpips", "lpips_distance", "lpips_fusion"]

ENV_VAR = "DIG2DIG_LPIPS_WEIGHTS"
_TRUNK_LAYERS = (0, 3, 6, 8, 10)
_N_HEADS = 5


class LPIPSWeightsError(MetricInputError):
    """LPIPS weights were not given, not found, or do not have the expected layout."""


def _resolve_paths(weights) -> tuple[str, ...]:
    items: list[str | os.PathLike]
    if weights is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if not env:
            raise LPIPSWeightsError(
                "LPIPS needs local AlexNet + LPIPS-head weights and none were given (nothing is "
                f"downloaded). Fix: --lpips-weights PATHS on the command line, weights='path/to/file' (or a list "
                f"of files) from Python, or set {ENV_VAR}="
                "'alexnet-owt-7be5be79.pth" + os.pathsep + "alex.pth' (torchvision AlexNet trunk + "
                "lpips v0.1 alex heads, or one combined state dict); see dig2dig.metrics.lpips for the layout"
            )
        items = [p for p in env.split(os.pathsep) if p]
    elif isinstance(weights, (str, os.PathLike)):
        items = [weights]
    elif isinstance(weights, Sequence):
        items = list(weights)
    else:
        raise LPIPSWeightsError(f"weights must be a path or a list of paths, got {type(weights).__name__}")
    paths = []
    for p in items:
        path = Path(p).expanduser()
        if not path.is_file():
            raise LPIPSWeightsError(
                f"LPIPS weights file {str(path)!r} does not exist; pass an existing local file "
                f"(--lpips-weights, weights=... or {ENV_VAR})"
            )
        paths.append(str(path.resolve()))
    return tuple(paths)


def _read_state(path: str) -> dict:
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - re-raised with the file name and the fix
            raise LPIPSWeightsError(f"cannot read LPIPS weights from {path!r}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise LPIPSWeightsError(f"{path!r} does not hold a state dict (got {type(state).__name__})")
    return state


_PATTERNS = (
    (re.compile(r"^(?:module\.)?features\.(\d+)\.(weight|bias)$"), "net.features.{0}.{1}"),
    (re.compile(r"^(?:module\.)?net\.slice\d\.(\d+)\.(weight|bias)$"), "net.features.{0}.{1}"),
    (re.compile(r"^(?:module\.)?net\.features\.(\d+)\.(weight|bias)$"), "net.features.{0}.{1}"),
    (re.compile(r"^(?:module\.)?lin(\d)\.model\.1\.weight$"), "lins.{0}.weight"),
    (re.compile(r"^(?:module\.)?lin(\d)\.weight$"), "lins.{0}.weight"),
    (re.compile(r"^(?:module\.)?lins\.(\d)\.weight$"), "lins.{0}.weight"),
)


def _remap(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        for pattern, target in _PATTERNS:
            m = pattern.match(key)
            if m:
                out[target.format(*m.groups())] = value
                break
    return out


@lru_cache(maxsize=4)
def _load_cached(paths: tuple[str, ...]):
    import torch

    from ._lpips_net import LPIPSAlex

    model = LPIPSAlex()
    merged: dict = {}
    for p in paths:
        merged.update(_remap(_read_state(p)))
    expected = {k for k in model.state_dict() if k not in ("shift", "scale")}
    missing = sorted(expected - merged.keys())
    if missing:
        raise LPIPSWeightsError(
            f"LPIPS weights in {list(paths)} lack {len(missing)} tensors, e.g. {missing[:4]}; "
            "give both the torchvision AlexNet trunk (features.*) and the lpips v0.1 heads "
            "(lin0..lin4), in one file or as a list of files"
        )
    target = model.state_dict()
    for key in expected:
        if tuple(merged[key].shape) != tuple(target[key].shape):
            raise LPIPSWeightsError(
                f"LPIPS weight {key!r} has shape {tuple(merged[key].shape)}, expected "
                f"{tuple(target[key].shape)}; these are not AlexNet / lpips-alex v0.1 weights"
            )
    with torch.no_grad():
        model.load_state_dict({**target, **{k: merged[k].float() for k in expected}})
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    return model


def load_lpips(weights=None):
    """The LPIPS AlexNet v0.1 model (torch ``nn.Module``, eval mode) from local weight files.

    ``weights``: a path, a list of paths, or None to use ``$DIG2DIG_LPIPS_WEIGHTS``.  Raises
    :class:`LPIPSWeightsError` (a ValueError) naming the fix when nothing is given or the files
    do not match.  Loaded models are cached per set of files.
    """
    return _load_cached(_resolve_paths(weights))


def _to_tensor(img, name: str):
    import torch

    arr = np.asarray(img)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise MetricInputError(f"{name} has dtype {arr.dtype}; LPIPS needs a real-valued image on the 0..255 scale")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise MetricInputError(f"{name} has shape {arr.shape}; LPIPS takes (H, W) gray or (H, W, 3) RGB")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32) / 255.0)
    return x.permute(2, 0, 1)[None] * 2.0 - 1.0  # [0, 1] -> [-1, 1] (lpips normalize=True)


def lpips_distance(x, y, *, weights=None) -> float:
    """LPIPS(x, y), AlexNet v0.1.  Images (H, W) gray (replicated to 3 channels) or (H, W, 3) RGB on
    the 0..255 scale; they are mapped to [-1, 1] (``lpips`` ``normalize=True``).  Lower is better;
    0 for identical images."""
    import torch

    tx, ty = _to_tensor(x, "x"), _to_tensor(y, "y")
    if tx.shape != ty.shape:
        raise MetricInputError(f"LPIPS images differ in shape: {np.shape(x)} vs {np.shape(y)}; resize first")
    if min(tx.shape[2:]) < 32:
        raise MetricInputError(f"LPIPS (AlexNet) needs images of at least 32x32 pixels, got {tuple(tx.shape[2:])}")
    model = load_lpips(weights)
    with torch.no_grad():
        return float(model(tx, ty)[0])


def lpips_fusion(fused, a, b, *, weights=None) -> float:
    """LPIPS for fusion: [LPIPS(F, A) + LPIPS(F, B)] / 2 (AlexNet v0.1, inputs mapped to [-1, 1]).

    No reference evaluator exists for the diffusion-fusion papers; this follows the metric
    specification (section 3.23): mean over the two sources with ``normalize=True``.  Lower is better.
    """
    return (lpips_distance(fused, a, weights=weights) + lpips_distance(fused, b, weights=weights)) / 2.0
