"""Executors for batch runs: the same :class:`FuseWorker` in this process or in worker processes
(Ray Data actors on a cluster: :mod:`dig2dig.batch.cluster`).

Every executor takes a :class:`WorkerSpec` (small, picklable) and the pending :class:`Job` records
(paths, never pixels), and yields one record per job as it finishes; the driver
(:func:`dig2dig.batch.run_batch`) writes the run log and shows progress.  Workers write the
outputs themselves, atomically, so a worker that dies loses at most the items it was fusing, and a
rerun of the same command completes them.  ``local``: one worker in this process (``workers=1``),
or ``workers=K`` processes, each with ``cpu_count // K`` torch threads so that they do not
oversubscribe the cores.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import describe
from ..io import file_sha256
from ..spec import FusionSpec
from .folder import Sidecar


@dataclass(frozen=True)
class Job:
    id: str
    sources: tuple[str, ...]
    names: tuple[str, ...] | None
    task: str
    seed: int
    output: str  # absolute path of the fused image
    sidecar: str  # absolute path of the JSON sidecar
    key: str
    item_config: dict

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        d = json.loads(text)
        d["sources"] = tuple(d["sources"])
        d["names"] = tuple(d["names"]) if d["names"] is not None else None
        return cls(**d)


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker needs to fuse jobs: the request (picklable, small; each worker resolves it
    and loads the prior once) and its CPU threads."""

    spec: FusionSpec
    threads: int | None = None  # torch threads per worker (None: torch's default)
    prior_info: dict | None = None  # the prior as the driver resolved it (name, sha256, ...)


def one_line(e: BaseException) -> str:
    """An exception as the same one line the command line prints (:func:`dig2dig.errors.describe`)."""
    return describe(e)[1]


