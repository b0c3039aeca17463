"""Scoring folders of fused images and running method × dataset × metric benchmarks.

Dataset layout (that of ``../shared/data/fusion``): ``<dataset>/<pair_id>/<source>.<ext>``.
Fused layout: ``<folder>/<pair_id>.<ext>`` -- one folder per method.

* :func:`evaluate_folder` scores one folder of fused images against a dataset → tidy rows
  ``(pair, method, metric, value)``.
* :func:`run_bench` fuses every pair of every dataset with every method through the batch runner
  (:func:`dig2dig.batch.run_batch`: one folder per dataset and method, resumable, never reusing an
  image made with other settings), adds folders of precomputed peer outputs, scores all of it
  (scores are cached by the bytes of the fused image and its sources, the convention and the
  metric list, so a rerun rescores only what changed), and writes ``results.csv``, ``summary.md``,
  ``manifest.json`` and plots under the output folder -- each rebuilt from this run's results.
* :func:`summary_markdown` and :func:`plot_results` turn rows into a table and PNG charts.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .io import READ_SUFFIXES, atomic_savefig, atomic_write_text, list_images, read_raw
from .spec import FusionSpec

CSV_FIELDS = ("dataset", "pair", "method", "metric", "value")


@dataclass(frozen=True)
class Pair:
    dataset: str
    pair_id: str
    sources: tuple[Path, ...]  # in the task's role order (infrared/functional first)
    task: str


def list_pairs(dataset_dir: str | Path, task: str = "auto") -> list[Pair]:
    """Every ``<pair_id>/`` folder of a dataset with its source files in role order."""
    from .io import read_image
    from .tasks import resolve_task

    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {str(root)!r} does not exist")
    pairs = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = list_images(d)
        if len(files) < 2:
            continue
        order: Sequence[int]
        try:
            info = resolve_task(task, lambda files=files: [read_image(f).data for f in files], [str(f) for f in files])
            order, name = info.order, info.name
        except (ValueError, OSError):  # a source that does not decode: its pair fails when run, the others go on
            order, name = range(len(files)), task
        pairs.append(Pair(root.name, d.name, tuple(files[i] for i in order), name))
    if not pairs:
        raise FileNotFoundError(f"no <pair_id>/<source> image folders in {root}")
    return pairs


def find_fused(folder: Path, pair_id: str) -> Path | None:
    """The fused image of a pair (``<pair_id>.<ext>``); two of them is an error (which one would count?)."""
    found = [
        c
        for ext in READ_SUFFIXES
        for c in (folder / f"{pair_id}{ext}", folder / f"{pair_id}{ext.upper()}")
        if c.is_file()
    ]
    found = list(dict.fromkeys(p.resolve() for p in found))
    if len(found) > 1:
        from .errors import ImageError

        raise ImageError(
            f"pair {pair_id} has {len(found)} fused images in {folder} ({', '.join(p.name for p in found)}); keep one"
        )
    return found[0] if found else None


def score_pair(fused: Path, pair: Pair, convention: str, metrics: Sequence[str] | None) -> dict[str, float]:
    """The metrics of one fused image; an error names the file."""
    from .errors import ImageError
    from .metrics import score

    try:
        return score(read_raw(fused), [read_raw(s) for s in pair.sources], convention=convention, metrics=metrics)
    except ValueError as e:
        text = " ".join(str(e).split())
        raise ImageError(text if str(fused) in text else f"{fused}: {text}") from None


@dataclass
class Evaluation:
    rows: list[dict]  # tidy rows of the pairs scored
    missing: list[str]  # pairs without a fused image
    errors: list[dict]  # {"pair", "error"}: fused images that could not be scored
    pairs: int  # pairs in the dataset


def check_metrics(convention: str, metrics: Sequence[str] | None) -> None:
    """Before any work: every metric belongs to the convention, and LPIPS has its weights."""
    from .metrics import CONVENTIONS

    if convention not in CONVENTIONS:
        raise ValueError(f"unknown metric convention {convention!r}; use one of {', '.join(CONVENTIONS)}")
    if metrics is not None and not list(metrics):
        raise ValueError("--metrics names no metric; leave it out for the convention's set")
    for name in metrics or []:
        CONVENTIONS[convention].get(name)  # an unknown metric is an error that lists the convention's
    if metrics and "LPIPS" in metrics:
        from .metrics.lpips import load_lpips

        load_lpips()  # the weights load now, or the error says how to give them


def evaluate_folder(
    fused_dir: str | Path,
    sources_dir: str | Path,
    *,
    convention: str = "cddfuse",
    metrics: Sequence[str] | None = None,
    method: str | None = None,
    progress: bool = False,
) -> Evaluation:
    """Score every ``<pair_id>.<ext>`` of ``fused_dir`` against ``sources_dir``; a pair that cannot be
    scored is recorded with its error (naming the file) and the others are still scored."""
    from .batch import one_line

    fused_dir = Path(fused_dir)
    if not fused_dir.is_dir():
        raise FileNotFoundError(f"fused-image folder {str(fused_dir)!r} does not exist")
    check_metrics(convention, metrics)
    pairs = list_pairs(sources_dir)
    method = method or fused_dir.name
    rows: list[dict] = []
    missing: list[str] = []
    errors: list[dict] = []
    for pair in _progress(pairs, progress, f"eval {method}"):
        try:
            f = find_fused(fused_dir, pair.pair_id)
            if f is None:
                missing.append(pair.pair_id)
                continue
            values = score_pair(f, pair, convention, metrics)
        except Exception as e:  # noqa: BLE001 -- one unreadable image must not end the evaluation
            errors.append({"pair": pair.pair_id, "error": one_line(e)})
            continue
        rows.extend(
            {"dataset": pair.dataset, "pair": pair.pair_id, "method": method, "metric": name, "value": value}
            for name, value in values.items()
        )
    if not rows and not errors:
        raise FileNotFoundError(f"no fused image in {fused_dir} matches a pair of {sources_dir}")
    return Evaluation(rows, missing, errors, len(pairs))


def _prefixed(log: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    """``log`` with every message led by ``prefix: ``."""
    return lambda message: log(f"{prefix}: {message}")


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="pair", leave=False)


# ------------------------------------------------------------------------------------------------
# tables and plots


def write_csv(path: str | Path, rows: Iterable[dict]) -> Path:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "value": repr(float(r["value"]))})
    return atomic_write_text(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{**r, "value": float(r["value"])} for r in csv.DictReader(f)]


TIME_METRIC = "time_s"  # wall time per pair of the methods dig2dig runs itself


def parse_method(spec: str) -> tuple[str, str, dict]:
    """``"dig2dig:steps=15,distance=l1"`` → (label, method name, options incl. ``steps``).

    The label is the spec itself; values are read as int, float, bool or string.
    """
    name, _, rest = spec.partition(":")
    opts: dict = {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, val = item.partition("=")
        if not eq:
            raise ValueError(f"bad method option {item!r} in {spec!r}: use key=value")
        for conv in (int, float):
            try:
                opts[key] = conv(val)
                break
            except ValueError:
                pass
        else:
            opts[key] = {"true": True, "false": False}.get(val.lower(), val)
    return spec, name.strip(), opts


def _folder_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _direction(metric: str) -> bool | None:
    from .metrics import higher_is_better

    if metric == TIME_METRIC:
        return False
    try:
        return higher_is_better(metric)
    except (KeyError, ValueError):
        return None


def aggregate(rows: Iterable[dict]) -> dict[tuple[str, str, str], tuple[float, float, int]]:
    """(dataset, method, metric) → (mean, std, n), NaN values left out like the toolboxes' nanmean."""
    acc: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in rows:
        acc[(r.get("dataset", ""), r["method"], r["metric"])].append(float(r["value"]))
    out = {}
    for k, v in acc.items():
        a = np.asarray(v, float)
        a = a[np.isfinite(a)]
        out[k] = (float(a.mean()) if a.size else math.nan, float(a.std()) if a.size else math.nan, int(a.size))
    return out


