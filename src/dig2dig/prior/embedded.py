"""The prior that ships inside the package (``dig2dig/prior/weights``).

The folder holds ``spec.json`` and ``weights.safetensors`` in the dig2dig prior format.  When it
is absent, every entry point that needs a prior says that ``--prior`` is required.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import PriorNotAvailableError

EMBEDDED_DIR = Path(__file__).with_name("weights")

NO_EMBEDDED_MESSAGE = (
    "no embedded prior is installed with this copy of dig2dig, so a prior is required: pass --prior PATH "
    "(CLI) or prior=PATH (Python) with a guided-diffusion .pt/.safetensors checkpoint, a diffusers "
    "UNet2DModel folder, or a dig2dig prior folder (spec.json + weights.safetensors)"
)


def embedded_available() -> bool:
    return (EMBEDDED_DIR / "spec.json").is_file()


def load_embedded(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    if not embedded_available():
        raise PriorNotAvailableError(NO_EMBEDDED_MESSAGE)
    from .loaders import load_dig2dig_folder

    den = load_dig2dig_folder(EMBEDDED_DIR)
    den.module.eval()
    return den.to(device=device, dtype=dtype)
