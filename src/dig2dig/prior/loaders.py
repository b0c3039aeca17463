"""Offline loaders that turn weights on disk into a :class:`~dig2dig.prior.base.Denoiser`.

Accepted inputs (nothing is ever downloaded):

* a guided-diffusion / ADM checkpoint, ``.pt``/``.pth`` (a plain state dict, as
  ``256x256_diffusion_uncond.pt``) or ``.safetensors``.  The architecture is read off the
  weights; the attention head layout, which weights cannot show, comes from a spec file beside
  the checkpoint (``<file>.json`` or ``<stem>.json``/``.yaml``: guided-diffusion
  ``create_model`` flags, as in DDFM's ``model_config``) or from the known ADM-256 layout;
* a diffusers ``UNet2DModel`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``),
  or a pipeline folder with such a ``unet/`` and optionally a ``scheduler/`` whose schedule is
  checked;
* a dig2dig prior folder (``spec.json`` + ``weights.safetensors``), the embedded prior's format.

A checkpoint whose keys or shapes do not fit is a hard :class:`~dig2dig.errors.CheckpointError`
that names them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, PriorNotAvailableError
from ..io import file_sha256
from . import embedded
from .base import LINEAR_SCHEDULE, Denoiser, PriorSpec, strict_load

# Head layouts of published ADM checkpoints that the weights alone cannot reveal, keyed by
# (model_channels, channel_mult, attention_ds).
_AdmKey = tuple[int, tuple[float, ...], tuple[int, ...]]
_KNOWN_ADM_HEADS: dict[_AdmKey, dict[str, int]] = {
    (256, (1, 1, 2, 2, 4, 4), (8, 16, 32)): {"num_heads": 4, "num_head_channels": 64},  # 256x256 uncond
    (256, (0.5, 1, 1, 2, 2, 4, 4), (8, 16, 32)): {"num_heads": 4, "num_head_channels": 64},
}
_KNOWN_ADM_SIZES: dict[_AdmKey, int] = {
    (256, (1, 1, 2, 2, 4, 4), (8, 16, 32)): 256,
    (256, (0.5, 1, 1, 2, 2, 4, 4), (8, 16, 32)): 512,
}


def load_prior(
    source: str | Path | None = None,
    *,
    spec: str | Path | dict | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Denoiser:
    """Load a prior from a path (file or folder); ``None`` or ``"embedded"`` -> the shipped prior."""
    device = check_device(device)
    if embedded.is_embedded(source):
        if spec is not None:
            raise ValueError(
                "--prior-config (prior_spec=) describes a checkpoint given with --prior; the embedded "
                "prior has its own spec, so leave it out or give --prior"
            )
        return load_embedded(device=device, dtype=dtype)
    assert source is not None  # None names the embedded prior
    path = Path(source).expanduser()
    if not path.exists():
        raise PriorNotAvailableError(f"prior {str(path)!r} does not exist; give a checkpoint file or a model folder")
    if path.is_dir():
        if (path / "spec.json").is_file():
            den = load_dig2dig_folder(path)
        else:
            den = load_diffusers_folder(path)
    else:
        den = load_adm_checkpoint(path, spec=spec)
    assert den.module is not None  # every loader builds an nn.Module
    den.module.eval()
    return den.to(device=device, dtype=dtype)


def load_embedded(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Denoiser:
    """The prior that ships with the package (:mod:`dig2dig.prior.embedded`)."""
    if not embedded.embedded_available():
        raise PriorNotAvailableError(embedded.NO_EMBEDDED_MESSAGE)
    den = load_dig2dig_folder(embedded.EMBEDDED_DIR)
    assert den.module is not None  # every loader builds an nn.Module
    den.module.eval()
    return den.to(device=device, dtype=dtype)


def check_device(device: str | torch.device | None) -> torch.device:
    """The torch device to run on (None: cuda if available, else cpu), or a ValueError that says what
    this machine has instead."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(
                f"--device {device}: this machine has no CUDA GPU that torch {torch.__version__} can "
                f"use; use --device cpu"
            )
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"--device {device}: there are {n} CUDA device(s), numbered 0 to {n - 1}")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"--device {device}: Apple's MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise ValueError(f"--device {device}: dig2dig runs on cpu, cuda or mps")
    return dev


_CACHE: dict[tuple, Denoiser] = {}


def resolve_prior(prior=None, *, prior_spec=None, device=None) -> Denoiser:
    """A :class:`Denoiser` from a Denoiser, a path, or None (embedded), on ``device`` (default: cuda if
    available); loaded once per process and kept."""
    device = check_device(device)
    if isinstance(prior, Denoiser):
        return prior.to(device)
    source = str(embedded.EMBEDDED_DIR) if embedded.is_embedded(prior) else str(prior)
    key = (source, str(prior_spec), str(device))
    if key not in _CACHE:
        _CACHE[key] = load_prior(prior, spec=prior_spec, device=device)
    return _CACHE[key]


