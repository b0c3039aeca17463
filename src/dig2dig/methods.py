"""The fusion methods dig2dig knows, as small declarative records.

A method turns the sources' luminance (tensors (B, 1, H, W) in [-1, 1], in the task's role
order) into a rectifier for :func:`dig2dig.sampler.ddim`, and a step count into a timestep grid.
The math of each method lives in its own module under :mod:`dig2dig.guidance`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .schedule import make_grid, power_grid


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    default_steps: int
    min_sources: int
    max_sources: int | None
    defaults: dict[str, Any] = field(default_factory=dict)
    build: Callable[..., Any] | None = None  # diffusion: (sources, prior, grid, seeds, **options) -> rectifier
    grid: Callable[..., list[int]] = lambda steps, **opts: make_grid(steps)  # (steps, **options) -> grid
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


def _build_ddfm(sources, prior, grid, seeds, mapping: str, lamb: float, rho: float):
    from .guidance.ddfm import DDFMGuidance

    return DDFMGuidance(sources[0], sources[1], mapping=mapping, lamb=lamb, rho=rho)


def _build_dig(sources, prior, grid, seeds, power: float, record: bool, **opts):
    from .guidance.dig import DIGGuidance

    return DIGGuidance(sources, prior, grid, noise_seeds=seeds, record=record, **opts)


def _build_ccf(sources, prior, grid, seeds, **opts):
    from .guidance.ccf import build_ccf

    return build_ccf(sources, prior, grid, seeds, **opts)


def _ccf_defaults() -> dict:
    from .guidance.ccf import CCF_DEFAULTS

    return dict(CCF_DEFAULTS)


def _dig_grid(steps, power: float = 2.0, **_):
    """DIG-N: an int N means N steps on the power grid (big steps at high noise)."""
    if isinstance(steps, int):
        return power_grid(steps, power)
    return make_grid(steps)


METHODS: dict[str, Method] = {
    "dig2dig": Method(
        name="dig2dig",
        description="Dig2DIG (Cao et al. 2025): DDFM-style EM guidance weighted per pixel by diffusion "
                    "information gains, refreshed every S steps, on a non-uniform DIG-N grid",
        default_steps=25,
        min_sources=2,
        max_sources=None,
        defaults={"interval": 10, "distance": "l2", "temperature": 1.0, "weights": "dig", "mixing": "complementary",
                  "smooth": 12.0, "dig_scale": 0.5, "window": "backward", "accelerate": 0.0, "power": 2.0,
                  "record": False},
        build=_build_dig,
        grid=_dig_grid,
    ),
    "ccf": Method(
        name="ccf",
        description="CCF (Cao et al., NeurIPS 2024): one Adam step per reverse step on a gated top-k "
                    "selection from a bank of fusion conditions",
        default_steps=200,
        min_sources=2,
        max_sources=None,
        defaults=_ccf_defaults(),
        build=_build_ccf,
    ),
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


def _classical(name: str, description: str, **defaults) -> Method:
    from . import baselines

    return Method(name=name, description=description, default_steps=0, min_sources=2, max_sources=None,
                  defaults=defaults, classical=baselines.BASELINES[name])


METHODS.update({
    "average": _classical("average", "classical baseline: the mean of the sources"),
    "maxabs": _classical("maxabs", "classical baseline: per pixel the source of largest absolute value"),
    "laplacian": _classical("laplacian", "classical baseline: Laplacian-pyramid fusion, max-abs details", levels=None),
    "guided": _classical("guided", "classical baseline: guided-filtering fusion (GFF, Li et al. 2013)",
                         r1=45, eps1=0.3, r2=7, eps2=1e-6),
})


def get_method(name: str) -> Method:
    try:
        return METHODS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}") from None
