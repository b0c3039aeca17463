"""Noise schedule and timestep grids (pure functions, NumPy only).

Every prior in dig2dig is a DDPM on the linear beta schedule of Ho et al. (beta from 1e-4 to 0.02
over T = 1000 steps).  A *grid* is the descending list of original timesteps a sampler visits,
e.g. ``[999, 888, ..., 111, 0]`` for 10 uniformly respaced steps.

Grids come in three flavours:

* ``uniform_grid(n)`` -- guided-diffusion's ``space_timesteps(T, n)``: the points are
  ``round(i * (T - 1) / (n - 1))``, which is what DDFM and CCF sample with.
* ``power_grid(n, power)`` -- non-uniform: ``t_i = (T - 1) * (i / (n - 1)) ** power``.  With
  ``power > 1`` the steps are small near t = 0 (low noise) and large near t = T - 1 (high noise),
  the shape Dig2DIG's DIG-N schedules use.
* an explicit list given by the user (validated by ``make_grid``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NUM_TIMESTEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02


def linear_betas(num_timesteps: int = NUM_TIMESTEPS) -> np.ndarray:
    """The linear beta schedule (float64), scaled like guided-diffusion for T != 1000."""
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * BETA_START, scale * BETA_END, num_timesteps, dtype=np.float64)


def alphas_cumprod(num_timesteps: int = NUM_TIMESTEPS) -> np.ndarray:
    """ᾱ_t = prod_{s<=t} (1 - beta_s), float64, indexed by the original timestep."""
    return np.cumprod(1.0 - linear_betas(num_timesteps))


def space_timesteps(num_timesteps: int, section_counts: int | str | Sequence[int]) -> list[int]:
    """guided-diffusion's respacing rule, returned as an ascending list.

    ``section_counts`` splits [0, T) into equal sections and takes that many evenly strided
    (rounded) points from each; ``"ddimN"`` asks for the fixed integer stride of the DDIM paper.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim") :])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"cannot make exactly {desired} steps from {num_timesteps} with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    elif isinstance(section_counts, int):
        section_counts = [section_counts]
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if count < 1 or size < count:
            raise ValueError(f"cannot divide a section of {size} timesteps into {count} steps")
        spacing = 1.0 if count <= 1 else (size - 1) / (count - 1)
        steps += [start + round(k * spacing) for k in range(count)]
        start += size
    return sorted(set(steps))


def uniform_grid(steps: int, num_timesteps: int = NUM_TIMESTEPS) -> list[int]:
    """Descending uniform grid, identical to the respacing DDFM/CCF use."""
    _check_steps(steps, num_timesteps)
    return space_timesteps(num_timesteps, steps)[::-1]


def power_grid(steps: int, power: float = 2.0, num_timesteps: int = NUM_TIMESTEPS) -> list[int]:
    """Descending non-uniform grid ``t_i = (T-1) (i/(n-1))**power`` (distinct integers).

    ``power = 1`` is (almost) uniform; ``power > 1`` takes big steps at high noise and small ones
    at low noise.  Collisions after rounding are resolved by nudging points apart, so the grid
    always has exactly ``steps`` distinct timesteps from T-1 down to 0.
    """
    _check_steps(steps, num_timesteps)
    if not power > 0:
        raise ValueError(f"power must be > 0, got {power}")
    if steps == 1:
        return [num_timesteps - 1]
    u = np.linspace(0.0, 1.0, steps) ** power
    pts = np.round(u * (num_timesteps - 1)).astype(int)
    for i in range(1, steps):  # make strictly increasing from the low-noise end
        pts[i] = max(pts[i], pts[i - 1] + 1)
    pts[-1] = num_timesteps - 1  # keep the top at T-1 ...
    for i in range(steps - 2, -1, -1):  # ... and the points below it distinct
        pts[i] = min(pts[i], pts[i + 1] - 1)
    return [int(p) for p in pts[::-1]]


def make_grid(spec: int | str | Sequence[int], num_timesteps: int = NUM_TIMESTEPS) -> list[int]:
    """Turn a user grid spec into a validated descending grid.

    * an int ``n`` -> ``uniform_grid(n)``
    * ``"uniform:N"`` or ``"power:N:P"`` (P defaults to 2)
    * a comma-separated string or a sequence of timesteps -> that list, sorted descending
    """
    if isinstance(spec, (bool, float, np.floating)) or not isinstance(
        spec, (int, np.integer, str, Sequence, np.ndarray)
    ):
        raise ValueError(
            f"steps={spec!r}: give a step count (a whole number, not {type(spec).__name__}), "
            f"'uniform:N', 'power:N:P' or a list like '999,500,0'"
        )
    if isinstance(spec, (int, np.integer)):
        return uniform_grid(int(spec), num_timesteps)
    if isinstance(spec, str):
        text = spec.strip()
        bad = ValueError(
            f"bad steps {spec!r}: use a step count from 1 to {num_timesteps}, 'uniform:N', 'power:N:P' "
            f"(P > 0) or a list of timesteps like '999,500,0'"
        )
        kind, _, rest = text.partition(":")
        try:
            if kind == "uniform" and rest:
                return uniform_grid(int(rest), num_timesteps)
            if kind == "power" and rest:
                n, _, p = rest.partition(":")
                return power_grid(int(n), float(p) if p else 2.0, num_timesteps)
            if rest or kind in ("uniform", "power"):
                raise bad
            if text.lstrip("+-").isdigit() and "," not in text:  # one number: a step count
                return uniform_grid(int(text), num_timesteps)
            spec = [int(x) for x in text.split(",") if x.strip()]
        except ValueError as e:
            if e is bad or str(e).startswith(("steps must", "power must")):
                raise
            raise bad from None
    grid = sorted({int(t) for t in spec}, reverse=True)
    if not grid:
        raise ValueError("the timestep grid is empty; give a step count, 'power:N:P' or timesteps like '999,500,0'")
    if grid[0] >= num_timesteps or grid[-1] < 0:
        raise ValueError(
            f"grid timesteps must lie in [0, {num_timesteps - 1}], got {grid[0]}..{grid[-1]}; or give a step count"
        )
    if len(grid) != len(list(spec)):
        raise ValueError(f"grid has repeated timesteps: {list(spec)}; give each timestep once")
    return grid


def _check_steps(steps: int, num_timesteps: int) -> None:
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be between 1 and {num_timesteps}, got {steps}")
