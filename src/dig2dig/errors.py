"""Exceptions raised at dig2dig's edges.  Each message names the offending value and the fix."""

from __future__ import annotations


class Dig2DigError(Exception):
    """Base class of every error dig2dig raises on purpose.

    ``spelled`` (optional): the message as another surface spells its fix, e.g. ``{"cli": "... pass
    --resize ..."}`` beside the Python ``resize=True``; :func:`describe` picks the surface's text."""

    spelled: dict[str, str] = {}


class ImageError(Dig2DigError, ValueError):
    """An input image cannot be used (corrupt, unsupported mode, too small, ...)."""


class SizeMismatchError(ImageError):
    """Sources of different sizes were given without ``resize``."""


class RegistrationError(ImageError):
    """Sources that could not be aligned, or whose estimated alignment is implausible."""


class ResourceError(Dig2DigError, RuntimeError):
    """The machine lacks what a run needs (memory, a device); the message says how much and what to do."""


class CheckpointError(Dig2DigError, ValueError):
    """A prior checkpoint does not fit the architecture it claims (or cannot be read)."""


class PriorNotAvailableError(Dig2DigError, FileNotFoundError):
    """No prior was given and no embedded prior is installed."""


class RunError(Dig2DigError, ValueError):
    """A batch run cannot start (bad inputs, a locked folder, results made with other settings)."""


# --------------------------------------------------------------------------------------------
# one error boundary: every surface (CLI, batch records, web jobs) turns an exception into the
# same one-line message and exit code

EXIT_OK = 0
EXIT_ITEMS_FAILED = 1  # a batch ran, and some of its items failed (listed in the summary)
EXIT_USAGE = 2  # bad input: arguments, options, files, images, checkpoints
EXIT_RESOURCE = 3  # the machine: memory, disk space, permissions, a missing device
EXIT_INTERNAL = 70  # a defect in dig2dig: the trace is written to a file
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM

_ERRNO_FIX = {
    "ENOSPC": "no space left on the device; free some space or write elsewhere",
    "EDQUOT": "the disk quota is exceeded; free some space or write elsewhere",
    "EACCES": "permission denied; choose a location you can write to (or read from)",
    "EPERM": "operation not permitted; choose a location you can write to",
    "EROFS": "the file system is read-only; write elsewhere",
    "EMFILE": "too many open files; raise the limit (ulimit -n) or use fewer workers",
    "ENAMETOOLONG": "the file name is too long; use a shorter one",
}


def describe(e: BaseException, surface: str = "python") -> tuple[int, str]:
    """(exit code, one-line message) for an exception; unexpected ones get :data:`EXIT_INTERNAL`.
    ``surface`` ("python", "cli", "web") picks how the message spells settings where it differs."""
    import errno as _errno

    msg = " ".join(getattr(e, "spelled", {}).get(surface, str(e)).split())
    name = type(e).__name__
    if isinstance(e, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(e, MemoryError) or name == "OutOfMemoryError":
        where = "the GPU" if name == "OutOfMemoryError" else "the machine"
        return EXIT_RESOURCE, (
            f"{where} ran out of memory; fuse smaller images (or crops), fewer at a time, with "
            f"fewer workers, or on a machine with more memory"
        )
    if isinstance(e, ResourceError):
        return EXIT_RESOURCE, msg
    if isinstance(e, OSError) and not isinstance(e, (FileNotFoundError, Dig2DigError)):
        code = _errno.errorcode.get(e.errno or 0, "")
        if isinstance(e, (IsADirectoryError, NotADirectoryError)):
            return EXIT_USAGE, e.strerror if e.strerror and len(
                e.strerror
            ) > 30 else f"{e.filename}: {e.strerror or msg}"
        fix = _ERRNO_FIX.get(code)
        what = f"{e.filename}: " if e.filename else ""
        if fix:
            detail = e.strerror if e.strerror and len(e.strerror) > 40 else fix
            return EXIT_RESOURCE, f"{what}{detail}"
        return EXIT_RESOURCE, f"{what}{e.strerror or msg}"
    if isinstance(e, FileNotFoundError) and e.filename and not isinstance(e, Dig2DigError):
        return EXIT_USAGE, f"{e.filename} does not exist"
    if isinstance(e, (Dig2DigError, ValueError, FileNotFoundError)):
        return EXIT_USAGE, msg or name
    if name == "MetricInputError":
        return EXIT_USAGE, msg
    return EXIT_INTERNAL, f"{name}: {msg}" if msg else name
