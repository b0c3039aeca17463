"""dig2dig: training-free, diffusion-based image fusion.

>>> import dig2dig
>>> result = dig2dig.fuse(["ir.png", "vis.png"], method="ddfm", steps=100, seed=0)  # doctest: +SKIP
>>> result.save("fused.png")  # doctest: +SKIP

Importing the package is cheap: torch and the rest load on first use.
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["FusionResult", "FusionSpec", "__version__", "derive_seed", "fuse", "fuse_batch", "load_prior"]


def __getattr__(name: str):
    if name in ("fuse", "fuse_batch", "FusionResult"):
        from . import api

        return getattr(api, name)
    if name == "FusionSpec":
        from .spec import FusionSpec

        return FusionSpec
    if name == "derive_seed":
        from .seeds import derive_seed

        return derive_seed
    if name == "load_prior":
        from .prior import load_prior

        return load_prior
    raise AttributeError(f"module 'dig2dig' has no attribute {name!r}")
