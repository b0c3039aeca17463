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
from typing import Any, Union

import numpy as np

SourceLike = Union[str, os.PathLike, np.ndarray]


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
        from .io import SIXTEEN_BIT_SUFFIXES, write_image

        if bit_depth is None:
            bit_depth = 16 if self.bit_depth == 16 and Path(path).suffix.lower() in SIXTEEN_BIT_SUFFIXES else 8
        return write_image(path, self.image, bit_depth)


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


def derive_seed(seed: int, item_id: str | int) -> int:
    """A stable per-item seed from (global seed, item id): same pair -> same noise, however run."""
    import hashlib

    digest = hashlib.sha256(f"{int(seed)}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


_PRIORS: dict[tuple, Any] = {}


def resolve_prior(prior=None, *, prior_spec=None, device=None):
    """A :class:`~dig2dig.prior.Denoiser` from a Denoiser, a path, or None (embedded); cached."""
    import torch

    from .prior import Denoiser, load_prior

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(prior, Denoiser):
        return prior.to(device)
    if prior is None or str(prior) == "embedded":
        from .prior import embedded

        prior = None
        key = ("embedded", str(embedded.EMBEDDED_DIR), str(device))
    else:
        key = (str(prior), str(prior_spec), str(device))
    if key not in _PRIORS:
        _PRIORS[key] = load_prior(prior, spec=prior_spec, device=device)
    return _PRIORS[key]


def _load(sources: Sequence[SourceLike], names: Sequence[str] | None) -> tuple[list[np.ndarray], list[str], int]:
    from .io import read_image, to_float_image

    if isinstance(sources, (str, os.PathLike, np.ndarray)):
        raise ValueError("sources must be a list of two or more images (paths or arrays), not a single one")
    if names is not None and len(names) != len(sources):
        raise ValueError(f"got {len(names)} names for {len(sources)} sources")
    images, out_names, depth = [], [], 8
    for i, s in enumerate(sources):
        if isinstance(s, (str, os.PathLike)):
            img = read_image(s)
            images.append(img.data)
            depth = max(depth, img.bit_depth)
            out_names.append(names[i] if names else str(s))
        else:
            arr = np.asarray(s)
            images.append(to_float_image(arr, names[i] if names else f"source {i + 1}"))
            if arr.dtype == np.uint16:
                depth = 16
            out_names.append(names[i] if names else f"source{i + 1}")
    return images, out_names, depth


def _prepare(sources, names, task, resize, multiple, seed) -> _Item:
    from . import color, geometry, tasks

    images, names, depth = _load(sources, names)
    notes = []
    if len(images) < 2:
        raise ValueError(f"fusion needs at least two sources, got {len(images)}")
    if resize:
        h, w = images[0].shape[:2]
        for i in range(1, len(images)):
            if images[i].shape[:2] != (h, w):
                notes.append(f"{names[i]} resized from {images[i].shape[1]}x{images[i].shape[0]} to {w}x{h}")
                images[i] = geometry.resize_to(images[i], h, w)
    geometry.check_same_size(images, names)
    info = tasks.resolve_task(task, images, names)
    images = [images[i] for i in info.order]
    names = [names[i] for i in info.order]
    lum = [color.luminance(im) for im in images]
    pad = geometry.padding_for(*images[0].shape[:2], multiple)
    return _Item(images, names, lum, info, pad, int(seed), depth, notes)


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
    names: Sequence[str] | None = None,
    history: bool = False,
    progress: bool | Callable[[int, int], None] = False,
    **options,
) -> FusionResult:
    """Fuse two or more registered images of one scene.

    ``sources``: file paths or arrays (uint8/uint16, or float in [0, 1]; (H, W) or (H, W, 3)).
    ``method``: ``"dig2dig"``, ``"ddfm"`` or a classical baseline.  ``steps``: a step count, ``"power:N:P"`` or an explicit timestep list.
    ``seed`` fixes the initial noise (the same seed gives the same output, bit for bit, on one
    machine).  ``task``: ``auto``, ``vif``, ``mif``, ``mef`` or ``mff``.  ``prior``: a
    :class:`~dig2dig.prior.Denoiser`, a checkpoint path, or None for the embedded prior.
    Extra keyword arguments are the method's options (Dig2DIG: ``interval``, ``distance``,
    ``temperature``, ``weights``, ``mixing``, ``smooth``, ``dig_scale``, ``power``, ``record``;
    DDFM: ``mapping``, ``lamb``, ``rho``).
    """
    return fuse_batch([sources], method=method, steps=steps, seeds=[seed], task=task, prior=prior,
                      prior_spec=prior_spec, device=device, resize=resize, names=[names] if names else None,
                      history=history, progress=progress, **options)[0]


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
    names: Sequence[Sequence[str] | None] | None = None,
    history: bool = False,
    progress: bool | Callable[[int, int], None] = False,
    max_batch: int = 8,
    **options,
) -> list[FusionResult]:
    """Fuse several source sets; sets of one padded size run together through one sampler call.

    Item ``k`` uses ``seeds[k]`` (default ``derive_seed(seed, k)``), so ``fuse_batch(items)[k]``
    equals ``fuse(items[k], seed=seeds[k])``.
    """
    import torch

    from .methods import get_method

    t_start = time.perf_counter()
    m = get_method(method)
    opts = m.options(options)
    if m.needs_prior:
        grid = m.grid(steps if steps is not None else m.default_steps, **opts)
        den = resolve_prior(prior, prior_spec=prior_spec, device=device)
        multiple = den.spatial_multiple
    else:
        if steps is not None:
            raise ValueError(f"method {m.name!r} is not a diffusion method and takes no steps")
        grid, den, multiple = [], None, 1
    if seeds is None:
        seeds = [derive_seed(seed, k) for k in range(len(batch))]
    if len(seeds) != len(batch):
        raise ValueError(f"got {len(seeds)} seeds for {len(batch)} items")
    items = [_prepare(src, names[k] if names else None, task, resize, multiple, seeds[k])
             for k, src in enumerate(batch)]
    for it in items:
        m.check_sources(len(it.images))
    t_prep = time.perf_counter() - t_start

    groups: dict[tuple, list[int]] = {}
    for k, it in enumerate(items):
        groups.setdefault((it.padding.shape, len(it.images), it.task.name), []).append(k)
    results: list[FusionResult | None] = [None] * len(items)
    if opts.get("accelerate"):
        max_batch = 1  # Dig2DIG's merged steps are decided per image: a batch must not share them
    for ks in groups.values():
        for lo in range(0, len(ks), max_batch):
            chunk = ks[lo: lo + max_batch]
            run = _run if m.needs_prior else _run_classical
            outs = run(den, m, opts, grid, [items[k] for k in chunk], history, progress)
            for k, r in zip(chunk, outs):
                r.timings["prepare_s"] = t_prep / len(items)
                results[k] = r
    return results  # type: ignore[return-value]


