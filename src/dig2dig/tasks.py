"""Fusion tasks, their source roles and their chroma policy; ``auto`` detection.

=====  ==============================  ======================  ===================
task   sources                         role order              chroma
=====  ==============================  ======================  ===================
vif    infrared + visible              infrared, visible       from the visible
mif    CT/PET/SPECT + MRI              CT|PET|SPECT, MRI       from the colour map
mef    under- + over-exposed (+ more)  as given                saturation-weighted
mff    near- + far-focused (+ more)    as given                saturation-weighted
=====  ==============================  ======================  ===================

The *role order* is the order methods see the sources in: DDFM's intensity source i first and its
texture source v second.  ``auto`` reads each source's file name and folder name (``ir``,
``thermal``, ``vis``, ``mri``, ``ct``, ``pet``, ``under``, ``over``, ``near``, ``far`` …); when the
names do not tell, one colour source beside gray ones means VIF, several sources that differ
clearly in brightness mean MEF, and anything else MFF.  Roles the names cannot settle fall back
to channels (VIF: the gray source is the infrared one; MIF: the colour source is the PET/SPECT
one, beside a gray MRI) and then to the order given (first = intensity role).  In MIF the first
role is named by its modality as a radiologist would (CT is anatomical, PET and SPECT functional):
from the file name, else "PET/SPECT" for a colour-coded source and "CT/PET/SPECT" otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .color import is_gray, luminance


@dataclass(frozen=True)
class TaskRecord:
    """What a fusion task sets for every method: its chroma policy and the per-task defaults of the methods
    (Dig2DIG's coarsest-level weights, ``base="auto"``)."""

    name: str
    chroma: str  # :data:`dig2dig.color.CHROMA_POLICIES`
    dig_base: str  # Dig2DIG's pyramid blend: "select" or "consensus" coarsest-level weights


TASK_RECORDS: dict[str, TaskRecord] = {
    r.name: r
    for r in (
        TaskRecord("vif", chroma="source", dig_base="select"),
        TaskRecord("mif", chroma="source", dig_base="consensus"),
        TaskRecord("mef", chroma="saturation", dig_base="consensus"),
        TaskRecord("mff", chroma="saturation", dig_base="select"),
    )
}
TASKS = tuple(TASK_RECORDS)
CHROMA = {name: r.chroma for name, r in TASK_RECORDS.items()}


def task_record(name: str | None) -> TaskRecord:
    """The record of task ``name``; None (a method used outside a fusion task) gets VIF's."""
    if name is None:
        return TASK_RECORDS["vif"]
    try:
        return TASK_RECORDS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; use one of {', '.join(TASK_RECORDS)}") from None


# token -> (task, role) where role 0 = intensity (first), 1 = texture (second), None = ordered
_HINTS: dict[str, tuple[str, int | None]] = {}
for _tok in ("ir", "infrared", "thermal", "lwir", "nir", "tir", "inf"):
    _HINTS[_tok] = ("vif", 0)
for _tok in ("vis", "vi", "visible", "rgb", "color", "colour"):
    _HINTS[_tok] = ("vif", 1)
for _tok in ("ct", "pet", "spect", "fdg"):
    _HINTS[_tok] = ("mif", 0)
for _tok in ("mri", "mr", "t1", "t2", "flair", "pd"):
    _HINTS[_tok] = ("mif", 1)
for _tok in ("under", "over", "low", "high", "dark", "bright", "ev", "exposure", "short", "long", "ue", "oe"):
    _HINTS[_tok] = ("mef", None)
for _tok in ("near", "far", "focus", "fg", "bg", "foreground", "background", "a", "b"):
    _HINTS[_tok] = ("mff", None)

_ROLE_NAMES = {"vif": ("infrared", "visible"), "mif": ("CT/PET/SPECT", "MRI")}
_MODALITIES = {"ct": "CT", "pet": "PET", "fdg": "PET", "spect": "SPECT"}  # MIF's first role, by file name


@dataclass(frozen=True)
class TaskInfo:
    name: str
    order: tuple[int, ...]  # source indices in role order
    chroma: str
    reason: str
    labels: tuple[str, ...] = ()  # role names where the sources tell them (MIF: the modality)

    @property
    def roles(self) -> tuple[str, ...]:
        if self.labels:
            return self.labels
        names = _ROLE_NAMES.get(self.name)
        if names and len(self.order) == 2:
            return names
        return tuple(f"source{i + 1}" for i in range(len(self.order)))


def _tokens(name: str) -> list[str]:
    if not name:
        return []
    p = Path(name)
    words = re.split(r"[^a-z0-9]+", p.stem.lower()) + re.split(r"[^a-z0-9]+", p.parent.name.lower())
    return [w for w in words if w]


def _hint(name: str) -> tuple[str, int | None] | None:
    for tok in _tokens(name):
        if tok in _HINTS:
            return _HINTS[tok]
    return None


def name_hints(names: list[str]) -> list[list | None]:
    """What ``auto`` reads from each source's name: (task, role index) or None (for a run's key)."""
    return [list(h) if (h := _hint(n)) is not None else None for n in names]


def check_task(task, where: str = "") -> str:
    """``task`` lower-cased if it is ``auto`` or a task name, else a ValueError naming the choices."""
    name = task.strip().lower() if isinstance(task, str) else task
    if name != "auto" and name not in TASKS:
        shown = repr(task if not isinstance(task, str) or len(task) <= 40 else task[:40] + "…")
        raise ValueError(f"{where}unknown task {shown}; use one of auto, {', '.join(TASKS)}")
    return name


def resolve_task(task: str, images, names: list[str]) -> TaskInfo:
    """Pick the task (if ``auto``) and the role order for ``images`` named ``names``.

    ``images`` may be a list of arrays or a zero-argument callable returning one; it is only
    consulted when the names do not settle the task and roles.
    """
    if callable(images):
        loader = images
        cache: list[np.ndarray] = []

        def get():
            if not cache:
                cache.extend(loader())
            return cache
    else:

        def get():
            return images

    task = check_task(task)
    hints = [_hint(n) for n in names]
    reason = f"given as {task}"
    if task == "auto":
        tasks = {h[0] for h in hints if h}
        if len(tasks) == 1 and all(hints):
            task = tasks.pop()
            reason = "from the file names " + ", ".join(repr(Path(n).stem) for n in names)
        else:
            gray = [is_gray(im) for im in get()]
            if sum(not g for g in gray) == 1 and len(names) == 2:
                task, reason = "vif", "one colour and one gray source"
            else:
                means = [float(luminance(im).mean()) for im in get()]
                if max(means) - min(means) > 0.15:
                    task, reason = "mef", "sources differ clearly in brightness"
                else:
                    task, reason = "mff", "sources of similar brightness"
    order = list(range(len(names)))
    if task in _ROLE_NAMES and len(names) == 2:
        role = [h[1] if h and h[0] == task else None for h in hints]
        if role[0] is None and role[1] is not None:
            role[0] = 1 - role[1]
        if role[1] is None and role[0] is not None:
            role[1] = 1 - role[0]
        if None in role or role[0] == role[1]:
            gray = [is_gray(im) for im in get()]
            first = 0 if task == "vif" else 1  # VIF: gray = infrared; MIF: gray = MRI beside a colour PET/SPECT
            role = [0, 1] if gray[0] == gray[1] else [first if g else 1 - first for g in gray]
        rank = [r for r in role if r is not None]  # every role is settled by now
        assert len(rank) == len(role)
        order = sorted(order, key=lambda i: rank[i])
    labels: tuple[str, ...] = ()
    if task == "mif" and len(names) == 2:
        modality = next((_MODALITIES[t] for t in _tokens(names[order[0]]) if t in _MODALITIES), None)
        if modality is None:
            try:
                modality = None if is_gray(get()[order[0]]) else "PET/SPECT"
            except LookupError:  # names only (the web page's guess): no pixels to look at
                pass
        labels = (modality or _ROLE_NAMES["mif"][0], "MRI")
    return TaskInfo(task, tuple(order), CHROMA[task], reason, labels)


def chroma_order(info: TaskInfo) -> tuple[int, ...]:
    """Role positions in the order their chroma is preferred (VIF: the visible one first)."""
    positions = tuple(range(len(info.order)))
    return positions[::-1] if info.name == "vif" else positions
