"""Deterministic DDIM sampling with a rectification hook on x̂0 -- as one pure function.

One reverse step from grid timestep t to the next one t' (ᾱ' = 1 after the last step)::

    ε      = prior.eps(x_t, t)                                  # the one network call
    x̂0     = clip(sqrt(1/ᾱ) x_t - sqrt(1/ᾱ - 1) ε, -1, 1)
    x̂0', s = rectify(x̂0, step, s)                              # guidance; s = carried state
    ε'     = (sqrt(1/ᾱ) x_t - x̂0') / sqrt(1/ᾱ - 1)              # ε re-derived from x̂0'
    x_t'   = sqrt(ᾱ') x̂0' + sqrt(1 - ᾱ' - σ²) ε' + σ z         # σ = 0 for η = 0

The function keeps no hidden counters and writes nothing: randomness comes only from the
explicit generator(s) (used only when η > 0), the guidance state is passed in and returned, and
per-step observers get a :class:`StepOutput` through ``callback``.  Coefficients are computed in
float64 and rounded to float32 before use, as guided-diffusion does, so trajectories match the
reference implementations to float precision.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Step:
    """What a rectifier knows about the current step."""

    index: int  # 0 = first (noisiest) step
    count: int  # number of steps in the grid
    t: int  # original timestep of x_t
    t_prev: int  # timestep reached by this step (-1 after the last)
    alpha_bar: float
    alpha_bar_prev: float
    x_t: torch.Tensor
    eps: torch.Tensor


@dataclass
class StepOutput:
    step: Step
    x0_hat: torch.Tensor  # the prior's clipped estimate
    x0: torch.Tensor  # after rectification
    x_prev: torch.Tensor
    state: Any
    next_index: int = -1  # grid index of x_prev (index + 1 unless steps were merged)


@dataclass
class SampleOutput:
    x0: torch.Tensor  # the final sample (= x̂0' of the last step)
    state: Any
    timings: dict[str, float] = field(default_factory=dict)


Rectifier = Callable[[torch.Tensor, Step, Any], tuple[torch.Tensor, Any]]


def _f32(v: float) -> float:
    return float(np.float32(v))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def ddim(
    prior,
    x_T: torch.Tensor,
    grid: Sequence[int],
    rectify: Rectifier | None = None,
    state: Any = None,
    *,
    eta: float = 0.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    recompute_eps: bool = True,
    advance: Callable[[Step, Any], int] | None = None,
    callback: Callable[[StepOutput], None] | None = None,
) -> SampleOutput:
    """Run DDIM over ``grid`` (descending original timesteps) from ``x_T``.

    ``prior`` is a :class:`~dig2dig.prior.Denoiser`.  ``rectify(x̂0, step, state) -> (x̂0', state)``
    may change x̂0; ``recompute_eps=False`` keeps the ε of the un-rectified x̂0, i.e.
    (sqrt(1/ᾱ) x_t - x̂0) / sqrt(1/ᾱ - 1) with the *clipped* x̂0 -- the network's ε wherever the
    clip is inactive (CCF's release does this).  ``generator`` -- one per batch item, or one for
    the batch -- is required for η > 0.  ``advance(step, state) -> k`` (after rectification) lets
    the guidance merge steps: the step then goes from ``grid[i]`` straight to ``grid[i + k]`` (never
    past the last grid point); by default every grid point is visited.
    Timings: ``prior_s`` (network forwards), ``guidance_s`` (rectify) and ``total_s``.
    """
    grid = [int(t) for t in grid]
    if not grid or any(a <= b for a, b in zip(grid, grid[1:])):
        raise ValueError(f"grid must be a non-empty strictly descending list of timesteps, got {grid[:8]}…")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if eta > 0 and generator is None:
        raise ValueError("eta > 0 draws noise: pass generator= (one torch.Generator per batch item)")
    ab = prior.alphas_cumprod
    x = x_T
    dev = x.device
    t_prior = t_guid = 0.0
    t0 = time.perf_counter()
    i = 0
    while i < len(grid):
        t = grid[i]
        t_prev = grid[i + 1] if i + 1 < len(grid) else -1
        a, a_prev = float(ab[t]), (float(ab[t_prev]) if t_prev >= 0 else 1.0)
        c1, c2 = _f32(np.sqrt(1.0 / a)), _f32(np.sqrt(1.0 / a - 1.0))

        _sync(dev)
        s0 = time.perf_counter()
        eps = prior.eps(x, t)
        _sync(dev)
        t_prior += time.perf_counter() - s0

        x0_hat = (x * c1 - eps * c2).clamp(-1.0, 1.0)
        step = Step(i, len(grid), t, t_prev, a, a_prev, x, eps)
        x0 = x0_hat
        if rectify is not None:
            s0 = time.perf_counter()
            x0, state = rectify(x0_hat, step, state)
            _sync(dev)
            t_guid += time.perf_counter() - s0
        nxt = i + 1
        if advance is not None:
            k = int(advance(step, state))
            if k < 1:
                raise ValueError(f"advance must return a step of at least 1 grid point, got {k}")
            nxt = min(i + k, len(grid))
            if nxt != i + 1:  # a merged step: it lands on a later grid point
                t_prev = grid[nxt] if nxt < len(grid) else -1
                a_prev = float(ab[t_prev]) if t_prev >= 0 else 1.0
                step = replace(step, t_prev=t_prev, alpha_bar_prev=a_prev)
        # ε re-derived from x̂0' (as guided-diffusion's DDIM does from the clipped x̂0) -- or, with
        # recompute_eps=False, from the clipped, un-rectified x̂0
        eps_used = (x * c1 - (x0 if recompute_eps else x0_hat)) / c2
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a)) * np.sqrt(1 - a / a_prev) if eta > 0 else 0.0
        x_prev = x0 * _f32(np.sqrt(a_prev)) + eps_used * _f32(np.sqrt(max(1.0 - a_prev - sigma**2, 0.0)))
        if sigma > 0 and t_prev >= 0:
            x_prev = x_prev + _f32(sigma) * _noise_like(x, generator)
        if callback is not None:
            callback(StepOutput(step, x0_hat, x0, x_prev, state, next_index=nxt))
        x = x_prev
        i = nxt
    _sync(dev)
    return SampleOutput(x0=x, state=state,
                        timings={"prior_s": t_prior, "guidance_s": t_guid, "total_s": time.perf_counter() - t0})


def _noise_like(x: torch.Tensor, generator) -> torch.Tensor:
    gens = list(generator) if isinstance(generator, (list, tuple)) else None
    if gens is None:
        return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
    if len(gens) != x.shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {x.shape[0]}")
    return torch.cat([torch.randn((1, *x.shape[1:]), generator=g, dtype=torch.float32) for g in gens]).to(x.device, x.dtype)


def initial_noise(shape: Sequence[int], seeds: Sequence[int], device: str | torch.device = "cpu") -> torch.Tensor:
    """x_T for a batch: item ``i`` is ``randn`` from a CPU generator seeded ``seeds[i]``.

    Drawing per item on the CPU makes a pair's noise independent of its batch and of the device,
    and ``seeds=[3407]`` reproduces ``torch.manual_seed(3407); torch.randn(shape)``.
    """
    b, *rest = shape
    if len(seeds) != b:
        raise ValueError(f"need one seed per batch item: {b} items, {len(seeds)} seeds")
    items = [torch.randn((1, *rest), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.cat(items).to(device)
