"""Deterministic DDIM sampling with a rectification hook on x̂0 -- as one pure function.

One reverse step from grid timestep t to the next one t' (ᾱ' = 1 after the last step)::

    ε      = prior.eps(x_t, t)                                  # the one network call
    x̂0     = clip(sqrt(1/ᾱ) x_t - sqrt(1/ᾱ - 1) ε, -1, 1)
    x̂0', s = rectify(x̂0, step, s)                              # guidance; s = carried state
    ε'     = (sqrt(1/ᾱ) x_t - x̂0') / sqrt(1/ᾱ - 1)              # ε re-derived from x̂0'
    x_t'   = sqrt(ᾱ') x̂0' + sqrt(1 - ᾱ' - σ²) ε' + σ z         # σ = 0 for η = 0

The function keeps no hidden counters, timers or device synchronisations and writes nothing:
randomness comes only from the explicit generator(s) (used only when η > 0), the guidance state is
passed in and returned, and per-step observers get a :class:`StepOutput` through ``callback``.
Timing is the business of a wrapper around the prior (:class:`dig2dig.prior.TimedDenoiser`).
Coefficients are computed in float64 and rounded to float32 before use, as guided-diffusion does
(:func:`dig2dig.functional.x0_coefficients`), so trajectories match the reference implementations
to float precision.

What the sampler asks of a guidance is declared by :class:`Rectifier`: the rectification itself,
its initial state, and three optional parts -- whether ε is re-derived from the rectified x̂0
(``recompute_eps``), how many grid points a step advances (``advance``: merged steps), and
per-item records for figures and reports (``item_records``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .functional import item_noise, x0_coefficients


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
    steps_taken: int = 0  # reverse steps run (fewer than the grid's points when steps were merged)


class Rectifier:
    """The guidance protocol of :func:`ddim`: ``rectify(x̂0, step, state) -> (x̂0', state)``.

    Subclasses implement :meth:`__call__` and, when they carry state from step to step,
    :meth:`initial_state`; the other parts are optional and default to plain DDIM.
    """

    #: ε for the DDIM update is re-derived from the rectified x̂0' (True) or from the clipped,
    #: un-rectified x̂0 (False: the network's ε wherever the clip is inactive, as CCF's release does)
    recompute_eps: bool = True

    def initial_state(self, x0_hat: torch.Tensor) -> Any:
        """The state before the first step (called with the first step's x̂0)."""
        return None

    def __call__(self, x0_hat: torch.Tensor, step: Step, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def advance(self, step: Step, state: Any) -> int:
        """Grid points this step moves on (after rectification): 1 visits every point; k > 1 merges steps."""
        return 1

    def item_records(self, state: Any, b: int, crop: Callable) -> dict | None:
        """Batch item ``b``'s records after sampling (``crop`` undoes the padding of a map), or None."""
        return None


class FunctionRectifier(Rectifier):
    """A plain function ``(x̂0, step, state) -> (x̂0', state)`` as a :class:`Rectifier`."""

    def __init__(self, fn: Callable[[torch.Tensor, Step, Any], tuple[torch.Tensor, Any]]):
        self.fn = fn

    def __call__(self, x0_hat, step, state):
        return self.fn(x0_hat, step, state)


@torch.no_grad()
def ddim(
    prior,
    x_T: torch.Tensor,
    grid: Sequence[int],
    rectify: Rectifier | Callable | None = None,
    state: Any = None,
    *,
    eta: float = 0.0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    callback: Callable[[StepOutput], None] | None = None,
) -> SampleOutput:
    """Run DDIM over ``grid`` (descending original timesteps) from ``x_T``.

    ``prior`` answers ``eps(x, t)`` and carries ``alphas_cumprod`` (a :class:`~dig2dig.prior.Denoiser`).
    ``rectify`` -- a :class:`Rectifier` or a plain function -- may change x̂0; ``state`` is its state
    (by default ``rectify.initial_state(x̂0)`` at the first step).  With ``recompute_eps = False`` the
    update uses (sqrt(1/ᾱ) x_t - x̂0) / sqrt(1/ᾱ - 1) with the *clipped*, un-rectified x̂0.
    ``advance(step, state) -> k`` lets the guidance merge steps: the step then goes from ``grid[i]``
    straight to ``grid[i + k]`` (never past the last grid point).  ``generator`` -- one per batch
    item, or one for the batch -- is required for η > 0.
    """
    grid = [int(t) for t in grid]
    if not grid or any(a <= b for a, b in zip(grid, grid[1:])):
        raise ValueError(f"grid must be a non-empty strictly descending list of timesteps, got {grid[:8]}…")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if eta > 0 and generator is None:
        raise ValueError("eta > 0 draws noise: pass generator= (one torch.Generator per batch item)")
    if rectify is not None and not isinstance(rectify, Rectifier):
        rectify = FunctionRectifier(rectify)
    ab = prior.alphas_cumprod
    x = x_T
    i = taken = 0
    while i < len(grid):
        t = grid[i]
        t_prev = grid[i + 1] if i + 1 < len(grid) else -1
        a, a_prev = float(ab[t]), (float(ab[t_prev]) if t_prev >= 0 else 1.0)
        c1, c2 = x0_coefficients(a)
        eps = prior.eps(x, t)
        x0_hat = (x * c1 - eps * c2).clamp(-1.0, 1.0)
        step = Step(i, len(grid), t, t_prev, a, a_prev, x, eps)
        x0, nxt = x0_hat, i + 1
        if rectify is not None:
            if i == 0 and state is None:
                state = rectify.initial_state(x0_hat)
            x0, state = rectify(x0_hat, step, state)
            k = int(rectify.advance(step, state))
            if k < 1:
                raise ValueError(f"advance must return a step of at least 1 grid point, got {k}")
            nxt = min(i + k, len(grid))
            if nxt != i + 1:  # a merged step: it lands on a later grid point
                t_prev = grid[nxt] if nxt < len(grid) else -1
                a_prev = float(ab[t_prev]) if t_prev >= 0 else 1.0
                step = replace(step, t_prev=t_prev, alpha_bar_prev=a_prev)
        # ε re-derived from x̂0' (as guided-diffusion's DDIM does from the clipped x̂0) -- or, with
        # recompute_eps=False, from the clipped, un-rectified x̂0
        recompute = rectify is None or rectify.recompute_eps
        eps_used = (x * c1 - (x0 if recompute else x0_hat)) / c2
        sigma = eta * np.sqrt((1 - a_prev) / (1 - a)) * np.sqrt(1 - a / a_prev) if eta > 0 else 0.0
        x_prev = x0 * float(np.float32(np.sqrt(a_prev))) + eps_used * float(
            np.float32(np.sqrt(max(1.0 - a_prev - sigma**2, 0.0)))
        )
        if sigma > 0 and t_prev >= 0:
            x_prev = x_prev + float(np.float32(sigma)) * _noise_like(x, generator)
        if callback is not None:
            callback(StepOutput(step, x0_hat, x0, x_prev, state, next_index=nxt))
        x = x_prev
        i = nxt
        taken += 1
    return SampleOutput(x0=x, state=state, steps_taken=taken)


def _noise_like(x: torch.Tensor, generator) -> torch.Tensor:
    gens = list(generator) if isinstance(generator, (list, tuple)) else None
    if gens is None:
        return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
    if len(gens) != x.shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {x.shape[0]}")
    return torch.cat([torch.randn((1, *x.shape[1:]), generator=g, dtype=torch.float32) for g in gens]).to(
        x.device, x.dtype
    )


def initial_noise(shape: Sequence[int], seeds: Sequence[int], device: str | torch.device = "cpu") -> torch.Tensor:
    """x_T for a batch: item ``i`` is ``randn`` from a CPU generator seeded ``seeds[i]``.

    Drawing per item on the CPU makes a pair's noise independent of its batch and of the device,
    and ``seeds=[3407]`` reproduces ``torch.manual_seed(3407); torch.randn(shape)``.
    """
    b, *rest = shape
    if len(seeds) != b:
        raise ValueError(f"need one seed per batch item: {b} items, {len(seeds)} seeds")
    return item_noise(rest, seeds, device)
