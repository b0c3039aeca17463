"""Batch items: where they come from (a dataset folder, a manifest, glob patterns) and the shards.

* A dataset folder ``<pair_id>/<role>.<ext>``: one item per sub-folder.
* A CSV or JSONL manifest: an ``id`` plus source paths; optional ``task``, ``seed`` and ``output``
  per item (checked here, row by row, with the row named in the error).
* Glob patterns matched by file stem (``ir/*.png vis/*.png``).

Items are sorted by id.  A shard ``I/N`` is every N-th item from the I-th, so shards of one split
never overlap and together cover the run.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import RunError
from ..io import READ_SUFFIXES, WRITE_SUFFIXES, list_images
from ..seeds import check_seed
from ..tasks import check_task

MANIFEST_SUFFIXES = (".csv", ".jsonl")
RESERVED_COLUMNS = ("id", "task", "seed", "output")


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


def _check_id(item_id: str | int, where: str) -> str:
    name = str(item_id).strip()
    if not name or name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise RunError(
            f"{where}: item id {name!r} cannot name a file; ids must be non-empty, not start with '.', "
            f"and contain no '/' or '\\'"
        )
    return name


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
        return check_seed(int(str(value).strip()))
    except ValueError as e:
        raise RunError(f"{where}: {e}" if "seed" in str(e) else f"{where}: seed {value!r} is not an integer") from None


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
        if task is not None:
            try:
                task = check_task(task)
            except ValueError as e:
                raise RunError(f"{where}: {e}") from None
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
    given = [str(i) for i in inputs]
    if not given:
        raise RunError("give a dataset folder, a manifest (.csv/.jsonl) or glob patterns")
    if len(given) > 1:
        odd = [i for i in given if Path(i).is_dir() or Path(i).suffix.lower() in MANIFEST_SUFFIXES]
        if odd:
            raise RunError(
                f"{odd[0]!r} is a folder or a manifest: give one dataset folder, one manifest, or glob "
                f"patterns (one per source), not a mix"
            )
    if len(given) == 1 and Path(given[0]).is_dir():
        items = items_from_folder(given[0])
    elif len(given) == 1 and Path(given[0]).suffix.lower() in MANIFEST_SUFFIXES:
        if not Path(given[0]).is_file():
            raise RunError(f"manifest {given[0]!r} does not exist")
        items = items_from_manifest(given[0])
    elif len(given) == 1 and not glob.has_magic(given[0]):
        raise RunError(f"input {given[0]!r} is neither a folder nor a manifest (.csv/.jsonl) that exists")
    else:
        items = items_from_globs(given)
    seen: dict[str, Item] = {}
    for it in items:
        if it.id in seen:
            raise RunError(f"item id {it.id!r} appears twice; ids must be unique")
        seen[it.id] = it
    return sorted(items, key=lambda it: it.id)


# --------------------------------------------------------------------------------------------
# shards


def parse_shard(spec: str | None, env: Mapping[str, str] | None = None) -> tuple[int, int]:
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
    first_text, sep, count_text = str(spec).partition("/")
    try:
        i, n = int(first_text), int(count_text)
    except ValueError:
        raise RunError(f"{where} {spec!r}: write I/N, e.g. 0/4 for the first of four shards") from None
    if not sep or n < 1 or not 0 <= i < n:
        raise RunError(f"{where} {spec!r}: write I/N with 0 <= I < N (shards are numbered from 0), e.g. 0/4 … 3/4")
    return i, n


def select_shard(items: Sequence[Item], index: int, count: int) -> list[Item]:
    """Item k of the id-sorted list belongs to shard k mod count."""
    ordered = sorted(items, key=lambda it: it.id)
    return [it for k, it in enumerate(ordered) if k % count == index]


def describe_items(items: Iterable[Item]) -> str:
    items = list(items)
    n = {len(it.sources) for it in items}
    return f"{len(items)} item(s) of {'/'.join(str(k) for k in sorted(n))} sources"
