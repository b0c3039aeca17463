"""The library entry points: :func:`fuse` and :func:`fuse_batch`.

Public images are float in [0, 1] (or uint8/uint16 arrays, or file paths); [-1, 1] exists only
inside :func:`_run`, between padding the sources and cropping the sample.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from .seeds import check_seed, derive_seed
from .spec import FusionSpec, ResolvedSpec

__all__ = ["FusionResult", "FusionSpec", "derive_seed", "fuse", "fuse_batch", "run"]

if TYPE_CHECKING:
    from .io import Image

# a path, an array, or an image decoded already (an upload)
SourceLike: TypeAlias = "str | os.PathLike | np.ndarray | Image"


@dataclass
class FusionResult:
    """One fused image and everything needed to reproduce or inspect it."""

    image: np.ndarray  # (H, W) gray or (H, W, 3) RGB, float32 in [0, 1]
    luminance: np.ndarray  # (H, W) float32 in [0, 1]: the fused luminance before colour
    seed: int
    task: str
    method: str
    config: dict[str, Any]
    timings: dict[str, float]
    history: list[dict[str, Any]] | None = None  # per step, when asked for
    bit_depth: int = 8  # the deepest source's bit depth
    guidance: dict[str, Any] | None = None  # method records, e.g. Dig2DIG's weight maps per refresh

    def save(self, path: str | os.PathLike, bit_depth: int | None = None) -> Path:
        """Write :attr:`image` atomically; 16-bit when the sources were 16-bit and the format allows."""
        from .io import write_image

        return write_image(path, self.image, self._depth(Path(path).suffix, bit_depth))

    def encode(self, suffix: str = ".png", bit_depth: int | None = None) -> bytes:
        """The bytes :meth:`save` would write to a file with this suffix."""
        from .io import encode_image

        return encode_image(self.image, suffix, self._depth(suffix, bit_depth))

    def _depth(self, suffix: str, bit_depth: int | None) -> int:
        from .io import SIXTEEN_BIT_SUFFIXES

        if bit_depth is not None:
            return bit_depth
        return 16 if self.bit_depth == 16 and suffix.lower() in SIXTEEN_BIT_SUFFIXES else 8


@dataclass
class _Item:
    images: list[np.ndarray]  # float [0, 1] in role order
    names: list[str]
    lum: list[np.ndarray]
    task: Any
    padding: Any
    seed: int
    bit_depth: int
    notes: list[str] = field(default_factory=list)
    registration: dict | None = None  # what --register did (registration.Aligned.summary)


def check_memory(den, images: float, height: int, width: int, tiled: bool = False) -> None:
    """Refuse a run whose prior forward would not fit in the device's free memory (before any work)."""
    from .errors import ResourceError
    from .prior.memory import available_bytes, forward_bytes, gigabytes

    need = forward_bytes(den, 1, height, width) * images
    have = available_bytes(den.device)
    if have is not None and need > have:
        raise ResourceError(
            f"fusing {width}x{height} needs about {gigabytes(need)} for the prior's forward "
            f"({images:g} image(s) at a time), but {gigabytes(have)} are free on {den.device}; "
            + ("use smaller tiles (--tile 256 --tile-batch 1), " if tiled else "denoise in tiles (e.g. --tile 256), ")
            + "fuse fewer images at a time, or use a machine with more memory"
        )


def _load(
    sources: Sequence[SourceLike], names: Sequence[str] | None, max_pixels: int | None = None
) -> tuple[list[np.ndarray], list[str], int]:
    from .io import Image, read_image, to_float_image

    if isinstance(sources, (str, os.PathLike, np.ndarray, Image)):
        raise ValueError("sources must be a list of two or more images (paths or arrays), not a single one")
    if names is not None and len(names) != len(sources):
        raise ValueError(f"got {len(names)} names for {len(sources)} sources")
    images, out_names, depth = [], [], 8
    for i, s in enumerate(sources):
        if isinstance(s, (str, os.PathLike)):
            img = read_image(s, max_pixels)
            images.append(img.data)
            depth = max(depth, img.bit_depth)
            out_names.append(names[i] if names else str(s))
        elif isinstance(s, Image):  # decoded already (e.g. an upload): as if read from its file
            images.append(s.data)
            depth = max(depth, s.bit_depth)
            out_names.append(names[i] if names else s.path or f"source{i + 1}")
        else:
            arr = np.asarray(s)
            images.append(to_float_image(arr, names[i] if names else f"source {i + 1}"))
            if arr.dtype == np.uint16:
                depth = 16
            out_names.append(names[i] if names else f"source{i + 1}")
    return images, out_names, depth


