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
import threading
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
MAX_PIXELS = 200_000_000  # default largest image (width × height) decoded; read off the header first


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
    if root.is_file():
        raise NotADirectoryError(20, f"{str(root)!r} is a file; give the folder that holds the images", str(root))
    if not root.is_dir():
        raise FileNotFoundError(f"folder {str(root)!r} does not exist")
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in found if p.suffix.lower() in READ_SUFFIXES and p.is_file())


_PIL_LIMIT = threading.Lock()
_STDERR = threading.Lock()  # file descriptor 2 is the process's: one decode at a time redirects it
SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)  # the formats dig2dig reads, told by their first bytes


def header_size(source) -> tuple[int, int] | None:
    """(width, height) read from an image file's (or bytes') header without decoding the pixels, or
    None if the header cannot be read (decoding will then say what is wrong)."""
    try:
        from PIL import Image as PILImage
    except ImportError:  # Pillow comes with matplotlib; without it the size is known only after decoding
        return None
    import io as _io

    with _PIL_LIMIT:  # Pillow's limit is a global: one thread at a time lifts it
        old = PILImage.MAX_IMAGE_PIXELS
        PILImage.MAX_IMAGE_PIXELS = None  # the limit is ours (max_pixels), not Pillow's
        try:
            with PILImage.open(_io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as im:
                return int(im.size[0]), int(im.size[1])
        except Exception:  # noqa: BLE001 -- any header Pillow cannot read is left to the caller
            return None
        finally:
            PILImage.MAX_IMAGE_PIXELS = old


def check_pixels(size: tuple[int, int], label: str, max_pixels: int | None = None) -> None:
    """Refuse a width × height above ``max_pixels`` (default :data:`MAX_PIXELS`)."""
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    n = size[0] * size[1]
    if n > limit:
        what = (
            f"{n / 1e6:.4g} megapixels, more than the limit of {limit / 1e6:g}"
            if limit >= 1_000_000
            else f"{n:,} pixels, more than the limit of {limit:,}"
        )
        raise ImageError(
            f"{label}: {size[0]}x{size[1]} is {what}; raise it with --max-pixels (max_pixels=) if the "
            f"machine has the memory"
        )


def decode_bytes(data: bytes, label: str, max_pixels: int | None = None, capture: bool = True) -> np.ndarray:
    """The pixels of an encoded image (PNG, JPEG, TIFF, BMP -- told by their first bytes, not by a
    name) as stored: uint8/uint16 in OpenCV's layout (BGR[A] for colour).  The pixel count is
    checked against ``max_pixels`` from the header before anything is decoded; a file whose header
    cannot be read is refused undecoded (other formats OpenCV knows, e.g. Radiance HDR, could hide
    gigapixels in a few megabytes).  ``capture``: catch what the decoders print to stderr (one line
    in the warning); a server leaves it off, since stderr is shared by every thread."""
    fix = "re-export it as PNG, JPEG, TIFF or BMP"
    if not any(bytes(data[:8]).startswith(sig) for sig, _ in SIGNATURES):
        raise ImageError(f"{label}: cannot decode the file as an image (it is not a PNG, JPEG, TIFF or BMP); {fix}")
    size = header_size(data)
    if size is None:
        raise ImageError(
            f"{label}: cannot decode the file as an image (its header cannot be read: corrupt or truncated); {fix}"
        )
    check_pixels(size, label, max_pixels)
    cv2 = _cv2()
    buf = np.frombuffer(data, dtype=np.uint8)
    said = ""
    try:
        if capture:
            arr, said = _decode_quietly(cv2, buf)
        else:
            arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        arr = None
    if arr is None:
        detail = f" ({said})" if said else " (corrupt, truncated, or not an image)"
        raise ImageError(f"{label}: cannot decode the file as an image{detail}; re-export it as PNG, JPEG, TIFF or BMP")
    if said:
        warnings.warn(
            f"{Path(label).name}: the decoder reported '{said}'; the image may be damaged or truncated", stacklevel=3
        )
    check_pixels((arr.shape[1], arr.shape[0]), label, max_pixels)  # the decoded size too, in case a header lied
    return arr


def decode(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """The pixels of an image file as stored (see :func:`decode_bytes`).  Raises FileNotFoundError /
    ImageError with the fix on failure."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"image {str(p)!r} does not exist; check the path")
    if p.is_dir():
        raise ImageError(f"{str(p)!r} is a folder, not an image file; give the image files inside it")
    if p.suffix.lower() not in READ_SUFFIXES:
        raise ImageError(f"{p.name}: unsupported file type {p.suffix!r}; use one of {', '.join(READ_SUFFIXES)}")
    if not p.is_file():  # a FIFO, a device: reading could block forever
        raise ImageError(f"{str(p)!r} is not a regular file; give an image file")
    size = header_size(p)
    if size is not None:  # before reading the whole file
        check_pixels(size, str(p), max_pixels)
    if p.suffix.lower() in (".tif", ".tiff"):
        _warn_if_multipage(p)
    return decode_bytes(p.read_bytes(), str(p), max_pixels)


def _warn_if_multipage(p: Path) -> None:
    try:
        from PIL import Image as PILImage

        with PILImage.open(p) as im:
            pages = getattr(im, "n_frames", 1)
    except Exception:  # noqa: BLE001 -- the decoder will say what is wrong
        return
    if pages > 1:
        warnings.warn(f"{p.name} holds {pages} pages; dig2dig fuses the first one", stacklevel=3)


def _decode_quietly(cv2, buf: np.ndarray) -> tuple[np.ndarray | None, str]:
    """``cv2.imdecode`` with what libpng/libjpeg print to the process's stderr caught (one line for us)."""
    with _STDERR, tempfile.TemporaryFile() as sink:
        try:
            saved = os.dup(2)
        except OSError:
            return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED), ""
        os.dup2(sink.fileno(), 2)
        try:
            arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        said = " ".join(sink.read(2000).decode(errors="replace").split())
    return arr, said


def read_raw(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Decoded pixels as stored (uint8/uint16), RGB order for colour (alpha dropped): what the metric
    conventions score."""
    arr = decode(path, max_pixels)
    if arr.ndim == 3:
        arr = arr[..., 2::-1] if arr.shape[2] >= 3 else arr[..., 0]
    return np.ascontiguousarray(arr)


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image:
    """Decode an image file to float [0, 1]; raise FileNotFoundError / ImageError with the fix on failure."""
    arr = decode(path, max_pixels)
    p = Path(path)
    return Image(_to_float(arr, p.name, bgr=True), 16 if arr.dtype == np.uint16 else 8, str(p))


def image_from_bytes(data: bytes, name: str, max_pixels: int | None = None, capture: bool = True) -> Image:
    """:func:`read_image` for bytes (an upload); ``name`` is only a label, never a path."""
    arr = decode_bytes(data, name, max_pixels, capture)
    return Image(_to_float(arr, name, bgr=True), 16 if arr.dtype == np.uint16 else 8, name)


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
    if arr.size == 0:
        raise ImageError(
            f"{name}: an empty array of shape {arr.shape}; images must be at least {MIN_SIDE}x{MIN_SIDE} pixels"
        )
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
    if not p.parent.exists():
        raise FileNotFoundError(f"output folder {str(p.parent)!r} does not exist")
    atomic_write_bytes(p, encode_image(data, p.suffix, bit_depth, p.name))
    return p


def encode_image(data: np.ndarray, suffix: str = ".png", bit_depth: int | None = None, name: str = "image") -> bytes:
    """``data`` (float in [0, 1], gray or RGB) encoded as the format of ``suffix``: the bytes
    :func:`write_image` writes."""
    suffix = suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise ImageError(f"cannot write {name}: unknown extension {suffix!r}; use one of {', '.join(WRITE_SUFFIXES)}")
    bit_depth = 8 if bit_depth is None else bit_depth
    if bit_depth == 16 and suffix not in SIXTEEN_BIT_SUFFIXES:
        raise ImageError(f"{name}: 16-bit output needs .png or .tif")
    arr = quantize(data, bit_depth)
    if arr.ndim == 3:
        arr = np.ascontiguousarray(arr[..., ::-1])  # RGB -> BGR for OpenCV
    ok, encoded = _cv2().imencode(suffix, arr)
    if not ok:
        raise ImageError(f"could not encode {name}")
    return encoded.tobytes()


_HOST = socket.gethostname().replace("~", "-")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    The temporary file is named ``.<name>~<host>~<pid>~<random>.part``, so that a later run can
    tell the leftovers of a killed writer from a live one (:func:`remove_stale_temps`).
    """
    p = Path(path)
    if not p.parent.exists():
        raise FileNotFoundError(f"output folder {str(p.parent)!r} does not exist")
    # the name part is cut so that long item names still give a legal file name (255 bytes)
    short = p.name.encode()[:100].decode(errors="ignore")
    fd, tmp = tempfile.mkstemp(prefix=f".{short}~{_HOST[:40]}~{os.getpid()}~", suffix=".part", dir=str(p.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None and e.errno:  # say which file could not be written
            raise OSError(e.errno, e.strerror or str(e), str(p)) from e
        raise
    return p


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_savefig(fig, path: str | os.PathLike, **kw) -> Path:
    """A matplotlib figure written like every other output: rendered in memory, then renamed into place."""
    import io as _io

    buf = _io.BytesIO()
    fmt = Path(path).suffix.lstrip(".") or "png"
    fig.savefig(buf, format=fmt, **kw)
    return atomic_write_bytes(path, buf.getvalue())


def _probe_writable(folder: Path, what: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=".dig2dig-write-test~", dir=str(folder))
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise PermissionError(
            e.errno,
            f"cannot write the {what} in {str(folder)!r} ({e.strerror}); choose a folder you can write to",
            str(folder),
        ) from None


def check_output_file(path: str | os.PathLike, what: str = "output", sources=()) -> Path:
    """Before any work: ``path`` can be written as a file -- its folder exists and is writable, it is
    not a folder, and it is none of ``sources`` (links resolved: writing it would destroy a source)."""
    p = Path(path).expanduser()
    if p.is_dir():
        example = p / ("report.json" if "report" in what else "fused.png")
        raise IsADirectoryError(
            21, f"the {what} {str(p)!r} is a folder; give a file name, e.g. {str(example)!r}", str(p)
        )
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.exists():
        raise FileNotFoundError(f"the folder {str(folder)!r} for the {what} does not exist; create it first")
    if not folder.is_dir():
        raise NotADirectoryError(20, f"{str(folder)!r} (the {what}'s folder) is a file, not a folder", str(folder))
    target = p.resolve()
    for s in sources:
        sp = Path(s)
        if sp.exists() and (sp.resolve() == target or (p.exists() and os.path.samefile(sp, p))):
            raise ValueError(
                f"the {what} {str(p)!r} is the source {str(s)!r}; writing it would destroy that source, "
                f"so choose another file name"
            )
    _probe_writable(folder, what)
    return p


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Before any work: ``path`` is (or can be made) a writable folder."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise NotADirectoryError(20, f"the {what} {str(p)!r} is a file; give a folder", str(p))
    existing = p
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(
            20, f"{str(existing)!r} is a file, so the {what} {str(p)!r} cannot be made", str(existing)
        )
    _probe_writable(existing, what)
    return p


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
    this host that no longer runs, and those of other hosts (killed cluster workers) or of no known
    writer once older than ``older_than_s``.  Temporary files of live writers on this host, and
    recent ones of other hosts sharing the folder, are left alone."""
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    for f in root.rglob(".*.part") if recursive else root.glob(".*.part"):
        parts = f.name[: -len(".part")].split("~")
        try:
            old = time.time() - f.stat().st_mtime > older_than_s
        except FileNotFoundError:
            continue
        if len(parts) >= 4 and parts[-2].isdigit() and parts[-3] == _HOST[:40]:
            stale = not _pid_alive(int(parts[-2]))
        else:  # another host's (a killed cluster worker) or unattributable: stale once old
            stale = old
        if stale:
            f.unlink(missing_ok=True)
            removed.append(f)
    return removed
