"""The ``ray`` executor: a Ray Data pipeline over the pending jobs.

``from_items`` of the jobs, ``map_batches`` with a callable class that loads the prior once per
actor (:class:`RayFuseActor`, the same :class:`~dig2dig.batch.executors.FuseWorker` as the local
executor), an actor pool sized to the cluster (one GPU per actor when the device is a GPU, else
``threads`` CPUs per actor), and the results streamed back.  ``address`` joins a running cluster;
without it a local one is started.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from ..errors import RunError
from .executors import FuseWorker, Job, WorkerSpec, cpu_count, one_line


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
