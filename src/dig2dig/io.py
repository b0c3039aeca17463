"""Reading and writing images: PNG, JPEG, TIFF and BMP; 8- and 16-bit; gray, RGB and RGBA.

Images enter dig2dig as float32 arrays in [0, 1], shaped (H, W) for gray and (H, W, 3) for
colour, in RGB order.  Alpha is dropped with a warning.  Gray content stored as three equal
channels is reported as gray (see :func:`dig2dig.color.is_gray`).  Output is written atomically:
to a temporary file in the destination folder, then renamed over the target, so a crash or a full
disk never leaves a half-written image behind.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ImageError

READ_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
WRITE_SUFFIXES = READ_SUFFIXES
SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff")
MIN_SIDE = 8  # smallest height/width dig2dig fuses


@dataclass
class Image:
    """A decoded image: ``data`` float32 in [0, 1], (H, W) or (H, W, 3) RGB."""

    data: np.ndarray
    bit_depth: int  # 8 or 16, as stored
    path: str = ""

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)"""
        return int(self.data.shape[0]), int(self.data.shape[1])

    @property
    def is_color(self) -> bool:
        return self.data.ndim == 3


def _cv2():
    import cv2

    return cv2


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """The image files (by suffix, :data:`READ_SUFFIXES`) in ``folder``, sorted; sub-folders too if
    ``recursive``."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"folder {str(root)!r} does not exist")
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in found if p.suffix.lower() in READ_SUFFIXES and p.is_file())


def decode(path: str | os.PathLike) -> np.ndarray:
    """The pixels of an image file as stored (uint8/uint16 in OpenCV's layout: BGR[A] for colour).

    Raises FileNotFoundError / ImageError with the fix on failure.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image {str(p)!r} does not exist")
    if p.is_dir():
        raise ImageError(f"{str(p)!r} is a folder, not an image file")
    if p.suffix.lower() not in READ_SUFFIXES:
        raise ImageError(f"{p.name}: unsupported file type {p.suffix!r}; use one of {', '.join(READ_SUFFIXES)}")
    cv2 = _cv2()
    buf = np.fromfile(str(p), dtype=np.uint8)  # handles non-ASCII paths, unlike cv2.imread
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if arr is None:
        raise ImageError(f"{p}: cannot decode the file as an image (corrupt or truncated?)")
    return arr


def read_raw(path: str | os.PathLike) -> np.ndarray:
    """Decoded pixels as stored (uint8/uint16), RGB order for colour (alpha dropped): what the metric
    conventions score."""
    arr = decode(path)
    if arr.ndim == 3:
        arr = arr[..., 2::-1] if arr.shape[2] >= 3 else arr[..., 0]
    return np.ascontiguousarray(arr)


def read_image(path: str | os.PathLike) -> Image:
    """Decode an image file to float [0, 1]; raise FileNotFoundError / ImageError with the fix on failure."""
    arr = decode(path)
    p = Path(path)
    return Image(_to_float(arr, p.name, bgr=True), 16 if arr.dtype == np.uint16 else 8, str(p))


def _to_float(arr: np.ndarray, name: str, bgr: bool) -> np.ndarray:
    if arr.dtype == np.uint8:
        scale = 255.0
    elif arr.dtype == np.uint16:
        scale = 65535.0
    else:
        raise ImageError(f"{name}: unsupported sample type {arr.dtype}; dig2dig reads 8- and 16-bit integer images")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            warnings.warn(f"{name}: alpha channel dropped", stacklevel=3)
            arr = arr[..., :3]
        elif arr.shape[2] == 2:  # gray + alpha
            warnings.warn(f"{name}: alpha channel dropped", stacklevel=3)
            arr = arr[..., 0]
        if arr.ndim == 3 and arr.shape[2] != 3:
            raise ImageError(f"{name}: unsupported layout with {arr.shape[2]} channels; use gray, RGB or RGBA")
        if arr.ndim == 3 and bgr:
            arr = arr[..., ::-1]  # OpenCV's BGR -> RGB
    elif arr.ndim != 2:
        raise ImageError(f"{name}: unsupported array shape {arr.shape}")
    out = np.ascontiguousarray(arr, dtype=np.float32) / np.float32(scale)
    h, w = out.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"{name}: {w}x{h} is too small; images must be at least {MIN_SIDE}x{MIN_SIDE} pixels")
    return out