def summary_markdown(rows: list[dict], title: str = "", decimals: int = 4) -> str:
    """One table per dataset: methods × metrics, mean ± std over pairs, best in bold, ↑/↓ arrows."""
    agg = aggregate(rows)
    datasets = sorted({k[0] for k in agg})
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    parts = [f"# {title}\n"] if title else []
    for ds in datasets:
        methods = list(dict.fromkeys(r["method"] for r in rows if r.get("dataset", "") == ds))
        head = [f"{m} {'↑' if _direction(m) else '↓' if _direction(m) is False else ''}".strip() for m in metrics]
        n_pairs = max((agg[(ds, m, k)][2] for m in methods for k in metrics if (ds, m, k) in agg), default=0)
        parts.append(f"## {ds or 'results'} ({n_pairs} pairs; mean ± std over pairs)\n")
        parts.append("| method | " + " | ".join(head) + " |")
        parts.append("|---|" + "---|" * len(metrics))
        best = {}
        for k in metrics:
            vals = {m: agg[(ds, m, k)][0] for m in methods if (ds, m, k) in agg and np.isfinite(agg[(ds, m, k)][0])}
            d = _direction(k)
            if vals and d is not None:
                best[k] = (max if d else min)(vals.values())
        for m in methods:
            cells = []
            for k in metrics:
                if (ds, m, k) not in agg:
                    cells.append("–")
                    continue
                mean, std, _ = agg[(ds, m, k)]
                txt = f"{mean:.{decimals}g} ± {std:.2g}"
                cells.append(f"**{txt}**" if k in best and mean == best[k] else txt)
            parts.append(f"| {m} | " + " | ".join(cells) + " |")
        parts.append("")
    return "\n".join(parts)


