"""The batch driver: plan the items (done, to do, changed), run them on an executor, log and summarise.

Each item's *key* is the hash of what decides its output bytes: the resolved spec's key fields
(method, options, grid, prior, format, dig2dig's version, where it runs) and the item's own (its
seed, task, sources' sha256, output format).  The item seed is ``derive_seed(run seed, item id)``
(or the manifest's), so an item gives the same bytes alone, in a batch, in any shard and on any
executor.  Rerunning a command skips finished items; an item finished with *other* settings is
refused before any work, naming what changed, unless ``overwrite`` redoes it.  A bad item is
recorded with a one-line error and the run goes on; :attr:`Summary.exit_code` is 1 if any failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import RunError
from ..io import atomic_write_text, file_sha256
from ..seeds import derive_seed
from ..spec import FusionSpec, ResolvedSpec
from .cluster import RayExecutor
from .executors import Job, LocalExecutor, WorkerSpec, one_line
from .folder import OutputFolder, _changed_fields, check_outputs
from .items import Item, select_shard

EXECUTORS = ("local", "ray")


def make_executor(
    kind: str,
    *,
    workers: int = 1,
    threads: int | None = None,
    ray_address: str | None = None,
    device: str | None = None,
):
    if kind not in EXECUTORS:
        raise RunError(f"unknown executor {kind!r}; use one of {', '.join(EXECUTORS)}")
    if int(workers) < 1:
        raise RunError(f"--workers must be at least 1, got {workers}")
    if threads is not None and int(threads) < 1:
        raise RunError(f"--threads must be at least 1, got {threads}")
    if kind == "ray":
        return RayExecutor(
            workers=None if workers == 1 else int(workers), threads=threads, address=ray_address, device=device
        )
    if ray_address:
        raise RunError("--ray-address needs --executor ray")
    return LocalExecutor(int(workers), threads)


def item_seed(run: ResolvedSpec, item: Item) -> int:
    return item.seed if item.seed is not None else derive_seed(run.spec.seed, item.id)


def item_task(run: ResolvedSpec, item: Item) -> str:
    return item.task or run.task


def item_config(run: ResolvedSpec, item: Item, source_sha: list[str]) -> dict:
    """What decides the item's output bytes (hashed into its key): the resolved spec's key fields
    and the item's own -- its seed, task, sources, output format, and what task detection reads."""
    from ..tasks import name_hints

    task = item_task(run, item)
    out = {
        **run.key_fields(),
        "seed": item_seed(run, item),
        "task": task,
        "sources_sha256": source_sha,
        "format": Path(item.output).suffix.lower() if item.output else run.ext,
    }
    if task == "auto":
        out["task_hints"] = name_hints(list(item.names or [str(Path(s)) for s in item.sources]))
    return out


def config_key(item_config: dict) -> str:
    return hashlib.sha256(json.dumps(item_config, sort_keys=True, default=str).encode()).hexdigest()


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


def plan_jobs(
    items: Sequence[Item], run: ResolvedSpec, folder: OutputFolder, overwrite: bool = False
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
        cfg = item_config(run, it, sha)
        key = config_key(cfg)
        state, rec = folder.state(out, side, key)
        if state == "done":
            done += 1
            continue
        if state == "changed":
            changed.append((it.id, _changed_fields(rec.config if rec else {}, cfg)))
            if not overwrite:
                continue
        # absolute paths: workers (processes, cluster actors) need not share the driver's working folder
        jobs.append(
            Job(
                it.id,
                tuple(os.path.abspath(s) for s in it.sources),
                it.names,
                item_task(run, it),
                item_seed(run, it),
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
    spec: FusionSpec,
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
    """Fuse ``items`` (the shard ``shard`` of them) into ``out`` with ``spec``; resumable.

    Everything is validated before the first item runs.  Returns the :class:`Summary` (also written
    to the folder); per-item failures are in it, not raised.
    """
    log = log or (lambda m: print(m, file=sys.stderr))
    t0 = time.perf_counter()
    runner = make_executor(executor, workers=workers, threads=threads, ray_address=ray_address, device=spec.device)
    resolved = spec.resolve(prior_device="cpu" if executor == "ray" else "run")
    if resolved.prior:
        try:
            compute = runner.compute(spec.device)
        except ValueError as e:
            raise RunError(str(e)) from None
        resolved = replace(resolved, compute=compute)
    mine = select_shard(items, *shard)
    folder = OutputFolder(out, shard)
    folder.check()
    check_outputs(items, folder, resolved.ext, inputs, spec.bit_depth)
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
        worker = WorkerSpec(spec, threads, resolved.prior)
        bar = Progress(len(jobs), progress)
        records = runner.run(worker, jobs, on_step=bar.step)
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