# ------------------------------------------------------------------------------------------
# guided-diffusion / ADM


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    state: object  # whatever the file holds, until checked below
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, not a checkpoint at all, pickle with code, ...
        kind = "safetensors file" if path.suffix == ".safetensors" else "PyTorch checkpoint (.pt/.pth)"
        detail = " ".join(str(e).split())
        if "weights_only" in detail or type(e).__name__ == "UnpicklingError":
            detail = "it holds Python objects other than tensors, which dig2dig never unpickles"
        detail = detail[:160] + ("…" if len(detail) > 160 else "")
        raise CheckpointError(
            f"cannot read {path} as a {kind} ({type(e).__name__}: {detail}); give a guided-diffusion "
            f"checkpoint, a diffusers UNet2DModel folder or a dig2dig prior folder"
        ) from None
    for wrapper in ("state_dict", "model", "ema", "model_ema"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _read_spec_file(path: Path) -> dict:
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise CheckpointError(f"spec {path} is not a text file; give the JSON/YAML create_model flags") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise CheckpointError(
                f"reading {path} needs PyYAML (pip install pyyaml), or give the spec as JSON"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise CheckpointError(f"spec {path} is not valid YAML ({' '.join(str(e).split())[:120]})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckpointError(
                f"spec {path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                f"give the create_model flags as a JSON object"
            ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"spec {path} must be a mapping of architecture flags")
    return data


def _sidecar(path: Path) -> Path | None:
    for cand in (
        path.with_name(path.name + ".json"),
        path.with_suffix(".json"),
        path.with_suffix(".yaml"),
        path.with_suffix(".yml"),
    ):
        if cand.is_file() and cand != path:
            return cand
    return None


def load_adm_checkpoint(path: str | Path, spec: str | Path | dict | None = None) -> Denoiser:
    from .adm import ADMConfig, ADMUNet

    path = Path(path)
    state = _read_state_dict(path)
    if spec is None:
        spec = _sidecar(path)
    flags: dict[str, Any] | None = None
    if spec is not None:
        flags = dict(spec) if isinstance(spec, dict) else _read_spec_file(Path(spec))
        flags = flags.get("create_model_kwargs", flags)
    try:
        inferred = ADMConfig.infer_from_state_dict(state)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if flags is not None:
        try:
            cfg = ADMConfig.from_guided_diffusion_flags(flags)
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"spec for {path} is not usable: {e}") from None
        diffs = [
            f"{k}: spec {getattr(cfg, k)} vs weights {getattr(inferred, k)}"
            for k in (
                "in_channels",
                "model_channels",
                "out_channels",
                "num_res_blocks",
                "attention_ds",
                "channel_mult",
                "use_scale_shift_norm",
                "resblock_updown",
            )
            if getattr(cfg, k) != getattr(inferred, k)
        ]
        if diffs:
            raise CheckpointError(f"checkpoint {path} does not match its spec: " + "; ".join(diffs))
    else:
        key = (inferred.model_channels, inferred.channel_mult, inferred.attention_ds)
        if inferred.attention_ds and key not in _KNOWN_ADM_HEADS:
            raise CheckpointError(
                f"{path}: the attention head layout cannot be read from the weights; put a spec file "
                f"{path.name}.json beside it (guided-diffusion create_model flags with num_heads / "
                f"num_head_channels), pass --prior-config FILE on the command line, or "
                f"prior_spec= from Python"
            )
        cfg = ADMConfig.infer_from_state_dict(state, **_KNOWN_ADM_HEADS.get(key, {}))
    trained = (
        int(flags["image_size"])
        if flags and "image_size" in flags
        else _KNOWN_ADM_SIZES.get((cfg.model_channels, cfg.channel_mult, cfg.attention_ds))
    )
    net = ADMUNet(cfg)
    strict_load(net, state, str(path))
    pspec = PriorSpec(
        format="adm",
        architecture=cfg.to_dict(),
        channels=cfg.in_channels,
        spatial_multiple=cfg.spatial_multiple,
        name=path.stem,
        source=str(path),
        sha256=file_sha256(path),
        trained_size=trained,
    )
    return Denoiser(net, pspec, module=net)


# ------------------------------------------------------------------------------------------
# diffusers


class _DiffusersNet(torch.nn.Module):
    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def load_diffusers_folder(path: str | Path) -> Denoiser:
    path = Path(path)
    root = path
    if not (path / "config.json").is_file() and (path / "unet" / "config.json").is_file():
        path = path / "unet"
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(
            f"{root} is neither a dig2dig prior folder (spec.json) nor a diffusers UNet2DModel folder (config.json)"
        )
    config = json.loads(cfg_file.read_text())
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise CheckpointError(f"{cfg_file}: only diffusers UNet2DModel is supported, got {config.get('_class_name')}")
    if config.get("class_embed_type") or config.get("num_class_embeds"):
        raise CheckpointError(f"{cfg_file}: class-conditional UNets are not supported")
    _check_diffusers_scheduler(root / "scheduler" / "scheduler_config.json")
    weights = [path / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")]
    weights = [w for w in weights if w.is_file()]
    if not weights:
        raise CheckpointError(f"{path} has no diffusion_pytorch_model.safetensors (or .bin)")
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise CheckpointError(
            "loading a diffusers folder needs the diffusers package: pip install 'dig2dig[diffusers]'"
        ) from None
    try:
        unet = UNet2DModel.from_config(config)
    except Exception as e:
        raise CheckpointError(f"{cfg_file}: cannot build UNet2DModel: {e}") from None
    strict_load(unet, _read_state_dict(weights[0]), str(weights[0]))
    in_ch = int(config.get("in_channels", 3))
    n_down = len(config.get("down_block_types", ())) - 1
    spec = PriorSpec(
        format="diffusers",
        architecture={k: v for k, v in config.items() if not k.startswith("_")},
        channels=in_ch,
        spatial_multiple=2 ** max(n_down, 0),
        name=root.name,
        source=str(root),
        sha256=file_sha256(weights[0]),
        trained_size=int(config["sample_size"]) if isinstance(config.get("sample_size"), int) else None,
    )
    net = _DiffusersNet(unet)
    return Denoiser(net, spec, module=net)


def _check_diffusers_scheduler(path: Path) -> None:
    if not path.is_file():
        return
    sc = json.loads(path.read_text())
    want = {
        "beta_schedule": "linear",
        "beta_start": LINEAR_SCHEDULE["beta_start"],
        "beta_end": LINEAR_SCHEDULE["beta_end"],
        "num_train_timesteps": LINEAR_SCHEDULE["num_timesteps"],
        "prediction_type": "epsilon",
    }
    bad = [
        f"{k}={sc[k]!r} (need {v!r})"
        for k, v in want.items()
        if k in sc and (abs(sc[k] - v) > 1e-12 if isinstance(v, float) else sc[k] != v)
    ]
    if bad:
        raise CheckpointError(f"{path}: dig2dig needs an eps-prediction DDPM on the linear schedule; " + ", ".join(bad))


# ------------------------------------------------------------------------------------------
# dig2dig's own folder format (spec.json + weights.safetensors)


_SPEC_KEYS = {"architecture": dict, "channels": int, "spatial_multiple": int}


def _check_spec(raw, where: Path) -> None:
    """The keys a dig2dig prior folder's spec.json must have, with their types."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where} holds a JSON {type(raw).__name__}, not an object of prior settings")
    missing = [k for k in _SPEC_KEYS if k not in raw]
    if missing:
        raise CheckpointError(
            f"{where} has no {', '.join(repr(k) for k in missing)} key; a dig2dig prior folder's "
            f"spec.json names {', '.join(_SPEC_KEYS)} (see `dig2dig prior info` of the embedded "
            f"prior for an example)"
        )
    for k, kind in _SPEC_KEYS.items():
        if not isinstance(raw[k], kind) or isinstance(raw[k], bool):
            raise CheckpointError(
                f"{where}: {k!r} must be a JSON {'object' if kind is dict else 'integer'}, got "
                f"{json.dumps(raw[k])[:60]}"
            )


def load_dig2dig_folder(path: str | Path, expect_sha256: bool = True) -> Denoiser:
    from .registry import build_network

    path = Path(path)
    try:
        raw = json.loads((path / "spec.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path / 'spec.json'}: {e}") from None
    _check_spec(raw, path / "spec.json")
    weights = path / raw.get("weights", "weights.safetensors")
    if not weights.is_file():
        raise CheckpointError(f"{path}: weights file {weights.name} is missing")
    sha = file_sha256(weights)
    if expect_sha256 and raw.get("sha256") and raw["sha256"] != sha:
        raise CheckpointError(f"{weights}: sha256 {sha} does not match the spec's {raw['sha256']}; the file is damaged")
    spec = PriorSpec(
        format=raw.get("format", "dig2dig"),
        architecture=raw["architecture"],
        channels=int(raw["channels"]),
        spatial_multiple=int(raw["spatial_multiple"]),
        name=raw.get("name", path.name),
        source=str(path),
        sha256=sha,
        schedule=raw.get("schedule", dict(LINEAR_SCHEDULE)),
        prediction=raw.get("prediction", "eps"),
        data_range=tuple(raw.get("data_range", (-1.0, 1.0))),
        extra=raw.get("extra", {}),
    )
    net = build_network(spec.format, spec.architecture)
    state = {k: v.float() for k, v in _read_state_dict(weights).items()}
    strict_load(net, state, str(weights))
    return Denoiser(net, spec, module=net)