def _prepare(sources, names, task, resize, multiple, seed, max_pixels=None, register="off") -> _Item:
    from . import color, geometry, registration, tasks

    images, names, depth = _load(sources, names, max_pixels)
    notes = []
    paths = [Path(s).resolve() for s in sources if isinstance(s, (str, os.PathLike))]
    if len(set(paths)) < len(paths):
        import warnings

        warnings.warn(
            "the same file is given more than once as a source; fusing an image with itself changes nothing",
            stacklevel=3,
        )
    if len(images) < 2:
        raise ValueError(f"fusion needs at least two sources, got {len(images)}; give two or more registered images")
    if resize:
        h, w = images[0].shape[:2]
        for i in range(1, len(images)):
            if images[i].shape[:2] != (h, w):
                notes.append(f"{names[i]} resized from {images[i].shape[1]}x{images[i].shape[0]} to {w}x{h}")
                images[i] = geometry.resize_to(images[i], h, w)
    summary = None
    if register != "off":
        aligned = registration.align(images, names, register)
        images, summary = aligned.images, aligned.summary()
        notes += aligned.notes()
    geometry.check_same_size(images, names)
    info = tasks.resolve_task(task, images, names)
    images = [images[i] for i in info.order]
    names = [names[i] for i in info.order]
    lum = [color.luminance(im) for im in images]
    height, width = images[0].shape[:2]
    pad = geometry.padding_for(height, width, multiple)
    return _Item(images, names, lum, info, pad, int(seed), depth, notes, summary)


def fuse(
    sources: Sequence[SourceLike],
    *,
    method: str = "dig2dig",
    steps: int | str | Sequence[int] | None = None,
    seed: int = 0,
    task: str = "auto",
    prior=None,
    prior_spec=None,
    device=None,
    resize: bool = False,
    register: str = "off",
    names: Sequence[str] | None = None,
    history: bool = False,
    record: bool = False,
    profile: bool = False,
    max_pixels: int | None = None,
    progress: bool | Callable[[int, int], None] = False,
    **options,
) -> FusionResult:
    """Fuse two or more registered images of one scene.

    ``sources``: file paths, decoded :class:`dig2dig.io.Image` objects, or arrays (uint8/uint16, or
    float in [0, 1]; (H, W) or (H, W, 3)).
    ``method``: ``"dig2dig"``, ``"ddfm"``, ``"ccf"`` or a classical baseline.  ``steps``: a step
    count, ``"power:N:P"``, ``"uniform:N"`` or an explicit timestep list.  ``seed`` fixes the initial
    noise (the same seed gives the same output, bit for bit, on one machine).  ``task``: ``auto``,
    ``vif``, ``mif``, ``mef`` or ``mff``.  ``prior``: a :class:`~dig2dig.prior.Denoiser`, a checkpoint
    path, or None for the embedded prior.  ``history`` keeps x̂0 before and after guidance at every
    step; ``record`` keeps what a method's figures need (Dig2DIG's DIG maps, for
    :func:`dig2dig.viz.save_dig`); ``profile`` synchronises the device after each prior forward so
    that ``timings`` are exact on a GPU; ``max_pixels`` (default 200 million) refuses larger source
    files before decoding them.  Everything is checked before the sampling starts -- options, device,
    image sizes, and the memory the prior's forward will need against what the device has free.
    ``register`` (``"rigid"``, ``"affine"`` or ``"homography"``; default ``"off"``) aligns every
    source to the first before fusing (:mod:`dig2dig.registration`; sources may then differ in size,
    the output has the first one's); the estimated transforms are in ``config["registration"]``.
    Extra keyword arguments are the method's options:

    {options}
    """
    return fuse_batch(
        [sources],
        method=method,
        steps=steps,
        seeds=[seed],
        task=task,
        prior=prior,
        prior_spec=prior_spec,
        device=device,
        resize=resize,
        register=register,
        names=[names] if names else None,
        history=history,
        record=record,
        profile=profile,
        max_pixels=max_pixels,
        progress=progress,
        **options,
    )[0]


