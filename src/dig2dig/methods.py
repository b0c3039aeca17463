"""The fusion methods dig2dig knows, as small declarative records.

A method turns the sources' luminance (tensors (B, 1, H, W) in [-1, 1], in the task's role
order) into a rectifier for :func:`dig2dig.sampler.ddim`, and a step count into a timestep grid.
The math of each method lives in its own module under :mod:`dig2dig.guidance`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .schedule import make_grid


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    default_steps: int
    min_sources: int
    max_sources: int | None
    defaults: dict[str, Any] = field(default_factory=dict)
    build: Callable[..., Any] | None = None  # diffusion: (sources, **options) -> rectifier
    grid: Callable[[int | str | list[int]], list[int]] = make_grid
    classical: Callable[..., Any] | None = None  # classical: (luminances, **options) -> luminance

    @property
    def needs_prior(self) -> bool:
        return self.classical is None

    def options(self, given: dict[str, Any]) -> dict[str, Any]:
        unknown = set(given) - set(self.defaults)
        if unknown:
            raise ValueError(f"method {self.name!r} has no option(s) {sorted(unknown)}; "
                             f"its options are {sorted(self.defaults) or 'none'}")
        return {**self.defaults, **given}

    def check_sources(self, n: int) -> None:
        hi = self.max_sources
        if n < self.min_sources or (hi is not None and n > hi):
            want = f"exactly {hi}" if hi == self.min_sources else f"{self.min_sources} to {hi or 'any number of'}"
            raise ValueError(f"method {self.name!r} fuses {want} sources, got {n}")


def _build_ddfm(sources, mapping: str, lamb: float, rho: float):
    from .guidance.ddfm import DDFMGuidance

    return DDFMGuidance(sources[0], sources[1], mapping=mapping, lamb=lamb, rho=rho)


METHODS: dict[str, Method] = {
    "ddfm": Method(
        name="ddfm",
        description="DDFM (Zhao et al., ICCV 2023): one EM step on x̂0's luminance per diffusion step",
        default_steps=100,
        min_sources=2,
        max_sources=2,
        defaults={"mapping": "release", "lamb": 0.5, "rho": 0.001},
        build=_build_ddfm,
    ),
}


def _classical(name: str, description: str) -> Method:
    from . import baselines

    return Method(name=name, description=description, default_steps=0, min_sources=2, max_sources=None,
                  classical=baselines.BASELINES[name])


METHODS.update({
    "average": _classical("average", "classical baseline: the mean of the sources"),
    "maxabs": _classical("maxabs", "classical baseline: per pixel the source of largest absolute value"),
    "laplacian": _classical("laplacian", "classical baseline: Laplacian-pyramid fusion, max-abs details"),
    "guided": _classical("guided", "classical baseline: guided-filtering fusion (GFF, Li et al. 2013)"),
})


def get_method(name: str) -> Method:
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}") from None
