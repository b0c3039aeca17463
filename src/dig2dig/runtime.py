"""Executors for batch runs: the same :class:`~dig2dig.jobs.FuseWorker` in this process, in worker
processes, or in Ray Data actors on a cluster.

Every executor takes a :class:`~dig2dig.jobs.WorkerSpec` (small, picklable) and the pending
:class:`~dig2dig.runtime.Job` records (paths, never pixels), and yields one record per job as it finishes;
the driver (:func:`dig2dig.jobs.run_batch`) writes the run log and shows progress.  Workers write
the outputs themselves, atomically, so a worker that dies loses at most the items it was fusing,
and a rerun of the same command completes them.

* ``local`` -- one worker in this process (``workers=1``), or ``workers=K`` processes, each with
  ``cpu_count // K`` torch threads so that they do not oversubscribe the cores.
* ``ray`` -- a Ray Data pipeline over the jobs: ``from_items`` of the pending jobs, ``map_batches``
  with a callable class that loads the prior once per actor, an actor pool sized to the cluster
  (one GPU per actor when the device is a GPU, else ``threads`` CPUs per actor), and the results
  streamed back.  ``ray_address`` joins a running cluster; without it a local one is started.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import RunError, describe
from .io import atomic_write_text, file_sha256

EXECUTORS = ("local", "ray")


# --------------------------------------------------------------------------------------------
# jobs: what an executor gets (paths, never pixels) and what it returns


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
    """What every worker needs to fuse jobs: picklable, small."""

    method: str
    options: dict
    steps: Any
    prior: str | None
    prior_spec: str | None
    device: str | None
    resize: bool
    bit_depth: int | None
    threads: int | None = None  # torch threads per worker (None: torch's default)
    prior_info: dict | None = None
    max_pixels: int | None = None


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
        from .methods import get_method
        from .prior import resolve_prior

        self.den = None
        if get_method(spec.method).needs_prior:
            self.den = resolve_prior(spec.prior, prior_spec=spec.prior_spec, device=spec.device)

    def __call__(self, job: Job, on_step: Callable[[str, int, int], None] | None = None) -> dict:
        """Fuse ``job``; ``on_step(item id, steps done, total)`` after each diffusion step if given."""
        from ._version import __version__
        from .api import fuse

        t0 = time.perf_counter()
        s = self.spec
        step = (lambda done, total: on_step(job.id, done, total)) if on_step else False
        try:
            r = fuse(
                list(job.sources),
                method=s.method,
                steps=s.steps,
                seed=job.seed,
                task=job.task,
                prior=self.den,
                device=s.device,
                resize=s.resize,
                names=list(job.names) if job.names else None,
                max_pixels=s.max_pixels,
                progress=step,
                **s.options,
            )
            Path(job.output).parent.mkdir(parents=True, exist_ok=True)
            out = r.save(job.output, s.bit_depth)
            wall = time.perf_counter() - t0
            sidecar = {
                "id": job.id,
                "key": job.key,
                "output": out.name,
                "output_sha256": file_sha256(out),
                "sources": list(job.sources),
                "roles": r.config["roles"],
                "task": r.task,
                "task_reason": r.config["task_reason"],
                "seed": job.seed,
                "method": r.method,
                "options": r.config["options"],
                "steps": r.config["steps"],
                "grid": r.config["grid"],
                "steps_taken": r.config.get("steps_taken"),
                "prior_run": r.config.get("prior_run"),
                "prior": r.config["prior"],
                "device": r.config["device"],
                "dig2dig": __version__,
                "config": job.item_config,
                "timings": {**r.timings, "wall_s": wall},
                "notes": r.config["notes"],
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_write_text(job.sidecar, json.dumps(sidecar, indent=1, default=str))
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

        from .prior.loaders import check_device

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
        queue, deaths = list(jobs), {}
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


# --------------------------------------------------------------------------------------------
# Ray


class RayFuseActor:
    """The callable class of Ray Data's ``map_batches``: one :class:`FuseWorker` (and one prior) per actor."""

    def __init__(self, spec: WorkerSpec):
        self.worker = FuseWorker(spec)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        records = [self.worker(Job.from_json(str(j))) for j in batch["job"]]
        import json

        return {"record": np.array([json.dumps(r) for r in records], dtype=object)}