def fuse_batch(
    batch: Sequence[Sequence[SourceLike]],
    *,
    method: str = "dig2dig",
    steps: int | str | Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    seed: int = 0,
    task: str = "auto",
    prior=None,
    prior_spec=None,
    device=None,
    resize: bool = False,
    register: str = "off",
    names: Sequence[Sequence[str] | None] | None = None,
    history: bool = False,
    record: bool = False,
    profile: bool = False,
    max_pixels: int | None = None,
    progress: bool | Callable[[int, int], None] = False,
    max_batch: int = 1,
    **options,
) -> list[FusionResult]:
    """Fuse several source sets with one prior load.

    Item ``k`` uses ``seeds[k]`` (default ``derive_seed(seed, k)``).  By default (``max_batch=1``)
    the items run one after another, so ``fuse_batch(items)[k]`` is byte for byte
    ``fuse(items[k], seed=seeds[k])``.  ``max_batch > 1`` runs up to that many sets of one padded
    size together through the network (faster on a GPU); a batched convolution rounds differently
    from a single one, so those outputs may then differ from the items run alone by float rounding
    (luminance within about 1e-5, now and then one grey level in the saved image).  Other arguments
    as for :func:`fuse`.
    """
    spec = FusionSpec(
        method=method,
        options=options,
        steps=steps,
        seed=seed,
        task=task,
        prior=prior,
        prior_spec=prior_spec,
        device=device,
        resize=resize,
        register=register,
        max_pixels=max_pixels,
    )
    return run(
        spec.resolve(),
        batch,
        seeds=seeds,
        names=names,
        history=history,
        record=record,
        profile=profile,
        progress=progress,
        max_batch=max_batch,
    )


