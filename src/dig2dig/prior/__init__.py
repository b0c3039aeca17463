"""Diffusion priors: the :class:`Denoiser` interface, its timing wrapper, and the offline loaders."""

from .base import Denoiser, PriorSpec, TimedDenoiser
from .embedded import embedded_available
from .loaders import (
    load_adm_checkpoint,
    load_diffusers_folder,
    load_dig2dig_folder,
    load_embedded,
    load_prior,
    resolve_prior,
)

__all__ = [
    "Denoiser",
    "PriorSpec",
    "TimedDenoiser",
    "embedded_available",
    "load_adm_checkpoint",
    "load_diffusers_folder",
    "load_dig2dig_folder",
    "load_embedded",
    "load_prior",
    "resolve_prior",
]
