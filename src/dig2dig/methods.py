"""The fusion methods dig2dig knows: one record each, with the one definition of its options.

A diffusion method turns the sources' luminance (tensors (B, 1, H, W) in [-1, 1], in the task's
role order) into a :class:`~dig2dig.sampler.Rectifier` for :func:`dig2dig.sampler.ddim`, and a step
count into a timestep grid; a classical method maps the luminances to a fused one directly.  The
math of each diffusion method lives in its own module under :mod:`dig2dig.guidance`; what each
option means is explained there, and its name, type, default and range are declared here, once
(:mod:`dig2dig.options`).  This module imports neither torch nor the method code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from .options import (
    CCFOptions,
    DDFMOptions,
    DIGOptions,
    GuidedOptions,
    LaplacianOptions,
    MertensOptions,
    NoOptions,
    Options,
    PriorOptions,
    markdown_table,
)
from .schedule import make_grid, power_grid

# --------------------------------------------------------------------------------------------
# methods


@dataclass(frozen=True)
class BuildContext:
    """What a diffusion method's builder gets besides its options."""

    sources: list  # N tensors (B, 1, H, W) in [-1, 1], role order
    prior: Any  # the Denoiser (possibly a timing wrapper)
    grid: list[int]
    seeds: list[int]  # one per batch item
    task: str  # the resolved fusion task
    record: bool = False  # keep what the method's figures need (Dig2DIG's DIG maps)


OptionsT = TypeVar("OptionsT", bound=Options)  # a method's option record


@dataclass(frozen=True)
class Method(Generic[OptionsT]):
    name: str
    description: str
    options: type[OptionsT]
    default_steps: int = 0
    min_sources: int = 2
    max_sources: int | None = None
    build: Callable[[BuildContext, OptionsT], Any] | None = None  # diffusion: -> Rectifier
    grid: Callable[[Any, OptionsT], list[int]] = lambda steps, opts: make_grid(steps)
    classical: Callable[..., Any] | None = None  # classical: (luminances, **options) -> luminance

    @property
    def needs_prior(self) -> bool:
        return self.classical is None

    @property
    def defaults(self) -> dict[str, Any]:
        return {i.name: i.default for i in self.options.infos()}

    def configure(self, given: dict[str, Any] | None = None) -> OptionsT:
        """Validated options (defaults filled in), or a ValueError naming the bad value and the fix."""
        return self.options.create(given)

    def split(self, given: dict[str, Any] | None) -> tuple[OptionsT, PriorOptions]:
        """Keyword options as the method's and the prior's (:class:`~dig2dig.options.PriorOptions`), validated."""
        given = dict(given or {})
        prior_names = {i.name for i in PriorOptions.infos()}
        prior = {k: given.pop(k) for k in list(given) if k in prior_names}
        popts = PriorOptions.create(prior)
        if prior and not self.needs_prior:
            raise ValueError(f"method {self.name!r} uses no prior, so it takes no prior options ({sorted(prior)})")
        return self.configure(given), popts

    def check_sources(self, n: int) -> None:
        hi = self.max_sources
        if n < self.min_sources or (hi is not None and n > hi):
            want = (
                f"exactly {hi}"
                if hi == self.min_sources
                else f"{self.min_sources} to {hi}"
                if hi
                else f"{self.min_sources} or more"
            )
            fix = "give that many registered images" if hi else "give two or more registered images"
            raise ValueError(f"method {self.name!r} fuses {want} sources, got {n}; {fix}")


def _build_ddfm(ctx: BuildContext, opts: DDFMOptions):
    from .guidance.ddfm import DDFMGuidance

    return DDFMGuidance(ctx.sources[0], ctx.sources[1], opts)


def _build_dig(ctx: BuildContext, opts: DIGOptions):
    from .guidance.dig import DIGGuidance

    return DIGGuidance(ctx.sources, ctx.prior, ctx.grid, opts, noise_seeds=ctx.seeds, record=ctx.record, task=ctx.task)


def _build_ccf(ctx: BuildContext, opts: CCFOptions):
    from .guidance.ccf import build_ccf

    return build_ccf(ctx.sources, ctx.prior, opts, task=ctx.task)


def _dig_grid(steps, opts: DIGOptions) -> list[int]:
    """DIG-N: an int N means N steps on the power grid (big steps at high noise)."""
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        return power_grid(int(steps), opts.power)
    return make_grid(steps)


def _baseline(name: str) -> Callable:
    def run(lum, **opts):
        from . import baselines

        return baselines.BASELINES[name](lum, **opts)

    return run


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "dig2dig",
            "Dig2DIG (Cao et al. 2025): DDFM-style EM guidance weighted by diffusion information gains "
            "per pyramid band (each pixel's detail from the source the prior finds most of), refreshed every S steps, "
            "on a non-uniform DIG-N grid",
            DIGOptions,
            default_steps=25,
            build=_build_dig,
            grid=_dig_grid,
        ),
        Method(
            "ccf",
            "CCF (Cao et al., NeurIPS 2024): one Adam step per reverse step on a gated top-k selection from a "
            "bank of fusion conditions",
            CCFOptions,
            default_steps=200,
            build=_build_ccf,
        ),
        Method(
            "ddfm",
            "DDFM (Zhao et al., ICCV 2023): one EM step on x̂0's luminance per diffusion step",
            DDFMOptions,
            default_steps=100,
            max_sources=2,
            build=_build_ddfm,
        ),
        Method("average", "classical baseline: the mean of the sources", NoOptions, classical=_baseline("average")),
        Method(
            "maxabs",
            "classical baseline: per pixel the source of largest absolute value",
            NoOptions,
            classical=_baseline("maxabs"),
        ),
        Method(
            "laplacian",
            "classical baseline: Laplacian-pyramid fusion, max-abs details",
            LaplacianOptions,
            classical=_baseline("laplacian"),
        ),
        Method(
            "guided",
            "classical baseline: guided-filtering fusion (GFF, Li et al. 2013)",
            GuidedOptions,
            classical=_baseline("guided"),
        ),
        Method(
            "mertens",
            "classical baseline: exposure fusion (Mertens et al. 2007, OpenCV's MergeMertens) on the luminances",
            MertensOptions,
            classical=_baseline("mertens"),
        ),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(METHODS)}") from None


def options_markdown(methods: Sequence[str] | None = None) -> str:
    """The table of every method option and of the prior options (``docs/options.md``, the ``fuse`` docs)."""
    names = list(methods or METHODS)
    return markdown_table(
        [(n, METHODS[n].options) for n in names if METHODS[n].options.infos()]
        + [("any diffusion method", PriorOptions)]
    )


def options_document() -> str:
    """``docs/options.md``: regenerate with ``python -m dig2dig.methods > docs/options.md``."""
    lines = [
        "# Method options",
        "",
        "Every option of every method, generated from the option records in `src/dig2dig/options.py` (the one",
        "place each is defined). The same records give `dig2dig fuse --help`, the `dig2dig.fuse` documentation",
        "and the validation that runs before any work. Python: `dig2dig.fuse(..., name=value)`; command line:",
        "the flag. Regenerate this page with `python -m dig2dig.methods > docs/options.md`.",
        "",
        "| method | default steps | sources | what it is |",
        "|---|---|---|---|",
    ]
    for m in METHODS.values():
        n = f"exactly {m.max_sources}" if m.max_sources == m.min_sources else f"{m.min_sources} or more"
        lines.append(f"| `{m.name}` | {m.default_steps or '–'} | {n} | {m.description} |")
    return "\n".join(lines) + "\n\n" + options_markdown()


if __name__ == "__main__":
    print(options_document(), end="")