def run(
    resolved: ResolvedSpec,
    batch: Sequence[Sequence[SourceLike]],
    *,
    seeds: Sequence[int] | None = None,
    names: Sequence[Sequence[str] | None] | None = None,
    tasks: Sequence[str | None] | None = None,
    history: bool = False,
    record: bool = False,
    profile: bool = False,
    progress: bool | Callable[[int, int], None] = False,
    max_batch: int = 1,
) -> list[FusionResult]:
    """Fuse ``batch`` with a resolved request (what every front end calls).

    ``seeds``: one per item (default: derived from the spec's seed and the item's index);
    ``tasks``: per-item tasks where an item names its own (None: the spec's).  Other arguments as
    for :func:`fuse_batch`."""
    from .tasks import check_task

    t_start = time.perf_counter()
    m, opts, popts, grid, den = resolved.method, resolved.opts, resolved.popts, resolved.grid, resolved.den
    if isinstance(max_batch, bool) or int(max_batch) < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    max_batch = min(int(max_batch), opts.max_batch() or int(max_batch))
    multiple = den.spatial_multiple if den is not None else 1
    if seeds is None:
        seeds = [derive_seed(resolved.spec.seed, k) for k in range(len(batch))]
    if len(seeds) != len(batch):
        raise ValueError(f"got {len(seeds)} seeds for {len(batch)} items")
    seeds = [check_seed(s) for s in seeds]
    if tasks is not None and len(tasks) != len(batch):
        raise ValueError(f"got {len(tasks)} tasks for {len(batch)} items")
    item_tasks = [check_task(t) if t else resolved.task for t in (tasks or [None] * len(batch))]
    for src in batch:  # the count before any image is read
        if isinstance(src, (list, tuple)):
            m.check_sources(len(src))
    s = resolved.spec
    items = [
        _prepare(
            src, names[k] if names else None, item_tasks[k], s.resize, multiple, seeds[k], s.max_pixels, s.register
        )
        for k, src in enumerate(batch)
    ]
    for it in items:
        m.check_sources(len(it.images))
    t_prep = time.perf_counter() - t_start

    groups: dict[tuple[tuple[int, int], int, str], list[int]] = {}  # (padded shape, sources, task) -> items
    for k, it in enumerate(items):
        groups.setdefault((it.padding.shape, len(it.images), it.task.name), []).append(k)
    tiles: dict[tuple[int, int], int | None] = {}
    if den is not None:  # tiles and memory decided for every size before any sampling starts
        from .prior.execution import choose_tile

        for (shape, n_src, _), ks in groups.items():
            images = min(len(ks), max_batch) * opts.forward_images(n_src)
            tile = tiles[shape] = choose_tile(den, popts.tile, *shape, images, popts.tile_batch)
            if tile is None:
                check_memory(den, images, *shape)
            else:
                check_memory(den, popts.tile_batch, min(tile, shape[0]), min(tile, shape[1]), tiled=True)
    results: list[FusionResult | None] = [None] * len(items)
    runner = _Run(m, opts, grid, den, popts, tiles, history=history, record=record, profile=profile, progress=progress)
    for ks in groups.values():
        for lo in range(0, len(ks), max_batch):
            chunk = ks[lo : lo + max_batch]
            for k, r in zip(chunk, runner([items[k] for k in chunk])):
                r.timings["prepare_s"] = t_prep / len(items)
                results[k] = r
    return results  # type: ignore[return-value]


@dataclass
class _Run:
    """One method with its options, grid and prior, applied to batches of prepared items."""

    method: Any
    opts: Any
    grid: list[int]
    den: Any
    popts: Any = None  # PriorOptions
    tiles: dict = field(default_factory=dict)  # padded shape -> tile size (None: whole image)
    history: bool = False
    record: bool = False
    profile: bool = False
    progress: Any = False

    def __call__(self, items: list[_Item]) -> list[FusionResult]:
        return self.diffusion(items) if self.method.needs_prior else self.classical(items)

    def diffusion(self, items: list[_Item]) -> list[FusionResult]:
        import torch

        from . import geometry
        from .functional import luma, to_signed, to_unit
        from .methods import BuildContext
        from .prior import TimedDenoiser
        from .prior.execution import ExecutedDenoiser
        from .sampler import ddim, initial_noise

        m, grid, po = self.method, self.grid, self.popts
        executed = ExecutedDenoiser(
            self.den,
            precision=po.precision,
            tile=self.tiles.get(items[0].padding.shape),
            tile_overlap=po.tile_overlap,
            tile_batch=po.tile_batch,
            compile=po.compile,
        )
        prior = TimedDenoiser(executed, sync=self.profile)
        dev = prior.device
        pad = items[0].padding
        t0 = time.perf_counter()
        seeds = [it.seed for it in items]
        srcs = [
            torch.from_numpy(to_signed(np.stack([geometry.pad(it.lum[r], pad) for it in items])[:, None])).to(dev)
            for r in range(len(items[0].lum))
        ]
        rectify = m.build(BuildContext(srcs, prior, grid, seeds, items[0].task.name, self.record), self.opts)
        x_T = initial_noise((len(items), prior.channels, *pad.shape), seeds, dev)
        hist: list[list[dict]] = [[] for _ in items]
        bar = None
        if self.progress is True:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(grid), desc=m.name, unit="step", leave=False)

        def on_step(o):
            if self.history:
                y_hat = to_unit(geometry.crop(luma(o.x0_hat), pad)).float().cpu().numpy()
                y_new = to_unit(geometry.crop(luma(o.x0), pad)).float().cpu().numpy()
                for b in range(len(items)):
                    hist[b].append({"step": o.step.index, "t": o.step.t, "x0_hat": y_hat[b, 0], "x0": y_new[b, 0]})
            if bar is not None:
                bar.update(o.next_index - o.step.index)
            elif callable(self.progress):
                self.progress(o.next_index, o.step.count)

        s0 = time.perf_counter()
        out = ddim(prior, x_T, grid, rectify, callback=on_step)
        y = to_unit(geometry.crop(luma(out.x0), pad).clamp(-1, 1)).float().cpu().numpy()[:, 0]
        sample_s = time.perf_counter() - s0
        if bar is not None:
            bar.close()
        n = len(items)
        timings = {
            "sample_total_s": sample_s / n,
            "prior_forward_s": prior.seconds / n,
            "outside_prior_s": (sample_s - prior.seconds) / n,
            "prior_forwards": prior.images / n,
            "prior_calls": prior.calls,
            "per_step_s": sample_s / max(out.steps_taken, 1),
            "synchronised": bool(self.profile or dev.type != "cuda"),
        }
        extra = {
            "steps": len(grid),
            "steps_taken": out.steps_taken,
            "grid": list(grid),
            "prior": _prior_summary(self.den),
            "device": str(dev),
            "prior_run": executed.describe(),
        }
        results = [
            _result(
                it,
                m,
                self.opts,
                y[b],
                extra,
                timings,
                (time.perf_counter() - t0) / n,
                hist[b] if self.history else None,
            )
            for b, it in enumerate(items)
        ]
        for b, r in enumerate(results):
            r.guidance = rectify.item_records(out.state, b, lambda a: geometry.crop(a, pad))
        return results

    def classical(self, items: list[_Item]) -> list[FusionResult]:
        results = []
        for it in items:
            t0 = time.perf_counter()
            y = np.clip(self.method.classical(it.lum, **self.opts.values()), 0.0, 1.0).astype(np.float32)
            results.append(
                _result(
                    it,
                    self.method,
                    self.opts,
                    y,
                    {"steps": 0, "grid": [], "prior": None, "device": "cpu"},
                    {},
                    time.perf_counter() - t0,
                    None,
                )
            )
        return results


