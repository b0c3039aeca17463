"""Where the prior that ships inside the package lives (``dig2dig/prior/weights``).

The folder holds ``spec.json`` and ``weights.safetensors`` in the dig2dig prior format and is
loaded by :func:`dig2dig.prior.loaders.load_embedded`.  When it is absent, every entry point that
needs a prior says that ``--prior`` is required.
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_DIR = Path(__file__).with_name("weights")

NO_EMBEDDED_MESSAGE = (
    "no embedded prior is installed with this copy of dig2dig, so a prior is required: pass --prior PATH "
    "(CLI) or prior=PATH (Python) with a guided-diffusion .pt/.safetensors checkpoint, a diffusers "
    "UNet2DModel folder, or a dig2dig prior folder (spec.json + weights.safetensors)"
)


def embedded_available() -> bool:
    return (EMBEDDED_DIR / "spec.json").is_file()


def is_embedded(source) -> bool:
    """Whether a prior argument names the embedded prior (None or ``"embedded"``)."""
    return source is None or str(source) == "embedded"
