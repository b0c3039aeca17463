"""Fusing collections (``dig2dig batch``, and ``dig2dig bench`` underneath): one module per concern.

* :mod:`~dig2dig.batch.items` -- items from a dataset folder, a manifest or glob patterns; shards.
* :mod:`~dig2dig.batch.folder` -- the output folder: images, typed sidecars, the run log, the lock.
* :mod:`~dig2dig.batch.driver` -- item keys, planning (done / to do / changed), the run, progress.
* :mod:`~dig2dig.batch.executors` -- the worker and the local executors (in process, processes).
* :mod:`~dig2dig.batch.cluster` -- the Ray Data executor.

What every item is fused with is a :class:`~dig2dig.spec.FusionSpec`, resolved once before any
item runs.
"""

from __future__ import annotations

from .driver import EXECUTORS, Progress, Summary, config_key, item_config, make_executor, plan_jobs, run_batch
from .executors import FuseWorker, Job, WorkerSpec, one_line
from .folder import OutputFolder, Sidecar, iter_sidecars, read_log
from .items import Item, collect_items, items_from_folder, items_from_manifest, parse_shard, select_shard

__all__ = [
    "EXECUTORS",
    "FuseWorker",
    "Item",
    "Job",
    "OutputFolder",
    "Progress",
    "Sidecar",
    "Summary",
    "WorkerSpec",
    "collect_items",
    "config_key",
    "item_config",
    "items_from_folder",
    "items_from_manifest",
    "iter_sidecars",
    "make_executor",
    "one_line",
    "parse_shard",
    "plan_jobs",
    "read_log",
    "run_batch",
    "select_shard",
]
