"""Exceptions raised at dig2dig's edges.  Each message names the offending value and the fix."""

from __future__ import annotations


class Dig2DigError(Exception):
    """Base class of every error dig2dig raises on purpose."""


class ImageError(Dig2DigError, ValueError):
    """An input image cannot be used (corrupt, unsupported mode, too small, ...)."""


class SizeMismatchError(ImageError):
    """Sources of different sizes were given without ``resize``."""


class CheckpointError(Dig2DigError, ValueError):
    """A prior checkpoint does not fit the architecture it claims (or cannot be read)."""


class PriorNotAvailableError(Dig2DigError, FileNotFoundError):
    """No prior was given and no embedded prior is installed."""


class RunError(Dig2DigError, ValueError):
    """A batch run cannot start (bad inputs, a locked folder, results made with other settings)."""