class RayExecutor:
    def __init__(
        self,
        workers: int | None = None,
        threads: int | None = None,
        address: str | None = None,
        device: str | None = None,
    ):
        self.workers, self.threads, self.address, self.device = workers, threads, address, device
        self.gpu = bool(device) and str(device).startswith("cuda")
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # Ray's C++ retries print a line each otherwise
        try:
            import ray  # noqa: F401
            import ray.data  # noqa: F401
        except ImportError:
            raise RunError("--executor ray needs Ray Data: pip install 'dig2dig[ray]'") from None
        if address and address != "auto" and not address.startswith("ray://"):
            self._check_reachable(address)  # before any folder is made or item planned

    def describe(self) -> dict:
        return {
            "kind": "ray",
            "address": self.address or "local",
            "actors": self.workers,
            "threads": self.threads,
            "gpu": self.gpu,
        }

    def compute(self, device: str | None) -> dict:
        """As :meth:`LocalExecutor.compute`, decided without the cluster: actors get a GPU each when the
        device is one, else ``threads`` (default 1) CPU threads."""
        return {"device": "cuda", "threads": None} if self.gpu else {"device": "cpu", "threads": self.cpu_threads}

    @property
    def cpu_threads(self) -> int:
        """Torch threads per CPU actor: fixed, not sized to the cluster (CPU bytes depend on it)."""
        return int(self.threads or 1)

    def _connect(self):
        import logging

        import ray

        if ray.is_initialized():
            return False
        import signal

        kw = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        ours = signal.getsignal(signal.SIGTERM)
        try:
            if self.address:
                ray.init(address=self.address, **kw)
            else:
                ray.init(address="local", num_cpus=cpu_count(), **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray cluster"
            hint = (
                (
                    "; check the address, and where the cluster uses token authentication set RAY_AUTH_MODE=token "
                    "and RAY_AUTH_TOKEN (or ~/.ray/auth_token) as on the cluster"
                )
                if self.address
                else ""
            )
            raise RunError(f"cannot start or join {where}: {one_line(e)}{hint}") from None
        finally:
            try:
                signal.signal(signal.SIGTERM, ours)  # Ray installs its own; SIGTERM stays an interrupt for us
            except ValueError:
                pass
        return True

    @staticmethod
    def _check_reachable(address: str, timeout: float = 10.0) -> None:
        import socket

        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
        except (OSError, ValueError) as e:
            raise RunError(
                f"cannot reach the Ray cluster at {address!r} ({getattr(e, 'strerror', None) or e}); "
                f"check the address (host:port of the head node's GCS, e.g. 10.0.0.1:6379)"
            ) from None

    def _pool(self) -> tuple[int, float]:
        """(actors, CPUs per actor) from the cluster's resources; fail fast where GPUs are missing."""
        import ray

        res = ray.cluster_resources()
        cpus, gpus = int(res.get("CPU", 0)), int(res.get("GPU", 0))
        if self.gpu:
            if gpus < 1:
                raise RunError(
                    f"--device {self.device} asks for GPUs, but the Ray cluster has none ({cpus} CPUs); "
                    f"use --device cpu or join a cluster with GPUs"
                )
            return (self.workers or gpus), float(self.threads or max(1, cpus // max(gpus, 1)))
        if cpus < 1:
            raise RunError("the Ray cluster offers no CPUs")
        threads = self.cpu_threads
        actors = self.workers or max(1, cpus // threads)
        if threads > cpus:
            raise RunError(f"--threads {threads} is more than the Ray cluster's {cpus} CPUs")
        return actors, float(threads)

    def run(self, spec: WorkerSpec, jobs: Sequence[Job], on_step=None) -> Iterator[dict]:
        """Records as items finish (``on_step`` is not followed across the cluster)."""
        if not jobs:
            return
        import json

        import ray

        started = self._connect()
        try:
            actors, cpus = self._pool()
            from dataclasses import replace

            spec = replace(spec, threads=int(cpus))
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.verbose_progress = False
            ds = ray.data.from_items([{"job": j.to_json()} for j in jobs], override_num_blocks=len(jobs))
            ds = ds.map_batches(
                RayFuseActor,
                fn_constructor_kwargs={"spec": spec},
                batch_size=1,
                concurrency=min(actors, len(jobs)),
                num_cpus=cpus,
                num_gpus=1 if self.gpu else 0,
                batch_format="numpy",
            )
            for row in ds.iter_rows():
                yield json.loads(str(row["record"]))
        finally:
            if started:
                ray.shutdown()