def _result(it: _Item, m, opts, y: np.ndarray, extra: dict, timings: dict, run_s: float, hist) -> FusionResult:
    from . import color

    if not np.isfinite(y).all():  # never write NaN or inf as a (black) image
        raise ValueError(
            f"{m.name} produced non-finite values (NaN or inf) with options {opts.to_dict()}; use "
            f"settings nearer the defaults (docs/options.md)"
        )
    from ._version import __version__
    from .tasks import chroma_order

    t1 = time.perf_counter()
    chroma = color.fuse_chroma([it.images[i] for i in chroma_order(it.task)], it.task.chroma)
    image = color.compose(y, chroma)
    pad = it.padding
    config = {
        "dig2dig": __version__,
        "method": m.name,
        "options": opts.to_dict(),
        **extra,
        "seed": it.seed,
        "task": it.task.name,
        "task_reason": it.task.reason,
        "roles": dict(zip(it.task.roles, it.names)),
        "size": [pad.height, pad.width],
        "padded_size": list(pad.shape),
        "notes": it.notes,
        "registration": it.registration,
    }
    timings = {**timings, "finish_s": time.perf_counter() - t1, "run_s": run_s}
    return FusionResult(
        image=image,
        luminance=y,
        seed=it.seed,
        task=it.task.name,
        method=m.name,
        config=config,
        timings=timings,
        history=hist,
        bit_depth=it.bit_depth,
    )


def _prior_summary(den) -> dict:
    s = den.spec
    return {"format": s.format, "name": s.name, "source": s.source, "sha256": s.sha256, "channels": s.channels}


def _document_options() -> None:
    from .methods import options_markdown

    if fuse.__doc__ is None:  # docstrings stripped (python -OO)
        return
    table = options_markdown().replace("\n", "\n    ")
    fuse.__doc__ = fuse.__doc__.replace("{options}", table.rstrip())


_document_options()
