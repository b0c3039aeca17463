"""The one interface every diffusion prior answers to: :class:`Denoiser`.

A denoiser wraps a network that predicts the noise ε of a DDPM on the linear β schedule
(1e-4 … 0.02, T = 1000) at an *original* timestep t ∈ [0, 999], on images in [-1, 1].  Networks
with learned variance (2·C output channels, as guided-diffusion's ``learn_sigma``) are used
through their first C channels.  Everything about the network -- architecture, channels, the
spatial multiple its down-sampling needs, where the weights came from -- lives in a
:class:`PriorSpec`, never in user flags.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..functional import x0_from_eps
from ..schedule import NUM_TIMESTEPS, alphas_cumprod

LINEAR_SCHEDULE = {"kind": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": NUM_TIMESTEPS}


@dataclass(frozen=True)
class PriorSpec:
    """What a prior is: enough to rebuild it and to say where it came from."""

    format: str  # "adm" | "diffusers" | "dig2dig"
    architecture: dict  # constructor kwargs of the network
    channels: int  # image channels the network denoises (1 = luminance, 3 = RGB)
    spatial_multiple: int  # H and W must be multiples of this
    name: str = ""
    source: str = ""  # file or folder the weights came from
    sha256: str = ""  # of the weights file, when known
    schedule: dict = field(default_factory=lambda: dict(LINEAR_SCHEDULE))
    prediction: str = "eps"
    data_range: tuple[float, float] = (-1.0, 1.0)
    extra: dict = field(default_factory=dict)  # training data, measured numbers, ...
    trained_size: int | None = None  # the image size a fixed-size prior was trained at (ADM-256: 256)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["data_range"] = list(self.data_range)
        return d


@runtime_checkable
class Prior(Protocol):
    """What the sampler and the guidance use of a prior: :class:`Denoiser` and every wrapper of it
    (:class:`TimedDenoiser`, :class:`~dig2dig.prior.execution.ExecutedDenoiser`) implement it."""

    spec: PriorSpec
    alphas_cumprod: np.ndarray

    @property
    def channels(self) -> int: ...

    @property
    def spatial_multiple(self) -> int: ...

    @property
    def num_timesteps(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def eps(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor: ...

    def x0_from_eps(self, x: torch.Tensor, eps: torch.Tensor, t: int, clip: bool = True) -> torch.Tensor: ...

    def x0(self, x: torch.Tensor, t: int, clip: bool = True) -> torch.Tensor: ...


def timestep_batch(t: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """Timesteps as the network takes them: int64, shape (batch,)."""
    t = torch.as_tensor(t, dtype=torch.int64, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"timesteps must be a scalar or have shape ({batch},), got {tuple(t.shape)}")
    return t


class Denoiser:
    """ε- and x̂0-prediction at a DDPM timestep, on a batch of images in [-1, 1].

    ``net(x, t)`` must return a tensor whose first ``spec.channels`` channels are ε.
    """

    def __init__(
        self,
        net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        spec: PriorSpec,
        module: torch.nn.Module | None = None,
    ):
        if spec.schedule.get("kind") != "linear" or spec.schedule != {**LINEAR_SCHEDULE, **spec.schedule}:
            raise ValueError(f"only the linear DDPM schedule {LINEAR_SCHEDULE} is supported, got {spec.schedule}")
        if spec.prediction != "eps":
            raise ValueError(f"the prior must predict eps, this one predicts {spec.prediction!r}")
        self.net = net
        self.spec = spec
        self.module = module if module is not None else (net if isinstance(net, torch.nn.Module) else None)
        self.alphas_cumprod: np.ndarray = alphas_cumprod(spec.schedule["num_timesteps"])

    # --- properties ---------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return self.spec.channels

    @property
    def spatial_multiple(self) -> int:
        return self.spec.spatial_multiple

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def device(self) -> torch.device:
        if self.module is not None:
            for p in self.module.parameters():
                return p.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        if self.module is not None:
            for p in self.module.parameters():
                return p.dtype
        return torch.float32

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Denoiser:
        if self.module is not None:
            self.module.to(device=device, dtype=dtype)
        return self

    # --- prediction ---------------------------------------------------------------------
    @torch.no_grad()
    def eps(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Predicted noise, same shape and dtype as ``x`` (float32 in, float32 out)."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected a (B, {self.channels}, H, W) batch, got {tuple(x.shape)}")
        m = self.spatial_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"H and W must be multiples of {m} for this prior, got {tuple(x.shape[-2:])}; pad first")
        t = timestep_batch(t, x.shape[0], x.device)
        return self.net(x.to(self.dtype), t)[:, : self.channels].to(x.dtype)

    def x0_from_eps(self, x: torch.Tensor, eps: torch.Tensor, t: int, clip: bool = True) -> torch.Tensor:
        """x̂0 = sqrt(1/ᾱ) x - sqrt(1/ᾱ - 1) ε (:func:`dig2dig.functional.x0_from_eps`)."""
        return x0_from_eps(x, eps, float(self.alphas_cumprod[t]), clip)

    def x0(self, x: torch.Tensor, t: int, clip: bool = True) -> torch.Tensor:
        return self.x0_from_eps(x, self.eps(x, t), t, clip)

    def __repr__(self) -> str:
        s = self.spec
        return f"Denoiser({s.format}:{s.name or s.source}, channels={s.channels}, multiple={s.spatial_multiple})"


class WrappedPrior:
    """A :class:`Prior` that changes how ``eps`` runs and takes everything else from the one it wraps."""

    def __init__(self, den: Prior):
        self.den = den
        self.spec = den.spec
        self.alphas_cumprod = den.alphas_cumprod

    @property
    def channels(self) -> int:
        return self.den.channels

    @property
    def spatial_multiple(self) -> int:
        return self.den.spatial_multiple

    @property
    def num_timesteps(self) -> int:
        return self.den.num_timesteps

    @property
    def device(self) -> torch.device:
        return self.den.device

    @property
    def dtype(self) -> torch.dtype:
        return self.den.dtype

    def eps(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        return self.den.eps(x, t)

    def x0_from_eps(self, x: torch.Tensor, eps: torch.Tensor, t: int, clip: bool = True) -> torch.Tensor:
        return self.den.x0_from_eps(x, eps, t, clip)

    def x0(self, x: torch.Tensor, t: int, clip: bool = True) -> torch.Tensor:
        return self.x0_from_eps(x, self.eps(x, t), t, clip)


class TimedDenoiser(WrappedPrior):
    """A :class:`Prior` that counts and times its forwards: the one place dig2dig measures the prior.

    ``sync=True`` waits for the device after each forward so that the times are exact on a GPU; by
    default nothing synchronises (on a CPU the times are exact anyway), so sampling on a GPU is never
    stalled for a number nobody asked for.
    """

    def __init__(self, den: Prior, sync: bool = False):
        super().__init__(den)
        self.sync = sync
        self.calls = 0  # batched network calls
        self.images = 0  # images passed through the network
        self.seconds = 0.0  # wall time in forwards

    def eps(self, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.den.eps(x, t)
        if self.sync and out.device.type == "cuda":
            torch.cuda.synchronize(out.device)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.images += x.shape[0]
        return out

    def __repr__(self) -> str:
        return f"TimedDenoiser({self.den!r})"


def strict_load(module: torch.nn.Module, state: dict[str, Any], source: str) -> None:
    """Load ``state`` into ``module`` or raise a CheckpointError naming every mismatch."""
    from ..errors import CheckpointError

    own = module.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or extra or shape:
        parts = []
        for label, items in (("missing", missing), ("unexpected", extra), ("mis-shaped", shape)):
            if items:
                shown = ", ".join(items[:8]) + (f", … ({len(items) - 8} more)" if len(items) > 8 else "")
                parts.append(f"{len(items)} {label} key(s): {shown}")
        raise CheckpointError(
            f"checkpoint {source} does not fit the architecture it was loaded as -- "
            + "; ".join(parts)
            + ". Check that the file and its spec/config belong together; dig2dig never fills in random weights."
        )
    module.load_state_dict(state, strict=True)