def plot_results(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """Per dataset: one bar chart per metric (mean ± std) and one per-pair boxplot per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for ds in sorted({r.get("dataset", "") for r in rows}):
        sub = [r for r in rows if r.get("dataset", "") == ds]
        metrics = list(dict.fromkeys(r["metric"] for r in sub))
        methods = list(dict.fromkeys(r["method"] for r in sub))
        agg = aggregate(sub)
        n = len(metrics)
        cols = min(4, n)
        nrows = math.ceil(n / cols)
        for kind in ("bars", "box"):
            fig, axes = plt.subplots(
                nrows, cols, figsize=(4.2 * cols, 0.22 * len(methods) * nrows + 1.6 * nrows), squeeze=False
            )
            for ax, k in zip(axes.flat, metrics):
                d = _direction(k)
                label = f"{k} {'↑' if d else '↓' if d is False else ''}"
                if kind == "bars":
                    means = [agg.get((ds, m, k), (math.nan,) * 3)[0] for m in methods]
                    stds = [agg.get((ds, m, k), (math.nan,) * 3)[1] for m in methods]
                    ax.barh(range(len(methods)), means, xerr=stds, color="tab:blue", alpha=0.8, capsize=2)
                else:
                    data = [
                        [r["value"] for r in sub if r["method"] == m and r["metric"] == k and np.isfinite(r["value"])]
                        for m in methods
                    ]
                    ax.boxplot(data, orientation="horizontal", widths=0.6, flierprops={"markersize": 2})
                    ax.set_yticks(range(1, len(methods) + 1))
                ax.set_yticks(range(len(methods)) if kind == "bars" else range(1, len(methods) + 1))
                ax.set_yticklabels(methods, fontsize=7)
                ax.invert_yaxis()
                ax.set_title(label, fontsize=9)
                ax.tick_params(axis="x", labelsize=7)
            for ax in list(axes.flat)[n:]:
                ax.axis("off")
            fig.suptitle(f"{ds}: {'mean ± std over pairs' if kind == 'bars' else 'per-pair distribution'}", fontsize=10)
            fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))  # room for the suptitle
            path = out_dir / f"{ds or 'results'}_{kind}.png"
            atomic_savefig(fig, path, dpi=100)
            plt.close(fig)
            written.append(path)
    return written


# ------------------------------------------------------------------------------------------------
# the benchmark runner


def _versions() -> dict:
    import cv2
    import torch

    from ._version import __version__

    return {
        "dig2dig": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "opencv": cv2.__version__,
    }


class ScoreCache:
    """Metric values keyed by what decides them: the fused image's and the sources' bytes, the
    convention, the metric list and the dig2dig version (``scores_cache.json`` in the bench folder)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = json.loads(path.read_text()) if path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            self.data = {}
        self.dirty = False

    def score(self, fused: Path, pair: Pair, convention: str, metrics: Sequence[str] | None) -> dict[str, float]:
        import hashlib

        from ._version import __version__
        from .io import file_sha256

        parts = [
            file_sha256(fused),
            *[file_sha256(s) for s in pair.sources],
            convention,
            ",".join(metrics or []),
            __version__,
        ]
        key = hashlib.sha256("|".join(parts).encode()).hexdigest()
        if key not in self.data:
            self.data[key] = score_pair(fused, pair, convention, metrics)
            self.dirty = True
        return dict(self.data[key])

    def save(self) -> None:
        if self.dirty:
            atomic_write_text(self.path, json.dumps(self.data, allow_nan=True))
            self.dirty = False


def run_bench(
    datasets: Sequence[str | Path],
    methods: Sequence[str],
    out: str | Path,
    *,
    peers: Sequence[str | Path] = (),
    convention: str = "cddfuse",
    metrics: Sequence[str] | None = None,
    spec: FusionSpec | None = None,
    limit: int | None = None,
    plots: bool = True,
    progress: bool = True,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Fuse, score, tabulate and plot; resumable.  Returns the paths written.

    ``spec``: the request every method runs with -- its options, steps (diffusion methods only),
    seed, task, prior and device; each entry of ``methods`` (``"dig2dig:steps=15,distance=l1"``)
    names its method and may add options and steps.  Everything is checked before the first pair is
    fused: the datasets and peer folders exist, ``limit`` is positive, each method spec names a
    method with valid options, the device and the prior load.  A pair that fails is recorded in the
    manifest's ``errors`` and the run goes on.
    """
    from .batch import OutputFolder, items_from_folder, run_batch
    from .errors import RunError
    from .methods import get_method
    from .metrics import CONVENTIONS

    base = spec or FusionSpec()
    task = base.task

    if limit is not None and int(limit) < 1:
        raise RunError(f"--limit must be at least 1 (the first N pairs of each dataset), got {limit}")
    if convention not in CONVENTIONS:
        raise RunError(f"unknown metric convention {convention!r}; use one of {', '.join(CONVENTIONS)}")
    missing = [str(p) for p in [*datasets, *peers] if not Path(p).is_dir()]
    if missing:
        raise RunError(f"folder(s) not found: {', '.join(missing)}")
    if not methods and not peers:
        raise RunError("nothing to benchmark: give --methods and/or --peers")
    listed: tuple[tuple[str, Sequence[object]], ...] = (
        ("dataset", [Path(d).resolve() for d in datasets]),
        ("method", list(methods)),
        ("peer", [Path(p).resolve() for p in peers]),
    )
    for what, entries in listed:
        twice = sorted({str(g) for g in entries if entries.count(g) > 1})
        if twice:
            raise RunError(f"{what} {twice[0]!r} is listed twice; list each once")
    out_dir = Path(out).resolve()
    for d in datasets:
        if out_dir == Path(d).resolve() or Path(d).resolve() in out_dir.parents:
            raise RunError(
                f"the bench folder {str(out)!r} is inside the dataset {str(d)!r}; choose a folder outside it"
            )
    runs = []
    for given in methods:
        label, name, mopts = parse_method(given)
        diffusion = get_method(name).needs_prior
        steps = mopts.pop("steps", base.steps if diffusion else None)  # --steps: the diffusion methods
        config = replace(
            base,
            method=name,
            options={**base.options, **mopts},
            steps=steps,
            prior=base.prior if diffusion else None,
            prior_spec=base.prior_spec if diffusion else None,
            ext=".png",
            bit_depth=8,
        )
        config.resolve()  # refuse a bad method, option, device or prior before any work
        runs.append((label, config))
    check_metrics(convention, metrics)

    plan = [(ds_dir, list_pairs(ds_dir, task)[: limit or None]) for ds_dir in datasets]  # before anything is made
    out = Path(out)
    folder = OutputFolder(out)
    folder.prepare()
    folder.lock()
    try:
        (out / "fused").mkdir(exist_ok=True)
        cache = ScoreCache(out / "scores_cache.json")
        rows: list[dict] = []
        items_log: dict[str, dict] = {}
        errors: list[dict] = []
        absent_all: list[dict] = []
        for ds_dir, pairs in plan:
            ds = Path(ds_dir).name
            keep = {p.pair_id for p in pairs}
            items = [it for it in items_from_folder(ds_dir) if it.id in keep]
            by_id = {it.id: it for it in items}
            for label, config in runs:
                mdir = out / "fused" / ds / _folder_name(label)
                mdir.parent.mkdir(parents=True, exist_ok=True)
                summary = run_batch(
                    items,
                    mdir,
                    config,
                    overwrite=overwrite,
                    progress=progress,
                    inputs=[ds_dir],
                    log=_prefixed(log, f"{ds}/{label}"),
                )
                if summary.interrupted:
                    raise KeyboardInterrupt
                failed = {f["id"]: f["error"] for f in summary.failed}
                for f in summary.failed:
                    errors.append({"item": f"{ds}/{label}/{f['id']}", "error": f["error"]})
                    log(f"error on {ds}/{label}/{f['id']}: {f['error']}")
                for pair in _progress(pairs, progress, f"score {ds}/{label}"):
                    if pair.pair_id in failed:
                        continue
                    side = OutputFolder(mdir).sidecar(by_id[pair.pair_id], ".png")
                    if side is None or not (mdir / side.output).is_file():
                        continue
                    fused = mdir / side.output
                    _score_into(rows, errors, cache, fused, pair, ds, label, convention, metrics, log)
                    rows.append(
                        {
                            "dataset": ds,
                            "pair": pair.pair_id,
                            "method": label,
                            "metric": TIME_METRIC,
                            "value": side.timings["wall_s"],
                        }
                    )
                    items_log[f"{ds}/{label}/{pair.pair_id}"] = {
                        k: getattr(side, k) for k in ("seed", "task", "steps", "prior", "timings")
                    } | {"wall_s": side.timings["wall_s"], "steps_taken": side.steps_taken}
                cache.save()
            for peer in peers:
                peer = Path(peer)
                absent: list[str] = []
                for pair in _progress(pairs, progress, f"score {ds}/{peer.name}"):
                    try:
                        found = find_fused(peer, pair.pair_id)
                    except ValueError as e:
                        errors.append({"item": f"{ds}/{peer.name}/{pair.pair_id}", "error": str(e)})
                        continue
                    if found is None:
                        absent.append(pair.pair_id)
                        continue
                    _score_into(rows, errors, cache, found, pair, ds, peer.name, convention, metrics, log)
                if absent:
                    absent_all.append({"dataset": ds, "peer": peer.name, "pairs": absent})
                    log(
                        f"{ds}/{peer.name}: no fused image for {len(absent)} of {len(pairs)} pair(s): "
                        f"{', '.join(absent[:5])}{' …' if len(absent) > 5 else ''}"
                    )
                cache.save()
        manifest = {
            "versions": _versions(),
            "convention": convention,
            "metrics": list(metrics or []),
            "methods": list(methods),
            "peers": [str(p) for p in peers],
            "seed": base.seed,
            "steps": base.steps,
            "task": task,
            "options": dict(base.options),
            "datasets": [str(d) for d in datasets],
            "items": items_log,
            "errors": errors,
            "missing": absent_all,
        }
        results_path = out / "results.csv"
        write_csv(results_path, rows)
        atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, default=str))
        md = summary_markdown(rows, title=f"dig2dig bench ({convention} convention)")
        if errors or absent_all:  # said in the table, not only in the log: means over fewer pairs mislead
            notes = [f"- {e['item']}: {e['error']}" for e in errors[:20]]
            notes += [f"- {a['dataset']}/{a['peer']}: no image for {len(a['pairs'])} pair(s)" for a in absent_all]
            md += "\n**Not scored** (means above leave these out):\n\n" + "\n".join(notes) + "\n"
        atomic_write_text(out / "summary.md", md)
        written = {
            "csv": results_path,
            "markdown": out / "summary.md",
            "manifest": out / "manifest.json",
            "incomplete": bool(errors or absent_all),
        }
        if plots and rows:
            written["plots"] = plot_results(rows, out / "plots")
    finally:
        folder.unlock()
    return written


def _score_into(
    rows, errors, cache: ScoreCache, fused: Path, pair: Pair, ds: str, method: str, convention: str, metrics, log
) -> None:
    from .batch import one_line

    try:
        values = cache.score(fused, pair, convention, metrics)
    except Exception as e:  # a fused image that cannot be scored is an error of that pair only
        errors.append({"item": f"{ds}/{method}/{pair.pair_id}", "error": one_line(e)})
        log(f"error scoring {ds}/{method}/{pair.pair_id}: {one_line(e)}")
        return
    rows.extend(
        {"dataset": ds, "pair": pair.pair_id, "method": method, "metric": k, "value": v} for k, v in values.items()
    )
