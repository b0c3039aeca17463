"""Fusing collections: items, the run's configuration, the output folder's state, and the driver.

One seam for ``dig2dig batch`` and ``dig2dig bench``:

* **Items** (:func:`collect_items`) come from a dataset folder ``<pair_id>/<role>.<ext>``, a CSV or
  JSONL manifest (an ``id`` plus source paths; optional ``task``, ``seed`` and ``output`` per item),
  or glob patterns matched by file stem (``ir/*.png vis/*.png``).  Items are sorted by id.
* **Configuration** (:class:`RunConfig`, resolved once by :meth:`RunConfig.resolve` before any
  item runs): method, options, steps, seed, task, prior, device.  Each item's *key* is a hash of
  what decides its output: method, options, grid, the item's seed, its task, the prior's sha256,
  the sources' sha256, the output format.  The item seed is ``derive_seed(seed, item id)`` (or the
  manifest's), so an item gives the same bytes alone, in a batch, in any shard and on any executor.
* **The output folder** (:class:`OutputFolder`): per item the image (``<id>.png``) and a JSON
  sidecar (``<id>.json``: key, configuration, seed, prior, sources, timings), each written
  atomically, the sidecar last -- an item is done when its sidecar holds the current key and the
  image it names exists.  An append-only run log (``log.jsonl``, one fsync'd JSON line per event,
  so a ``kill -9`` at any instant loses at most the line being written) and a summary
  (``summary.json``).  Shards log to ``log.shard-I-of-N.jsonl`` and ``summary.shard-I-of-N.json``.
* **Locks**: one run per folder (a sharded run per shard), with ``flock`` -- the operating system
  releases it when a run dies, so a crash never leaves the folder locked.
* **Resume**: rerunning the same command skips finished items.  An item finished with *other*
  settings is not silently reused and not silently overwritten: the run is refused before any work,
  naming what changed, unless ``overwrite=True`` (``--overwrite``), which redoes those items.
* **Failures**: a bad item is recorded with a one-line error and the run goes on; the summary lists
  the failures and :attr:`Summary.exit_code` is 1 if any item failed.

The executors that run the pending items -- in this process, in worker processes, or on a Ray
cluster -- are in :mod:`dig2dig.runtime`; all of them call the same
:class:`~dig2dig.runtime.FuseWorker`.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import RunError
from .io import (
    READ_SUFFIXES,
    SIXTEEN_BIT_SUFFIXES,
    WRITE_SUFFIXES,
    atomic_write_text,
    check_output_dir,
    file_sha256,
    list_images,
    remove_stale_temps,
)
from .runtime import Job, WorkerSpec, make_executor

MANIFEST_SUFFIXES = (".csv", ".jsonl")
RESERVED_COLUMNS = ("id", "task", "seed", "output")


# --------------------------------------------------------------------------------------------
# items


@dataclass(frozen=True)
class Item:
    """One set of sources to fuse into one output."""

    id: str
    sources: tuple[str, ...]
    names: tuple[str, ...] | None = None  # what task detection reads (default: the paths)
    task: str | None = None  # per item (manifest); None: the run's
    seed: int | None = None  # per item (manifest); None: derive_seed(run seed, id)
    output: str | None = None  # relative to the output folder (manifest); None: <id>.<ext>
    missing: tuple[str, ...] = ()  # glob patterns that matched no file of this stem
    error: str | None = None  # known before any work (a manifest row with one source): fails, the run goes on


def _check_id(item_id: str, where: str) -> str:
    item_id = str(item_id).strip()
    if not item_id or item_id in (".", "..") or item_id.startswith(".") or any(c in item_id for c in "/\\\0"):
        raise RunError(
            f"{where}: item id {item_id!r} cannot name a file; ids must be non-empty, not start with '.', "
            f"and contain no '/' or '\\'"
        )
    return item_id


def items_from_folder(folder: str | Path) -> list[Item]:
    """A dataset folder ``<pair_id>/<role>.<ext>``: one item per sub-folder with images (a sub-folder with
    a single image is an item too -- it fails, saying a source is missing, rather than vanishing)."""
    root = Path(folder)
    items, loose = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = list_images(d)
        if files:
            items.append(Item(_check_id(d.name, str(d)), tuple(str(f) for f in files)))
    if not any(len(it.sources) >= 2 for it in items):
        loose = list_images(root)
        hint = (
            (
                f"; it holds {len(loose)} image(s) directly -- for those, give glob patterns such as "
                f"'{root}/ir/*.png' '{root}/vis/*.png', or a manifest"
            )
            if loose
            else ""
        )
        raise RunError(f"{root} has no <pair_id>/ sub-folders with two or more images{hint}")
    return items


def _seed_value(value, where: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        seed = int(str(value).strip())
    except ValueError:
        raise RunError(f"{where}: seed {value!r} is not an integer") from None
    if not 0 <= seed < 2**63:
        raise RunError(f"{where}: seed {seed} must be in [0, 2**63)")
    return seed


def items_from_manifest(path: str | Path) -> list[Item]:
    """A CSV (header with ``id`` and source columns) or JSONL (``{"id": ..., "sources": [...]}`` or
    source keys) manifest.  Relative source paths are relative to the manifest's folder; named source
    columns (``ir``, ``vis``, ``mri`` ...) tell the task and roles, as file names do."""
    path = Path(path)
    base = path.parent
    rows: list[tuple[str, dict]] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise RunError(f"manifest {path} is not UTF-8 text") from None
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "id" not in reader.fieldnames:
            raise RunError(
                f"manifest {path} needs a header row with an 'id' column and source columns, "
                f"e.g. 'id,ir,vis'; its header is {reader.fieldnames}"
            )
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise RunError(
                    f"{where}: the row has more cells than the header has columns "
                    f"({len(reader.fieldnames)}: {', '.join(reader.fieldnames)}); name every column"
                )
            if not any(str(v or "").strip() for v in row.values()):
                continue  # an empty row (",,," from a spreadsheet)
            rows.append((where, row))
    else:
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RunError(f"{path}:{n}: not a JSON object ({e.msg})") from None
            if not isinstance(row, dict) or "id" not in row:
                raise RunError(f"{path}:{n}: each line must be a JSON object with an 'id' and its sources")
            rows.append((f"{path}:{n}", row))
    if not rows:
        raise RunError(f"manifest {path} lists no items; add one line per item (an id and its sources)")
    items = []
    for where, row in rows:
        if isinstance(row.get("sources"), list):
            srcs, names = [str(s) for s in row["sources"]], None
        else:
            cols = [k for k in row if k not in RESERVED_COLUMNS and k is not None and str(row[k] or "").strip()]
            srcs = [str(row[k]).strip() for k in cols]
            names = tuple(f"{k}{Path(s).suffix}" for k, s in zip(cols, srcs))
        error = f"{where} lists {len(srcs)} source(s); a source is missing" if len(srcs) < 2 else None
        srcs = [str(p if (p := Path(s).expanduser()).is_absolute() else base / p) for s in srcs]
        out = str(row.get("output") or "").strip() or None
        if out is not None and (Path(out).is_absolute() or ".." in Path(out).parts):
            raise RunError(f"{where}: output {out!r} must be a path inside the output folder")
        if out is not None and Path(out).suffix.lower() not in WRITE_SUFFIXES:
            raise RunError(f"{where}: output {out!r} needs one of the extensions {', '.join(WRITE_SUFFIXES)}")
        task = str(row.get("task") or "").strip().lower() or None
        if task is not None and task not in ("auto", *_tasks()):
            raise RunError(f"{where}: task {task!r} is not one of auto, {', '.join(_tasks())}")
        if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
            raise RunError(f"{where}: id {row['id']!r} must be a string or a number")
        items.append(
            Item(
                _check_id(row["id"], where),
                tuple(srcs),
                names,
                task,
                _seed_value(row.get("seed"), where),
                out,
                error=error,
            )
        )
    return items


def _tasks() -> tuple[str, ...]:
    from .tasks import TASKS

    return TASKS


def items_from_globs(patterns: Sequence[str]) -> list[Item]:
    """Items from two or more glob patterns, matched by file stem: ``ir/*.png vis/*.png`` pairs
    ``ir/0001.png`` with ``vis/0001.png``.  Stems missing from some pattern are reported."""
    if len(patterns) < 2:
        raise RunError(
            f"one pattern ({patterns[0]!r}) matches single images; give one pattern per source, e.g. "
            f"'ir/*.png' 'vis/*.png', a dataset folder, or a manifest"
        )
    by_pattern = []
    for pat in patterns:
        files = sorted(
            Path(f)
            for f in glob.glob(os.path.expanduser(pat))
            if Path(f).suffix.lower() in READ_SUFFIXES and Path(f).is_file()
        )
        if not files:
            raise RunError(f"pattern {pat!r} matches no image file ({', '.join(READ_SUFFIXES)})")
        stems: dict[str, Path] = {}
        for f in files:
            if f.stem in stems:
                raise RunError(f"pattern {pat!r} matches two files with the stem {f.stem!r}: {stems[f.stem]} and {f}")
            stems[f.stem] = f
        by_pattern.append(stems)
    common = set.intersection(*(set(s) for s in by_pattern))
    if not common:
        raise RunError(f"no file stem is matched by every pattern {list(patterns)}")
    every = sorted(set.union(*(set(s) for s in by_pattern)))
    # a stem some pattern lacks is an item with fewer sources: it fails, naming the missing pattern
    return [
        Item(
            _check_id(stem, "glob"),
            tuple(str(s[stem]) for s in by_pattern if stem in s),
            missing=tuple(p for p, s in zip(patterns, by_pattern) if stem not in s),
        )
        for stem in every
    ]


def collect_items(inputs: Sequence[str | Path]) -> list[Item]:
    """Items from the command line's inputs: one dataset folder, one manifest, or glob patterns."""
    inputs = [str(i) for i in inputs]
    if not inputs:
        raise RunError("give a dataset folder, a manifest (.csv/.jsonl) or glob patterns")
    if len(inputs) > 1:
        odd = [i for i in inputs if Path(i).is_dir() or Path(i).suffix.lower() in MANIFEST_SUFFIXES]
        if odd:
            raise RunError(
                f"{odd[0]!r} is a folder or a manifest: give one dataset folder, one manifest, or glob "
                f"patterns (one per source), not a mix"
            )
    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        items = items_from_folder(inputs[0])
    elif len(inputs) == 1 and Path(inputs[0]).suffix.lower() in MANIFEST_SUFFIXES:
        if not Path(inputs[0]).is_file():
            raise RunError(f"manifest {inputs[0]!r} does not exist")
        items = items_from_manifest(inputs[0])
    elif len(inputs) == 1 and not glob.has_magic(inputs[0]):
        raise RunError(f"input {inputs[0]!r} is neither a folder nor a manifest (.csv/.jsonl) that exists")
    else:
        items = items_from_globs(inputs)
    seen: dict[str, Item] = {}
    for it in items:
        if it.id in seen:
            raise RunError(f"item id {it.id!r} appears twice; ids must be unique")
        seen[it.id] = it
    return sorted(items, key=lambda it: it.id)


# --------------------------------------------------------------------------------------------
# shards


def parse_shard(spec: str | None, env: dict | None = None) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N; by default from RANK/WORLD_SIZE, then the SLURM array
    ((SLURM_ARRAY_TASK_ID - MIN) / STEP of SLURM_ARRAY_TASK_COUNT; an array that is not evenly spaced,
    such as ``--array=1,3,7``, is refused), else (0, 1)."""
    env = os.environ if env is None else env
    where = "--shard"
    if spec is None:
        if env.get("RANK") is not None and env.get("WORLD_SIZE") is not None:
            spec, where = f"{env['RANK']}/{env['WORLD_SIZE']}", "RANK/WORLD_SIZE"
        elif env.get("SLURM_ARRAY_TASK_ID") is not None and env.get("SLURM_ARRAY_TASK_COUNT") is not None:
            where = "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT"
            try:
                tid, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
                first = int(env.get("SLURM_ARRAY_TASK_MIN") or 0)
                last = int(env.get("SLURM_ARRAY_TASK_MAX") or first + count - 1)
                step = int(env.get("SLURM_ARRAY_TASK_STEP") or 1)
            except ValueError:
                spec = f"{env['SLURM_ARRAY_TASK_ID']}/{env['SLURM_ARRAY_TASK_COUNT']}"
            else:
                # shards must be 0 … N-1: only an array MIN-MAX[:STEP] with COUNT tasks maps onto them
                if step < 1 or last - first != (count - 1) * step or (tid - first) % step:
                    raise RunError(
                        f"the SLURM array (ids {first}-{last}, step {step}, {count} tasks) is not "
                        f"evenly spaced, so its tasks cannot be numbered as shards; give each task "
                        f"--shard I/N explicitly"
                    )
                spec = f"{(tid - first) // step}/{count}"
        else:
            return 0, 1
    i, sep, n = str(spec).partition("/")
    try:
        i, n = int(i), int(n)
    except ValueError:
        raise RunError(f"{where} {spec!r}: write I/N, e.g. 0/4 for the first of four shards") from None
    if not sep or n < 1 or not 0 <= i < n:
        raise RunError(f"{where} {spec!r}: write I/N with 0 <= I < N (shards are numbered from 0), e.g. 0/4 … 3/4")
    return i, n


def select_shard(items: Sequence[Item], index: int, count: int) -> list[Item]:
    """Item k of the id-sorted list belongs to shard k mod count."""
    ordered = sorted(items, key=lambda it: it.id)
    return [it for k, it in enumerate(ordered) if k % count == index]


# --------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class RunConfig:
    """What a batch run fuses with: everything but the items."""

    method: str = "dig2dig"
    options: dict = field(default_factory=dict)
    steps: Any = None  # None: the method's default
    seed: int = 0
    task: str = "auto"
    prior: str | None = None
    prior_spec: str | None = None
    device: str | None = None
    resize: bool = False
    ext: str = ".png"
    bit_depth: int | None = None  # None: 16 if a source is 16-bit and the format allows, else 8
    max_pixels: int | None = None  # None: dig2dig.io.MAX_PIXELS

    def resolve(self, prior_device: str | None = "run") -> ResolvedRun:
        """Validate everything before any item runs: method, options, steps, task, output format,
        device, and the prior (loaded once here, which also checks it).  ``prior_device``: where the
        driver loads the prior to check it ("run": the run's device; "cpu" when the items run on a
        cluster whose devices this machine may not have)."""
        from .methods import get_method
        from .tasks import TASKS

        m = get_method(self.method)
        opts, popts = m.split(self.options)
        if self.task != "auto" and self.task not in TASKS:
            raise RunError(f"unknown task {self.task!r}; use one of auto, {', '.join(TASKS)}")
        ext = self.ext if self.ext.startswith(".") else f".{self.ext}"
        if ext.lower() not in WRITE_SUFFIXES:
            raise RunError(f"output format {self.ext!r} is not one of {', '.join(WRITE_SUFFIXES)}")
        if self.bit_depth not in (None, 8, 16) or (self.bit_depth == 16 and ext.lower() not in SIXTEEN_BIT_SUFFIXES):
            raise RunError(f"bit depth {self.bit_depth} is not possible for {ext} output (16 needs .png or .tif)")
        from .api import check_seed

        check_seed(self.seed)
        if self.max_pixels is not None and int(self.max_pixels) < 1:
            raise RunError(f"max_pixels must be at least 1, got {self.max_pixels}")
        prior = None
        if m.needs_prior:
            grid = m.grid(self.steps if self.steps is not None else m.default_steps, opts)
            from .prior import resolve_prior

            den = resolve_prior(
                self.prior, prior_spec=self.prior_spec, device=self.device if prior_device == "run" else prior_device
            )
            what = {k: v for k, v in den.spec.to_dict().items() if k not in ("name", "source", "sha256", "extra")}
            prior = {
                "name": den.spec.name,
                "sha256": den.spec.sha256,
                "source": den.spec.source,
                "spec_sha256": hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest(),
            }
        else:
            if self.steps is not None:
                raise RunError(f"method {m.name!r} is not a diffusion method and takes no steps")
            grid = []
        return ResolvedRun(
            self, m.name, opts.to_dict(), list(grid), prior, ext.lower(), popts.to_dict() if m.needs_prior else {}
        )


@dataclass(frozen=True)
class ResolvedRun:
    config: RunConfig
    method: str
    options: dict  # validated, defaults filled in, JSON-able
    grid: list[int]
    prior: dict | None  # name, sha256, source; None for classical methods
    ext: str
    prior_options: dict = field(default_factory=dict)  # tiles, precision, compilation
    compute: dict = field(default_factory=dict)  # device type and CPU threads: they change the bytes too

    def item_seed(self, item: Item) -> int:
        from .api import derive_seed

        return item.seed if item.seed is not None else derive_seed(self.config.seed, item.id)

    def item_task(self, item: Item) -> str:
        return item.task or self.config.task

    def item_config(self, item: Item, source_sha: list[str]) -> dict:
        """What decides the item's output bytes (hashed into its key): the method and its settings, the
        prior's weights and architecture, the sources, what task detection reads, the output format,
        where and with how many CPU threads it runs (float sums differ), and dig2dig's version."""
        from ._version import __version__
        from .tasks import name_hints

        task = self.item_task(item)
        names = list(item.names or [str(Path(s)) for s in item.sources])
        out = {
            "method": self.method,
            "options": self.options,
            "prior_options": self.prior_options,
            "grid": self.grid,
            "seed": self.item_seed(item),
            "task": task,
            "prior_sha256": self.prior["sha256"] if self.prior else None,
            "prior_spec_sha256": self.prior.get("spec_sha256") if self.prior else None,
            "sources_sha256": source_sha,
            "resize": self.config.resize,
            "format": Path(item.output).suffix.lower() if item.output else self.ext,
            "bit_depth": self.config.bit_depth,
            "dig2dig": __version__,
        }
        if task == "auto":
            out["task_hints"] = name_hints(names)
        if self.prior:  # classical methods run the same NumPy/OpenCV code on any machine
            out["compute"] = self.compute
        return out

    def describe(self) -> dict:
        c = self.config
        return {
            "method": self.method,
            "options": self.options,
            "prior_options": self.prior_options,
            "steps": c.steps,
            "grid": self.grid,
            "seed": c.seed,
            "task": c.task,
            "prior": self.prior,
            "device": c.device,
            "resize": c.resize,
            "format": self.ext,
            "bit_depth": c.bit_depth,
        }


def config_key(item_config: dict) -> str:
    return hashlib.sha256(json.dumps(item_config, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# the output folder


def _shard_tag(index: int, count: int) -> str:
    return "" if count == 1 else f".shard-{index}-of-{count}"


class OutputFolder:
    """The batch run's folder: outputs, sidecars, the run log, the summary and the lock."""

    def __init__(self, root: str | Path, shard: tuple[int, int] = (0, 1)):
        self.root = Path(root)
        self.shard = shard
        tag = _shard_tag(*shard)
        self.log_path = self.root / f"log{tag}.jsonl"
        self.summary_path = self.root / f"summary{tag}.json"
        self._locks: list[int] = []

    def check(self) -> None:
        """Before any work: the folder is (or can be made) a writable folder whose parent exists."""
        if self.root.exists() and not self.root.is_dir():
            raise RunError(f"output {str(self.root)!r} is a file; give a folder (-o DIR)")
        if not self.root.parent.exists():
            raise RunError(f"the folder {str(self.root.parent)!r} that should hold {self.root.name!r} does not exist")
        check_output_dir(self.root, "output folder")

    def prepare(self) -> None:
        """Create the folder (after :meth:`check`)."""
        self.check()
        self.root.mkdir(exist_ok=True)

    def lock(self) -> None:
        """One run per folder: an exclusive lock for an unsharded run; a shared lock on the folder plus
        an exclusive one on its shard for a sharded run (shards of one split may work side by side,
        shards of another split -- another N -- may not, as they would share items)."""
        import fcntl

        index, count = self.shard
        plan = [(self.root / ".dig2dig.lock", fcntl.LOCK_EX if count == 1 else fcntl.LOCK_SH)]
        if count > 1:
            plan.append((self.root / f".dig2dig{_shard_tag(index, count)}.lock", fcntl.LOCK_EX))
        for path, mode in plan:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                live = self._live_shards()
                holder = (
                    f"shard(s) {', '.join(live)} of another run"
                    if live and path.name == ".dig2dig.lock"
                    else os.pread(fd, 200, 0).decode(errors="replace").strip() or "another run"
                )
                os.close(fd)
                self.unlock()
                raise RunError(
                    f"{self.root} is in use by {holder}; wait for it to finish or use another output "
                    f"folder (a run that crashed holds no lock)"
                ) from None
            if mode == fcntl.LOCK_EX:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"dig2dig run pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            self._locks.append(fd)
        if count > 1:
            other = [t for t in self._live_shards() if not t.endswith(f"/{count}")]
            if other:
                self.unlock()
                raise RunError(
                    f"{self.root} is in use by shard(s) {', '.join(other)} of a run split into another "
                    f"number of shards; wait for them, or use the same split (--shard I/N with their N)"
                )

    def _live_shards(self) -> list[str]:
        """'I/N' of the shard locks that a live run holds (never those of this process)."""
        import fcntl
        import re

        live = []
        for p in sorted(self.root.glob(".dig2dig.shard-*-of-*.lock")):
            m = re.fullmatch(r"\.dig2dig\.shard-(\d+)-of-(\d+)\.lock", p.name)
            if not m or (int(m[1]), int(m[2])) == self.shard:
                continue
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                live.append(f"{m[1]}/{m[2]}")
            finally:
                os.close(fd)
        return live

    def unlock(self) -> None:
        for fd in self._locks:
            try:
                os.ftruncate(fd, 0)  # no stale "in use by" text for the next reader
            except OSError:
                pass
            os.close(fd)  # closing releases the flock
        self._locks.clear()

    def clean(self) -> list[Path]:
        """Temporary files that killed runs left behind (never those of live writers)."""
        return remove_stale_temps(self.root, recursive=True)

    def paths(self, item: Item, ext: str) -> tuple[Path, Path]:
        out = self.root / (item.output or f"{item.id}{ext}")
        return out, out.with_suffix(".json")

    def state(self, output: Path, sidecar: Path, key: str) -> tuple[str, dict | None]:
        """("done" | "todo" | "changed", the sidecar's record)."""
        if not sidecar.is_file():
            return "todo", None
        try:
            rec = json.loads(sidecar.read_text())
        except (OSError, json.JSONDecodeError):
            return "todo", None
        if not isinstance(rec, dict) or not isinstance(rec.get("key"), str):
            return "todo", None  # not a sidecar of ours (or damaged): redone
        if not isinstance(rec.get("config"), dict):
            rec["config"] = {}
        if rec.get("key") != key:
            return "changed", rec
        if not output.is_file() or file_sha256(output) != rec.get("output_sha256"):
            return "todo", rec  # missing or damaged since: redone
        return "done", rec

    def append_log(self, record: dict) -> None:
        """One JSON line, flushed and fsync'd: the log survives a kill at any instant."""
        line = json.dumps({"time": round(time.time(), 3), **record}, default=str) + "\n"
        fd = os.open(self.log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line  # a line torn by a kill: end it, so that this record stays whole
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)


def read_log(path: str | Path) -> list[dict]:
    """The run log's records; a torn last line (a kill mid-write) is skipped."""
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _changed_fields(old: dict, new: dict) -> str:
    diffs = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    shown = []
    for k in diffs[:4]:
        a, b = old.get(k), new.get(k)
        if k == "grid" and isinstance(a, list) and isinstance(b, list) and len(a) != len(b):
            shown.append(f"steps {len(a)} -> {len(b)}")
        elif k in ("grid", "sources_sha256"):
            shown.append("timestep grid" if k == "grid" else "source images")
        else:
            shown.append(f"{k} {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}")
    return ", ".join(shown) or "the configuration"


# --------------------------------------------------------------------------------------------
# the driver


@dataclass
class Summary:
    total: int  # items in this shard
    done: int = 0  # fused by this run
    skipped: int = 0  # already finished with the same configuration
    failed: list[dict] = field(default_factory=list)  # {"id", "error"}
    interrupted: bool = False
    aborted: str | None = None  # the executor itself failed (a cluster lost): the error, re-raised
    wall_s: float = 0.0
    shard: tuple[int, int] = (0, 1)

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else (1 if self.failed else 0)

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "done": self.done,
            "skipped": self.skipped,
            "failed": len(self.failed),
            "failures": self.failed,
            "interrupted": self.interrupted,
            "aborted": self.aborted,
            "wall_s": round(self.wall_s, 3),
            "items_per_minute": round(60 * self.done / self.wall_s, 3) if self.wall_s > 0 and self.done else None,
            "shard": f"{self.shard[0]}/{self.shard[1]}",
        }

    def line(self) -> str:
        parts = [f"{self.done} fused", f"{self.skipped} already done"]
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        rate = f", {60 * self.done / self.wall_s:.2f} items/min" if self.done and self.wall_s > 0 else ""
        head = "interrupted: " if self.interrupted else ""
        return f"{head}{', '.join(parts)} of {self.total} in {self.wall_s:.1f} s{rate}"


class Progress:
    """Items done / total with items per minute and an ETA: a bar on a terminal, a line per item otherwise."""

    def __init__(self, total: int, enabled: bool = True, stream=None):
        self.total, self.enabled, self.count, self.t0 = total, enabled, 0, time.perf_counter()
        self.stream = stream or sys.stderr
        self.bar = None
        if enabled and total and getattr(self.stream, "isatty", lambda: False)():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                unit="item",
                file=self.stream,
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {postfix}]",
            )

    def update(self, record: dict) -> None:
        self.count += 1
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        rate = self.count / elapsed * 60 if elapsed > 0 else 0.0
        if self.bar is not None:
            self.bar.set_postfix_str(f"{rate:.2f} items/min", refresh=False)
            self.bar.update(1)
            if record["status"] == "failed":
                self.bar.write(f"failed: {record['id']}: {record.get('error')}")
            return
        eta = (self.total - self.count) / rate if rate > 0 else 0.0
        what = "done" if record["status"] == "done" else f"FAILED: {record.get('error')}"
        print(
            f"[{self.count}/{self.total}] {record['id']} {what} ({record.get('seconds', 0):.1f} s); "
            f"{rate:.2f} items/min, ETA {eta:.1f} min",
            file=self.stream,
            flush=True,
        )

    def step(self, item: str, done: int, total: int) -> None:
        """The running item's diffusion steps, beside the bar (a terminal only; lines stay one per item)."""
        if self.bar is None:
            return
        now = time.perf_counter()
        if done < total and now - getattr(self, "_shown", 0.0) < 0.2:
            return
        self._shown = now
        elapsed = now - self.t0
        rate = f"{self.count / elapsed * 60:.2f} items/min, " if self.count and elapsed > 0 else ""
        self.bar.set_postfix_str(f"{rate}{item}: step {done}/{total}", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


RUN_FILES = ("log", "summary")  # log[.shard-I-of-N].jsonl, summary[.shard-I-of-N].json


def check_outputs(
    items: Sequence[Item],
    folder: OutputFolder,
    ext: str,
    inputs: Sequence[str | Path] = (),
    bit_depth: int | None = None,
) -> None:
    """Before any work: no two items write one file, no item writes over the run's own files, every
    item's format can hold the bit depth, and the output folder is not where sources live (outputs
    would become the next run's inputs)."""
    out = folder.root.resolve()
    for root in inputs:
        r = Path(root).resolve()
        if r.is_dir() and (out == r or r in out.parents):
            raise RunError(
                f"the output folder {str(folder.root)!r} is inside the dataset {str(root)!r}; its images "
                f"would become sources of the next run -- choose a folder outside it"
            )
    seen: dict[Path, str] = {}
    for it in items:
        for s in it.sources:
            d = Path(s).resolve().parent
            if d == out or out in d.parents:
                raise RunError(
                    f"the output folder {str(folder.root)!r} holds the sources of item {it.id!r} ({s}); "
                    f"choose a folder apart from the sources"
                )
        image, side = folder.paths(it, ext)
        if bit_depth == 16 and image.suffix.lower() not in SIXTEEN_BIT_SUFFIXES:
            raise RunError(
                f"item {it.id!r} writes {image.name}, which cannot hold 16 bits; give it a .png or .tif "
                f"output, or leave out --bit-depth 16"
            )
        for p in (image, side):
            if p.parent.resolve() == out and p.name.split(".")[0] in RUN_FILES:
                raise RunError(
                    f"item {it.id!r} would write {p.name}, a name the run keeps for its "
                    f"{p.name.split('.')[0]} file; rename the item or give it another output"
                )
            if p in seen:
                raise RunError(f"items {seen[p]!r} and {it.id!r} would both be written to {p}")
            seen[p] = it.id


def plan_jobs(
    items: Sequence[Item], run: ResolvedRun, folder: OutputFolder, overwrite: bool = False
) -> tuple[list[Job], int, list[dict]]:
    """(jobs to run, items already done, failures found while planning: unreadable sources).

    Items finished with another configuration are refused (RunError naming them) unless
    ``overwrite``, in which case they are redone.
    """
    jobs, done, failed, changed = [], 0, [], []
    for it in items:
        out, side = folder.paths(it, run.ext)
        if it.error or len(it.sources) < 2:  # a pair folder with one image, a stem some pattern lacks
            why = it.error or (
                f"no file of this stem matches {', '.join(repr(p) for p in it.missing)}"
                if it.missing
                else f"only {len(it.sources)} image ({Path(it.sources[0]).name}); a source is missing"
            )
            failed.append({"id": it.id, "error": f"{why}; fusion needs two or more sources"})
            continue
        try:
            sha = [file_sha256(s) for s in it.sources]
        except OSError as e:
            failed.append({"id": it.id, "error": f"cannot read source {e.filename}: {e.strerror}"})
            continue
        cfg = run.item_config(it, sha)
        key = config_key(cfg)
        state, rec = folder.state(out, side, key)
        if state == "done":
            done += 1
            continue
        if state == "changed":
            changed.append((it.id, _changed_fields(rec.get("config", {}), cfg)))
            if not overwrite:
                continue
        # absolute paths: workers (processes, cluster actors) need not share the driver's working folder
        jobs.append(
            Job(
                it.id,
                tuple(os.path.abspath(s) for s in it.sources),
                it.names,
                run.item_task(it),
                run.item_seed(it),
                os.path.abspath(out),
                os.path.abspath(side),
                key,
                cfg,
            )
        )
    if changed and not overwrite:
        shown = "; ".join(f"{i}: {why}" for i, why in changed[:3]) + ("; …" if len(changed) > 3 else "")
        raise RunError(
            f"{len(changed)} item(s) in {folder.root} were fused with other settings ({shown}); "
            f"use another output folder, or --overwrite to redo them"
        )
    return jobs, done, failed


def run_batch(
    items: Sequence[Item],
    out: str | Path,
    config: RunConfig,
    *,
    shard: tuple[int, int] = (0, 1),
    executor: str = "local",
    workers: int = 1,
    threads: int | None = None,
    ray_address: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    inputs: Sequence[str | Path] = (),
) -> Summary:
    """Fuse ``items`` (the shard ``shard`` of them) into ``out`` with ``config``; resumable.

    Everything is validated before the first item runs.  Returns the :class:`Summary` (also written
    to the folder); per-item failures are in it, not raised.
    """
    log = log or (lambda m: print(m, file=sys.stderr))
    t0 = time.perf_counter()
    runner = make_executor(executor, workers=workers, threads=threads, ray_address=ray_address, device=config.device)
    resolved = config.resolve(prior_device="cpu" if executor == "ray" else "run")
    if resolved.prior:
        try:
            compute = runner.compute(config.device)
        except ValueError as e:
            raise RunError(str(e)) from None
        resolved = replace(resolved, compute=compute)
    mine = select_shard(items, *shard)
    folder = OutputFolder(out, shard)
    folder.check()
    check_outputs(items, folder, resolved.ext, inputs, config.bit_depth)
    folder.prepare()
    folder.lock()
    try:
        removed = folder.clean()
        if removed:
            log(f"removed {len(removed)} temporary file(s) left by an earlier run that was killed")
        jobs, done, failed = plan_jobs(mine, resolved, folder, overwrite)
        summary = Summary(total=len(mine), skipped=done, failed=list(failed), shard=shard)
        folder.append_log(
            {
                "event": "start",
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "shard": f"{shard[0]}/{shard[1]}",
                "items": len(mine),
                "pending": len(jobs),
                "already_done": done,
                "executor": runner.describe(),
                "config": resolved.describe(),
            }
        )
        for f in failed:
            folder.append_log({"event": "item", "status": "failed", **f})
        spec = WorkerSpec(
            resolved.method,
            dict(config.options),
            config.steps,
            config.prior,
            config.prior_spec,
            config.device,
            config.resize,
            config.bit_depth,
            threads,
            resolved.prior,
            config.max_pixels,
        )
        bar = Progress(len(jobs), progress)
        records = runner.run(spec, jobs, on_step=bar.step)
        logged: set[str] = set()

        def record(rec: dict) -> None:
            folder.append_log({"event": "item", **rec})
            logged.add(rec["id"])
            if rec["status"] == "done":
                summary.done += 1
            else:
                summary.failed.append({"id": rec["id"], "error": rec.get("error", "")})
            bar.update(rec)

        try:
            for rec in records:
                record(rec)
        except KeyboardInterrupt:
            summary.interrupted = True
            records.close()  # the executor stops its workers before this returns
            for job in jobs:  # items a worker finished while the driver was being stopped: logged too
                if job.id not in logged and folder.state(Path(job.output), Path(job.sidecar), job.key)[0] == "done":
                    record({"id": job.id, "status": "done", "note": "finished as the run was stopped"})
        except Exception as e:  # the executor failed as a whole: say so in the log and summary, then raise
            from .runtime import one_line

            summary.aborted = one_line(e)
            raise
        finally:
            bar.close()
            summary.wall_s = time.perf_counter() - t0
            folder.append_log({"event": "end", **summary.to_dict()})
            atomic_write_text(
                folder.summary_path,
                json.dumps({**summary.to_dict(), "config": resolved.describe()}, indent=2, default=str),
            )
    finally:
        folder.unlock()
    return summary


def _is_summary(name: str) -> bool:
    import re

    return re.fullmatch(r"summary(\.shard-\d+-of-\d+)?\.json", name) is not None


def iter_sidecars(folder: str | Path) -> Iterator[dict]:
    """Every item sidecar in a batch folder (for bench and reports)."""
    for p in sorted(Path(folder).rglob("*.json")):
        if p.name.startswith(".") or (p.parent == Path(folder) and _is_summary(p.name)):
            continue
        try:
            rec = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(rec, dict) and "key" in rec and "id" in rec:
            yield rec


def describe_items(items: Iterable[Item]) -> str:
    items = list(items)
    n = {len(it.sources) for it in items}
    return f"{len(items)} item(s) of {'/'.join(str(k) for k in sorted(n))} sources"