def to_float_image(arr: np.ndarray, name: str = "array") -> np.ndarray:
    """Validate an in-memory image: uint8/uint16, or float in [0, 1]; (H,W), (H,W,1|3|4)."""
    arr = np.asarray(arr)
    if arr.dtype in (np.uint8, np.uint16):
        return _to_float(arr, name, bgr=False)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ImageError(f"{name}: arrays must be uint8, uint16 or float in [0, 1], got {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ImageError(f"{name}: contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ImageError(f"{name}: float images must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]; divide by 255 first?")
    arr = arr.astype(np.float32)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        warnings.warn(f"{name}: alpha channel dropped", stacklevel=2)
        arr = arr[..., :3]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ImageError(f"{name}: expected (H, W) or (H, W, 3), got {arr.shape}")
    if min(arr.shape[:2]) < MIN_SIDE:
        raise ImageError(f"{name}: {arr.shape[1]}x{arr.shape[0]} is too small; at least {MIN_SIDE}x{MIN_SIDE} pixels")
    return np.ascontiguousarray(arr)


def quantize(data: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """[0, 1] float -> uint8/uint16 with round-half-up and clipping."""
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    top = 255.0 if bit_depth == 8 else 65535.0
    q = np.floor(np.clip(data, 0.0, 1.0) * top + 0.5)
    return q.astype(np.uint8 if bit_depth == 8 else np.uint16)


def write_image(path: str | os.PathLike, data: np.ndarray, bit_depth: int | None = None) -> Path:
    """Write ``data`` (float in [0, 1], gray or RGB) atomically; returns the final path.

    ``bit_depth`` defaults to 8; 16 is honoured for PNG and TIFF and refused for JPEG/BMP.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise ImageError(f"cannot write {p.name}: unknown extension {p.suffix!r}; use one of {', '.join(WRITE_SUFFIXES)}")
    bit_depth = 8 if bit_depth is None else bit_depth
    if bit_depth == 16 and suffix not in SIXTEEN_BIT_SUFFIXES:
        raise ImageError(f"{p.name}: 16-bit output needs .png or .tif")
    if not p.parent.exists():
        raise FileNotFoundError(f"output folder {str(p.parent)!r} does not exist")
    arr = quantize(data, bit_depth)
    if arr.ndim == 3:
        arr = np.ascontiguousarray(arr[..., ::-1])  # RGB -> BGR for OpenCV
    cv2 = _cv2()
    ok, encoded = cv2.imencode(suffix, arr)
    if not ok:
        raise ImageError(f"could not encode {p.name}")
    atomic_write_bytes(p, encoded.tobytes())
    return p


_HOST = socket.gethostname().replace("~", "-")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The temporary file is named ``.<name>~<host>~<pid>~<random>.part``, so that a later run can
    tell the leftovers of a killed writer from a live one (:func:`remove_stale_temps`).
    """
    p = Path(path)
    if not p.parent.exists():
        raise FileNotFoundError(f"output folder {str(p.parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}~{_HOST}~{os.getpid()}~", suffix=".part", dir=str(p.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, recursive: bool = False, older_than_s: float = 3600.0) -> list[Path]:
    """Remove the temporary files that killed writers left in ``folder``: those of a process on
    this host that no longer runs, and unattributable ones older than ``older_than_s``.  Temporary
    files of live writers (other runs, other hosts sharing the folder) are left alone."""
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    for f in (root.rglob(".*.part") if recursive else root.glob(".*.part")):
        parts = f.name[:-len(".part")].split("~")
        if len(parts) >= 4 and parts[-2].isdigit():
            stale = parts[-3] == _HOST and not _pid_alive(int(parts[-2]))
        else:
            try:
                stale = time.time() - f.stat().st_mtime > older_than_s
            except FileNotFoundError:
                continue
        if stale:
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed
