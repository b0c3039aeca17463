"""How a prior's forward runs: precision, memory layout, compilation, and tiles for big images.

:class:`ExecutedDenoiser` wraps a :class:`~dig2dig.prior.Denoiser` and answers ``eps(x, t)`` like
it; the sampler and the guidance see the whole image as before.  What it changes:

* **Tiles** (``tile`` = N).  The network runs on overlapping N × N tiles of x (``tile_overlap``
  pixels shared between neighbours, ``tile_batch`` tiles per network call), and the tiles' ε are
  blended with weights that rise as a raised cosine across each overlap (and stay 1 at the image's
  own borders), normalised to sum to one at every pixel.  Memory then grows with the tile, not the
  image, and compute linearly with the pixel count even for priors with global attention; a prior
  trained at a fixed size (ADM-256) also sees inputs of the size it was trained at.
  :func:`choose_tile` picks ``auto``: tiles of the trained size for a fixed-size prior on larger
  images, else the largest tile whose forward fits in free memory when the whole image does not,
  else none.
* **Precision** (``fp16``/``bf16``): the network runs under ``torch.autocast`` and its ε comes
  back as float32; everything outside the network stays float32.  ``int8``: the network's
  convolutions quantised and run by ONNX Runtime on the CPU (:mod:`dig2dig.prior.int8`).
* **Layout**: on a GPU the network and its input are channels-last (faster convolutions).
* **Compilation** (``compile=True``): ``torch.compile`` of the network, once per process.

With ``fp32``, no tiles and the CPU, ``eps`` is exactly the wrapped denoiser's (same bytes).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from . import memory
from .base import Denoiser, WrappedPrior, timestep_batch

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
_COMPILED: dict[int, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}


def tile_positions(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``size`` with at least ``overlap`` shared."""
    if size <= tile:
        return [0]
    stride = max(1, tile - overlap)
    n = math.ceil((size - tile) / stride) + 1
    # spread the tiles evenly so the last one ends at the border (overlaps grow a little, never shrink)
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def _ramp(length: int, overlap: int, rise: bool, fall: bool, device, dtype) -> torch.Tensor:
    w = torch.ones(length, dtype=torch.float64)
    if overlap > 0:
        k = torch.arange(1, overlap + 1, dtype=torch.float64)
        r = torch.sin(0.5 * math.pi * k / (overlap + 1)) ** 2  # raised cosine from ~0 to ~1
        if rise:
            w[:overlap] = r
        if fall:
            w[length - overlap :] = torch.minimum(w[length - overlap :], r.flip(0))
    return w.to(device=device, dtype=dtype)


def tiled_eps(forward, x: torch.Tensor, t, tile: int, overlap: int, tile_batch: int) -> torch.Tensor:
    """ε of ``x`` from ``forward`` run on overlapping tiles, blended (see the module docstring)."""
    b, c, h, w = x.shape
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_positions(h, th, overlap), tile_positions(w, tw, overlap)
    t = torch.as_tensor(t, device=x.device)
    tb = t.expand(b) if t.ndim == 0 else t
    acc = torch.zeros((b, c, h, w), dtype=torch.float32, device=x.device)
    wsum = torch.zeros((1, 1, h, w), dtype=torch.float32, device=x.device)
    boxes = [(y, xx) for y in ys for xx in xs]
    weights = {}
    for y, xx in boxes:
        key = (y == 0, y + th == h, xx == 0, xx + tw == w)
        if key not in weights:
            wy = _ramp(th, min(overlap, th // 2), not key[0], not key[1], x.device, torch.float32)
            wx = _ramp(tw, min(overlap, tw // 2), not key[2], not key[3], x.device, torch.float32)
            weights[key] = wy[:, None] * wx[None, :]
        wsum[..., y : y + th, xx : xx + tw] += weights[key]
    for lo in range(0, len(boxes), tile_batch):
        chunk = boxes[lo : lo + tile_batch]
        tiles = torch.cat([x[..., y : y + th, xx : xx + tw] for y, xx in chunk])
        eps = forward(tiles, tb.repeat(len(chunk)))
        for k, (y, xx) in enumerate(chunk):
            key = (y == 0, y + th == h, xx == 0, xx + tw == w)
            acc[..., y : y + th, xx : xx + tw] += eps[k * b : (k + 1) * b].float() * weights[key]
    return (acc / wsum).to(x.dtype)


class ExecutedDenoiser(WrappedPrior):
    """A denoiser run with the given precision, tiles and compilation; everything else is the wrapped one's."""

    den: Denoiser  # its network is what runs here

    def __init__(
        self,
        den: Denoiser,
        *,
        precision: str = "fp32",
        tile: int | None = None,
        tile_overlap: int | None = None,
        tile_batch: int = 4,
        compile: bool = False,
    ):
        super().__init__(den)
        self.precision = precision
        if tile is not None:
            tile = smallest_tile(den, tile)
        self.tile = tile
        self.overlap = (tile // 4 if tile_overlap is None else int(tile_overlap)) if tile else 0
        self.tile_batch = int(tile_batch)
        self.gpu = den.device.type == "cuda"
        self.net = den.net
        if compile:
            key = id(den.net)
            if key not in _COMPILED:
                _COMPILED[key] = torch.compile(den.net, dynamic=False)  # one graph per shape (full, half, tile)
            self.net = _COMPILED[key]
        if self.gpu and den.module is not None:
            # torch documents Module.to(memory_format=...), but its typed overloads leave that form out
            den.module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.session = None
        if precision == "int8":
            from . import int8

            self.session = int8.session(den)
        self.exact = precision == "fp32" and not compile and not self.gpu  # the wrapped eps, byte for byte

    def _forward(self, x: torch.Tensor, t) -> torch.Tensor:
        if self.exact:
            return self.den.eps(x, t)
        den = self.den
        if x.ndim != 4 or x.shape[1] != den.channels:
            raise ValueError(f"expected a (B, {den.channels}, H, W) batch, got {tuple(x.shape)}")
        t = timestep_batch(t, x.shape[0], x.device)
        if self.session is not None:
            from . import int8

            return int8.eps(self.session, x, t)[:, : den.channels].to(x.dtype)
        xin = x.to(den.dtype)
        if self.gpu:
            xin = xin.contiguous(memory_format=torch.channels_last)
        dtype = _DTYPES.get(self.precision)
        with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = self.net(xin, t)
        return out[:, : den.channels].to(torch.float32).contiguous().to(x.dtype)

    def eps(self, x: torch.Tensor, t) -> torch.Tensor:
        if self.tile and (x.shape[-2] > self.tile or x.shape[-1] > self.tile):
            return tiled_eps(self._forward, x, t, self.tile, self.overlap, self.tile_batch)
        return self._forward(x, t)

    def describe(self) -> dict:
        return {
            "precision": self.precision,
            "tile": self.tile,
            "tile_overlap": self.overlap if self.tile else None,
            "tile_batch": self.tile_batch if self.tile else None,
            "compiled": self.net is not self.den.net,
        }


def smallest_tile(den, size: int) -> int:
    """``size`` rounded down to a tile the network accepts: a multiple of its spatial multiple, and at
    least twice it (a tile that shrinks to one pixel at the bottom of the UNet cannot be normalised)."""
    m = den.spatial_multiple
    return max(2 * m, (int(size) // m) * m)


def choose_tile(den, setting, height: int, width: int, images: float = 1.0, tile_batch: int = 4) -> int | None:
    """The tile size for a height × width run (None: whole image) from ``auto``, ``off`` or a size.
    ``auto``: the prior's training size for a fixed-size prior; else the whole image when its forward
    needs at most half the device's memory, or the largest tile that does."""
    if setting in (None, "off"):
        return None
    if setting != "auto":
        return int(setting)
    trained = getattr(den.spec, "trained_size", None)
    if trained and (height > trained or width > trained):
        return int(trained)
    # half the device's whole memory, not what is free now: the choice (and so the bytes) must not
    # depend on what else runs; too little free memory for the chosen size is refused before the run
    total = memory.total_bytes(den.device)
    budget = None if total is None else total // 2
    if budget is None or memory.forward_bytes(den, 1, height, width) * images <= budget:
        return None
    size = smallest_tile(den, min(height, width))
    while size > smallest_tile(den, 0) and memory.forward_bytes(den, tile_batch, size, size) > budget:
        size = smallest_tile(den, size // 2)
    return size  # if even this does not fit, the memory check before the run says so
