"""Diffusion priors: the :class:`Denoiser` interface and its offline loaders."""

from .base import Denoiser, PriorSpec
from .embedded import embedded_available, load_embedded
from .loaders import load_adm_checkpoint, load_diffusers_folder, load_dig2dig_folder, load_prior

__all__ = [
    "Denoiser",
    "PriorSpec",
    "embedded_available",
    "load_adm_checkpoint",
    "load_diffusers_folder",
    "load_dig2dig_folder",
    "load_embedded",
    "load_prior",
]
