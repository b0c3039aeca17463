"""Diffusion priors: the :class:`Prior` protocol, :class:`Denoiser` and its wrappers, and the offline loaders."""

from .base import Denoiser, Prior, PriorSpec, TimedDenoiser, WrappedPrior
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
    "Prior",
    "PriorSpec",
    "TimedDenoiser",
    "WrappedPrior",
    "embedded_available",
    "load_adm_checkpoint",
    "load_diffusers_folder",
    "load_dig2dig_folder",
    "load_embedded",
    "load_prior",
    "resolve_prior",
]