def _run(den, m, opts, grid, items: list[_Item], history: bool, progress) -> list[FusionResult]:
    import torch

    from . import color, geometry
    from .sampler import ddim, initial_noise

    dev = den.device
    pad = items[0].padding
    t0 = time.perf_counter()
    srcs = [
        torch.from_numpy(np.stack([geometry.pad(it.lum[r], pad) for it in items])[:, None] * 2 - 1).to(dev)
        for r in range(len(items[0].lum))
    ]
    if "task" in opts and opts["task"] is None:  # methods with per-task presets get the resolved task
        opts = {**opts, "task": items[0].task.name}
    rectify = m.build(srcs, den, grid, [it.seed for it in items], **opts)
    x_T = initial_noise((len(items), den.channels, *pad.shape), [it.seed for it in items], dev)
    hist: list[list[dict]] = [[] for _ in items]
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(grid), desc=m.name, unit="step", leave=False)

    taken = [0]

    def on_step(o):
        taken[0] += 1
        if history:
            y_hat = geometry.crop(color.luma_of(o.x0_hat), pad)
            y_new = geometry.crop(color.luma_of(o.x0), pad)
            for b in range(len(items)):
                hist[b].append({"step": o.step.index, "t": o.step.t,
                                "x0_hat": ((y_hat[b, 0] + 1) / 2).float().cpu().numpy(),
                                "x0": ((y_new[b, 0] + 1) / 2).float().cpu().numpy()})
        if bar is not None:
            bar.update(o.next_index - o.step.index)
        elif callable(progress):
            progress(o.next_index, o.step.count)

    fwd0, cnt0 = den.forward_s, den.forward_count
    out = ddim(den, x_T, grid, rectify, None, callback=on_step, advance=getattr(rectify, "advance", None),
               recompute_eps=getattr(rectify, "recompute_eps", True))
    fwd_s, fwd_n = den.forward_s - fwd0, den.forward_count - cnt0
    if bar is not None:
        bar.close()
    y = geometry.crop(color.luma_of(out.x0), pad).clamp(-1, 1)
    y = ((y + 1) / 2).float().cpu().numpy()[:, 0]
    n = len(items)
    timings = {**{f"sample_{k}": v / n for k, v in out.timings.items()}, "per_step_s": out.timings["total_s"] / max(taken[0], 1),
               "prior_forward_s": fwd_s / n, "prior_forwards": fwd_n / n}
    extra = {"steps": len(grid), "steps_taken": taken[0], "grid": list(grid), "prior": _prior_summary(den), "device": str(dev)}
    results = [_result(it, m, opts, y[b], extra, timings, (time.perf_counter() - t0) / n,
                       hist[b] if history else None) for b, it in enumerate(items)]
    if hasattr(rectify, "item_records"):
        for b, r in enumerate(results):
            r.guidance = rectify.item_records(out.state, b, lambda a: geometry.crop(a, pad))
    return results


def _run_classical(den, m, opts, grid, items: list[_Item], history: bool, progress) -> list[FusionResult]:
    results = []
    for it in items:
        t0 = time.perf_counter()
        y = np.clip(m.classical(it.lum, **opts), 0.0, 1.0).astype(np.float32)
        results.append(_result(it, m, opts, y, {"steps": 0, "grid": [], "prior": None, "device": "cpu"}, {},
                               time.perf_counter() - t0, None))
    return results


def _result(it: _Item, m, opts, y: np.ndarray, extra: dict, timings: dict, run_s: float, hist) -> FusionResult:
    from . import __version__, color
    from .tasks import chroma_order

    t1 = time.perf_counter()
    chroma = color.fuse_chroma([it.images[i] for i in chroma_order(it.task)], it.task.chroma)
    image = color.compose(y, chroma)
    pad = it.padding
    config = {
        "dig2dig": __version__, "method": m.name, "options": dict(opts), **extra, "seed": it.seed,
        "task": it.task.name, "task_reason": it.task.reason, "roles": dict(zip(it.task.roles, it.names)),
        "size": [pad.height, pad.width], "padded_size": list(pad.shape), "notes": it.notes,
    }
    timings = {**timings, "finish_s": time.perf_counter() - t1, "run_s": run_s}
    return FusionResult(image=image, luminance=y, seed=it.seed, task=it.task.name, method=m.name, config=config,
                        timings=timings, history=hist, bit_depth=it.bit_depth)


def _prior_summary(den) -> dict:
    s = den.spec
    return {"format": s.format, "name": s.name, "source": s.source, "sha256": s.sha256, "channels": s.channels}
