"""Sharing intermediate results between the metrics of one :func:`~dig2dig.metrics.score` call.

Several metrics start from the same intermediate arrays: Qcb, Qcv, NMI, Qncie and TE all
``normalize1`` the same three planes; Qc and Qy need the same local moments.  Inside
:func:`shared_results` (which ``score`` enters) such intermediates are computed once per input
array.  Outside it, :func:`memo` simply computes, so the metric functions stay pure.

Entries are keyed by the ``id`` of the input arrays and keep a reference to them, so an id cannot
be recycled while its entry lives; the whole store is dropped when the scope ends.  Cached arrays
are made read-only.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np

_STORE: ContextVar[dict | None] = ContextVar("dig2dig_metrics_shared_results", default=None)


@contextmanager
def shared_results():
    """Within this block, :func:`memo` reuses results computed from the same input arrays."""
    token = _STORE.set({})
    try:
        yield
    finally:
        _STORE.reset(token)


def memo(kind: Hashable, inputs: tuple[np.ndarray, ...], compute: Callable[[], object]):
    """``compute()``, cached under (kind, ids of ``inputs``) while a :func:`shared_results` scope is active."""
    store = _STORE.get()
    if store is None:
        return compute()
    key = (kind, *(id(x) for x in inputs))
    hit = store.get(key)
    if hit is not None and all(a is b for a, b in zip(hit[0], inputs)):
        return hit[1]
    value = compute()
    if isinstance(value, np.ndarray):
        value.setflags(write=False)
    store[key] = (inputs, value)
    return value
