"""A batch run's output folder: images, sidecars, the run log, the summary and the lock.

Per item the image (``<id>.png``) and a JSON sidecar (``<id>.json``, a :class:`Sidecar`: key,
configuration, seed, prior, sources, timings), each written atomically, the sidecar last -- an
item is done when its sidecar holds the current key and the image it names exists unchanged.  An
append-only run log (``log.jsonl``, one fsync'd JSON line per event, so a ``kill -9`` at any
instant loses at most the line being written) and a summary (``summary.json``); shards log to
``log.shard-I-of-N.jsonl`` and ``summary.shard-I-of-N.json``.  One run per folder (a sharded run
per shard), locked with ``flock``: the operating system releases it when a run dies, so a crash
never leaves the folder locked.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import RunError
from ..io import SIXTEEN_BIT_SUFFIXES, atomic_write_text, check_output_dir, file_sha256, remove_stale_temps
from .items import Item


@dataclass
class Sidecar:
    """What a worker writes beside an item's image, after the image: enough to resume, to score and
    to reproduce it."""

    id: str
    key: str  # hash of ``config``: the item is done when this matches the run's
    output: str  # the image's file name, beside the sidecar
    output_sha256: str
    config: dict  # what decides the output bytes (the resolved spec's key fields and the item's own)
    sources: list[str] = field(default_factory=list)
    roles: dict = field(default_factory=dict)
    task: str = ""
    task_reason: str = ""
    seed: int = 0
    method: str = ""
    options: dict = field(default_factory=dict)
    steps: int = 0
    grid: list[int] = field(default_factory=list)
    steps_taken: int | None = None
    prior_run: dict | None = None
    prior: dict | None = None
    device: str = ""
    dig2dig: str = ""
    timings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    registration: dict | None = None  # the estimated transforms, when the run registers its sources
    host: str = ""
    pid: int = 0
    finished: str = ""

    def write(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=1, default=str))

    @classmethod
    def read(cls, path: str | Path) -> Sidecar | None:
        """The sidecar at ``path``; None if there is none, or it is damaged or not one of ours."""
        try:
            rec = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(rec, dict) or not isinstance(rec.get("key"), str):
            return None
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: v for k, v in rec.items() if k in known}
        if not isinstance(values.get("config"), dict):
            values["config"] = {}
        values.setdefault("id", "")
        values.setdefault("output", "")
        values.setdefault("output_sha256", "")
        return cls(**values)


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

    def state(self, output: Path, sidecar: Path, key: str) -> tuple[str, Sidecar | None]:
        """("done" | "todo" | "changed", the item's sidecar if there is one of ours)."""
        rec = Sidecar.read(sidecar)
        if rec is None:
            return "todo", None  # none, or not a sidecar of ours (or damaged): redone
        if rec.key != key:
            return "changed", rec
        if not output.is_file() or file_sha256(output) != rec.output_sha256:
            return "todo", rec  # missing or damaged since: redone
        return "done", rec

    def sidecar(self, item: Item, ext: str) -> Sidecar | None:
        """The item's sidecar, where the run wrote it (a manifest's ``output`` included)."""
        return Sidecar.read(self.paths(item, ext)[1])

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
    out: list[dict] = []
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


def _is_summary(name: str) -> bool:
    import re

    return re.fullmatch(r"summary(\.shard-\d+-of-\d+)?\.json", name) is not None


def iter_sidecars(folder: str | Path) -> Iterator[Sidecar]:
    """Every item sidecar in a batch folder (for reports)."""
    for p in sorted(Path(folder).rglob("*.json")):
        if p.name.startswith(".") or (p.parent == Path(folder) and _is_summary(p.name)):
            continue
        rec = Sidecar.read(p)
        if rec is not None and rec.id:
            yield rec