class FuseWorker:
    """Fuses one job at a time: loads the prior once, writes the image and then the sidecar
    atomically, and returns a record; an item's error is a record, not an exception."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        if spec.threads:
            import torch

            torch.set_num_threads(spec.threads)
        self.resolved = spec.spec.resolve()

    def __call__(self, job: Job, on_step: Callable[[str, int, int], None] | None = None) -> dict:
        """Fuse ``job``; ``on_step(item id, steps done, total)`` after each diffusion step if given."""
        from .._version import __version__
        from ..api import run

        t0 = time.perf_counter()
        step = (lambda done, total: on_step(job.id, done, total)) if on_step else False
        try:
            r = run(
                self.resolved,
                [list(job.sources)],
                seeds=[job.seed],
                names=[list(job.names)] if job.names else None,
                tasks=[job.task],
                progress=step,
            )[0]
            Path(job.output).parent.mkdir(parents=True, exist_ok=True)
            out = r.save(job.output, self.resolved.spec.bit_depth)
            wall = time.perf_counter() - t0
            c = r.config
            Sidecar(
                id=job.id,
                key=job.key,
                output=out.name,
                output_sha256=file_sha256(out),
                config=job.item_config,
                sources=list(job.sources),
                roles=c["roles"],
                task=r.task,
                task_reason=c["task_reason"],
                seed=job.seed,
                method=r.method,
                options=c["options"],
                steps=c["steps"],
                grid=c["grid"],
                steps_taken=c.get("steps_taken"),
                prior_run=c.get("prior_run"),
                prior=c["prior"],
                device=c["device"],
                dig2dig=__version__,
                timings={**r.timings, "wall_s": wall},
                notes=c["notes"],
                registration=c.get("registration"),
                host=socket.gethostname(),
                pid=os.getpid(),
                finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            ).write(job.sidecar)
            return {"id": job.id, "status": "done", "seconds": round(wall, 3), "output": str(out)}
        except Exception as e:  # one bad item must not end the run (out of memory included)
            return {
                "id": job.id,
                "status": "failed",
                "seconds": round(time.perf_counter() - t0, 3),
                "error": one_line(e),
            }


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class LocalExecutor:
    """``workers`` = 1: in this process; more: that many spawned worker processes."""

    def __init__(self, workers: int = 1, threads: int | None = None):
        self.workers = workers
        self.threads = threads

    def describe(self) -> dict:
        return {"kind": "local", "workers": self.workers, "threads": self._threads()}

    def compute(self, device: str | None) -> dict:
        """Where the items run and, on a CPU, with how many torch threads (part of each item's key)."""
        import torch

        from ..prior.loaders import check_device

        kind = check_device(device).type
        return {"device": kind, "threads": (self._threads() or torch.get_num_threads()) if kind == "cpu" else None}

    def _threads(self) -> int | None:
        if self.threads:
            return int(self.threads)
        return max(1, cpu_count() // self.workers) if self.workers > 1 else None

    def run(
        self,
        spec: WorkerSpec,
        jobs: Sequence[Job],
        on_step: Callable[[str, int, int], None] | None = None,
    ) -> Iterator[dict]:
        """Records as items finish; ``on_step`` follows the running item's steps (one worker, in this process)."""
        if not jobs:
            return
        spec = _with_threads(spec, self._threads())
        if self.workers == 1:
            worker = FuseWorker(spec)
            for job in jobs:
                yield worker(job, on_step)
            return
        yield from self._run_pool(spec, jobs)

    def _run_pool(self, spec: WorkerSpec, jobs: Sequence[Job], attempts: int = 2) -> Iterator[dict]:
        """Jobs through worker processes, at most one in flight per worker.  A worker that dies (killed,
        out of memory) breaks the pool: a new pool takes over, the jobs that were in flight are tried
        again, and a job in flight at ``attempts`` deaths is reported failed."""
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

        ctx = multiprocessing.get_context("spawn")  # no forked torch state
        queue = list(jobs)
        deaths: dict[str, int] = {}  # job id -> worker deaths while it was in flight
        while queue:
            pool = ProcessPoolExecutor(
                max_workers=min(self.workers, len(queue)), mp_context=ctx, initializer=_init_process, initargs=(spec,)
            )
            running: dict = {}
            broken = False
            try:
                while (queue or running) and not broken:
                    while queue and len(running) < self.workers:
                        job = queue.pop(0)
                        running[pool.submit(_run_in_process, job.to_json())] = job
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for fut in done:
                        job = running.pop(fut)
                        try:
                            yield fut.result()
                        except BrokenProcessPool:
                            broken = True
                            running[fut] = job  # not finished: tried again below
                        except Exception as e:
                            yield {"id": job.id, "status": "failed", "error": one_line(e)}
            except BaseException:  # interrupted (Ctrl-C, SIGTERM) or abandoned: stop the workers now, so that
                _stop_workers(pool)  # nothing is written after the run reports itself stopped
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            retry = []
            for job in running.values():  # in flight when a worker died
                deaths[job.id] = deaths.get(job.id, 0) + 1
                if deaths[job.id] >= attempts:
                    yield {
                        "id": job.id,
                        "status": "failed",
                        "error": f"its worker process died {deaths[job.id]} times (killed, or out of memory)",
                    }
                else:
                    retry.append(job)
            queue = retry + queue


def _stop_workers(pool) -> None:
    """Terminate a process pool's workers (their in-flight items are lost; a rerun redoes them)."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            proc.terminate()
        except Exception:  # noqa: BLE001 -- already gone
            pass


def _with_threads(spec: WorkerSpec, threads: int | None) -> WorkerSpec:
    from dataclasses import replace

    return replace(spec, threads=threads) if threads and not spec.threads else spec


_PROCESS_WORKER: FuseWorker | None = None


def _init_process(spec: WorkerSpec) -> None:
    global _PROCESS_WORKER
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and stops the pool
    _PROCESS_WORKER = FuseWorker(spec)


def _run_in_process(job_json: str) -> dict:
    assert _PROCESS_WORKER is not None
    return _PROCESS_WORKER(Job.from_json(job_json))
