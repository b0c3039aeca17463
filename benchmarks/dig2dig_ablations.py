"""Dig2DIG on the dev data: the headline comparison and the paper's ablations, via ``dig2dig bench``.

    python benchmarks/dig2dig_ablations.py [--out runs/dig2dig_ablations] [--msrs 10] [--llvip 2]
           [--sweep 5] [--other 3] [--only headline,distance,...] [--report-only] [--results DIR]

Every run goes into one resumable ``run_bench`` folder per dataset (``OUT/<dataset>``), keyed by
method spec, so a configuration shared by several parts (e.g. the default Dig2DIG-25) is fused once
and two invocations working on different datasets can run at the same time.  A part is a choice of
methods and pairs; its table is filtered from those folders.

* ``headline`` -- Dig2DIG-25 vs DDFM-100 (equal weights) vs Dig2DIG-25 with equal weights vs the
  average, on the first ``--msrs`` MSRS and ``--llvip`` LLVIP pairs, cddfuse convention.  The bar:
  Dig2DIG-25 wins ≥ 4 of SSIM, MSE, CC, Nabf, PSNR, Qabf and takes ≤ 1/3.5 of DDFM-100's time.
* ``temperature`` -- the softmax temperature τ ∈ {0.01, 0.02 (default), 0.05, 0.1}, and 0.1's soft weights.
* ``distance`` -- the paper's Table 3: l2 / l1 / ssim-map / none, and equal weights.
* ``interval`` -- Table 4: refresh interval S ∈ {5, 7, 10, 20}.
* ``steps``    -- Table 5: DIG-N, N ∈ {15, 18, 25, 50}, and DIG-18 refreshed every 7 steps, with wall time
  (DDFM-100 and CCF stand beside them in ``headline`` and ``ccf``).
  The sweeps use the first ``--sweep`` MSRS pairs.
* ``smooth``   -- the Gaussian σ (pixels) on the DIG maps: 16, 32 (default), 64.
* ``window``   -- DIG over the stretch just traversed (backward, the default) or the coming one.
* ``accelerate`` -- DIG-driven step merging (``accelerate=0.05``) on DIG-50 and DIG-25.
* ``tasks``    -- MFF (MFFW) and MEF (SICE): Dig2DIG-25, DDFM-100, CCF and the average on the first
  ``--other`` pairs of each.
* ``ccf``      -- no runs of its own: CCF (200 steps, its default) against Dig2DIG-25 and DDFM-100 on
  every dev pair the parts above ran CCF on.

``--datasets msrs`` (or ``llvip,mffw,sice``) restricts which dataset folders this invocation fuses;
the report always covers whatever the folders hold.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from _command import command_line

SHARED = Path(os.environ.get("DIG2DIG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FUSION = SHARED / "data" / "fusion"
DATASETS = {
    "msrs": FUSION / "vif" / "msrs",
    "llvip": FUSION / "vif" / "llvip",
    "mffw": FUSION / "mff" / "mffw",
    "sice": FUSION / "mef" / "sice",
}
HEADLINE_METRICS = ["SSIM", "MSE", "CC", "Nabf", "PSNR", "Qabf"]
METRICS = ["EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "CC", "MSE", "PSNR", "Nabf"]
DIG25 = "dig2dig:steps=25,interval=10"  # the paper's DIG-25 (refresh every 10) with our weights
DDFM100 = "ddfm:steps=100"


def parts(args) -> dict[str, tuple[dict[str, int], list[str]]]:
    """part -> ({dataset: number of pairs}, [method specs]).  Defaults are spelled as ``DIG25``."""
    sweep = {"msrs": args.sweep}
    d = DIG25 + ","  # one option changed from DIG25

    return {
        "headline": ({"msrs": args.msrs, "llvip": args.llvip}, [DIG25, DDFM100, d + "weights=equal", "average"]),
        "temperature": (
            sweep,
            [d + "temperature=0.01", DIG25, d + "temperature=0.05", d + "temperature=0.1", d + "preset=soft"],
        ),
        "distance": (sweep, [DIG25, d + "distance=l1", d + "distance=ssim", d + "distance=none", d + "weights=equal"]),
        "interval": (
            sweep,
            ["dig2dig:steps=25,interval=5", "dig2dig:steps=25,interval=7", DIG25, "dig2dig:steps=25,interval=20"],
        ),
        "steps": (
            sweep,
            [
                "dig2dig:steps=15,interval=10",
                "dig2dig:steps=18,interval=10",
                "dig2dig:steps=18,interval=7",
                DIG25,
                "dig2dig:steps=50,interval=10",
            ],
        ),
        "smooth": (sweep, [d + "smooth=16", DIG25, d + "smooth=64"]),
        "window": (sweep, [DIG25, d + "window=forward", d + "weights=equal"]),
        "accelerate": (
            sweep,
            [
                "dig2dig:steps=50,interval=10,window=forward",
                "dig2dig:steps=50,interval=10,window=forward,accelerate=0.05",
                d + "window=forward",
                d + "window=forward,accelerate=0.05",
            ],
        ),
        "tasks": ({"mffw": args.other, "sice": args.other}, [DIG25, DDFM100, "ccf", "average"]),
        # no runs of its own: CCF against Dig2DIG and DDFM on every dev pair CCF was run on
        "ccf": ({"msrs": args.sweep, "mffw": args.other, "sice": args.other}, ["ccf", DIG25, DDFM100]),
    }


def _pinned_prior(out: Path) -> str:
    """The embedded prior, copied into the run folder on the first run so that a resumed run keeps
    comparing methods under the same weights even if the shipped prior is updated meanwhile."""
    import shutil

    from dig2dig.prior.embedded import EMBEDDED_DIR

    pinned = out / "prior"
    if not (pinned / "spec.json").is_file():
        shutil.copytree(EMBEDDED_DIR, pinned, dirs_exist_ok=True)
    return str(pinned)


def _pair_ids(ds: str, n: int) -> list[str]:
    from dig2dig.bench import list_pairs

    return [p.pair_id for p in list_pairs(DATASETS[ds])[:n]]


def fuse_all(args, chosen: dict, out: Path, prior: str) -> None:
    """Run every (dataset, method) the chosen parts need, one bench folder per dataset."""
    from dig2dig.bench import run_bench
    from dig2dig.spec import FusionSpec

    work: dict[str, dict[str, int]] = {}  # dataset -> method -> pairs
    for pairs, methods in chosen.values():
        for ds, n in pairs.items():
            for m in methods:
                work.setdefault(ds, {})[m] = max(n, work.get(ds, {}).get(m, 0))
    only_ds = set(args.datasets.split(",")) if args.datasets else set(work)
    for ds, methods in work.items():
        if ds not in only_ds:
            continue
        by_n: dict[int, list[str]] = {}
        for m, n in methods.items():
            by_n.setdefault(n, []).append(m)
        for n, ms in sorted(by_n.items()):
            # one bench folder per dataset (the fused images are shared); each call rebuilds results.csv and
            # manifest.json from its own methods and pairs, so they are kept per pair count
            w = run_bench(
                [DATASETS[ds]],
                ms,
                out / ds,
                convention="cddfuse",
                metrics=METRICS,
                spec=FusionSpec(seed=args.seed, prior=prior),
                limit=n,
                plots=False,
                log=lambda m: print(m, file=sys.stderr),
            )
            for kind in ("csv", "manifest"):
                src = Path(w[kind])
                src.replace(src.with_name(f"{src.stem}.n{n}{src.suffix}"))


def _results(out: Path, datasets) -> list[dict]:
    """Every row the bench folders hold (one results.n<N>.csv per pair count), each row once."""
    from dig2dig.bench import read_csv

    rows = {}
    for ds in datasets:
        for f in sorted((out / ds).glob("results.n*.csv")):
            for r in read_csv(f):
                rows[(r["dataset"], r["pair"], r["method"], r["metric"])] = r
    return list(rows.values())


def report(args, chosen: dict, out: Path, prior: str) -> str:
    from dig2dig.bench import summary_markdown

    rows = _results(out, DATASETS)
    text = [
        "# Dig2DIG on the dev data\n",
        f"Written by `{command_line('dig2dig_ablations.py', sys.argv[1:], ('--out',))}`. "
        f"cddfuse convention; seed {args.seed}; one fixed prior for every run (`{prior}`, sha256 in "
        "each dataset folder's manifest.json). Mean ± std over pairs; `time_s` is the wall time per pair "
        "of the run that fused it (runs on this 2-core CPU, one torch thread each, two at a time: "
        "compare times within a table; clean single-process timings are in `step_time.md`).\n",
    ]
    for name, (pairs, methods) in chosen.items():
        keep = {(ds, p) for ds, n in pairs.items() for p in _pair_ids(ds, n)}
        sel = [r for r in rows if r["method"] in methods and (r["dataset"], r["pair"]) in keep]
        order = {m: i for i, m in enumerate(methods)}
        sel.sort(key=lambda r: order[r["method"]])
        text.append(f"## {name}\n")
        if name == "headline":
            text.append(_headline(sel))
        text.append(summary_markdown(sel).replace("## ", "### "))
        if name in ("steps", "accelerate"):
            text.append(_forwards_table(out, keep, methods))
    return "\n".join(text)


def _headline(rows) -> str:
    """Win count of Dig2DIG-25 over DDFM-100 on the bar's six metrics, pooled over all headline pairs."""
    from dig2dig.bench import _direction, aggregate

    have = {m: {(r["dataset"], r["pair"]) for r in rows if r["method"] == m} for m in (DIG25, DDFM100)}
    both = have[DIG25] & have[DDFM100]  # compare on matched pairs only
    agg = aggregate([dict(r, dataset="pooled") for r in rows if (r["dataset"], r["pair"]) in both])
    lines = ["| metric | Dig2DIG-25 | DDFM-100 | winner |", "|---|---|---|---|"]
    wins = 0
    for k in HEADLINE_METRICS + ["time_s"]:
        if ("pooled", DIG25, k) not in agg or ("pooled", DDFM100, k) not in agg:
            continue
        va, vb = agg[("pooled", DIG25, k)][0], agg[("pooled", DDFM100, k)][0]
        better = va > vb if _direction(k) else va < vb
        wins += better and k in HEADLINE_METRICS
        lines.append(f"| {k} | {va:.6g} | {vb:.6g} | {'Dig2DIG-25' if better else 'DDFM-100'} |")
    ta, tb = agg.get(("pooled", DIG25, "time_s"), (None,))[0], agg.get(("pooled", DDFM100, "time_s"), (None,))[0]
    ratio = f"{ta / tb:.4f} (bar ≤ {1 / 3.5:.4f})" if ta and tb else "n/a"
    return (
        f"Pooled over the {len(both)} headline pairs both methods have run: Dig2DIG-25 wins "
        f"**{wins} of {len(HEADLINE_METRICS)}** headline metrics (bar: ≥ 4); wall-time ratio Dig2DIG-25 / "
        f"DDFM-100 in these runs = {ratio}.\n\n" + "\n".join(lines) + "\n"
    )


def _forwards_table(out: Path, keep: set, methods: list[str]) -> str:
    """Reverse steps actually taken and prior forwards (images) per pair, from the run manifests."""
    import json

    per: dict[str, list[tuple[float, float]]] = {}
    for ds in {ds for ds, _ in keep}:
        items = {}
        for mf in sorted((out / ds).glob("manifest.n*.json")):
            items.update(json.loads(mf.read_text())["items"])
        for key, it in items.items():
            d, method, pair = key.split("/", 2)
            if method in methods and (d, pair) in keep and "prior_forwards" in it.get("timings", {}):
                taken = it.get("steps_taken") or it.get("steps")
                per.setdefault(method, []).append((it["timings"]["prior_forwards"], taken or float("nan")))
    lines = ["| method | prior forwards per pair (images) | reverse steps taken |", "|---|---|---|"]
    for m in methods:
        if per.get(m):
            f, st = zip(*per[m])
            lines.append(f"| {m} | {sum(f) / len(f):.1f} | {sum(st) / len(st):.1f} |")
    return "\n".join(lines) + "\n"


def plot_steps(part, out: Path, path: Path) -> None:
    """Table 5 as a picture: quality against wall time per pair for DIG-N, DDFM-100 and CCF."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dig2dig.bench import aggregate

    pairs, methods = part
    keep = {(ds, p) for ds, n in pairs.items() for p in _pair_ids(ds, n)}
    rows = [r for r in _results(out, pairs) if r["method"] in methods and (r["dataset"], r["pair"]) in keep]
    agg = aggregate([dict(r, dataset="all") for r in rows])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, metric in zip(axes, ["Qabf", "SSIM", "PSNR"]):
        for m in methods:
            if ("all", m, metric) in agg and ("all", m, "time_s") in agg:
                x, y = agg[("all", m, "time_s")][0], agg[("all", m, metric)][0]
                ax.scatter(x, y, color="C0" if m.startswith("dig2dig") else "C3")
                label = m.replace("dig2dig:steps=", "DIG-").replace("ddfm:steps=", "DDFM-").replace("ccf", "CCF-200")
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([20, 50, 100, 200, 500, 1000]))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("wall time per pair (s, log; one thread, shared machine)")
        ax.set_title(metric)
    fig.suptitle(f"Steps against quality, first {sum(pairs.values())} MSRS pairs (cddfuse convention)")
    fig.tight_layout()
    from dig2dig.io import atomic_savefig

    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/dig2dig_ablations")
    ap.add_argument("--msrs", type=int, default=10, help="MSRS pairs in the headline (first N)")
    ap.add_argument("--llvip", type=int, default=2, help="LLVIP pairs in the headline (first N; 1280×1024)")
    ap.add_argument("--sweep", type=int, default=5, help="MSRS pairs in the ablation sweeps")
    ap.add_argument("--other", type=int, default=3, help="pairs per MFF/MEF dataset")
    ap.add_argument(
        "--only",
        help="comma-separated parts: headline,temperature,distance,interval,steps,smooth,window,accelerate,tasks,ccf",
    )
    ap.add_argument("--datasets", help="fuse only these dataset folders (comma-separated: msrs,llvip,mffw,sice)")
    ap.add_argument("--report-only", action="store_true", help="write the report from what the folders hold")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prior", help="prior path (default: a pinned copy of the embedded prior)")
    ap.add_argument("--results", help="also write the report into this folder (dig2dig_ablations.md)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prior = args.prior or _pinned_prior(out)
    every = parts(args)
    chosen = {k: every[k] for k in (args.only.split(",") if args.only else every)}
    if not args.report_only:
        fuse_all(args, chosen, out, prior)
    text = report(args, chosen, out, prior)
    (out / "report.md").write_text(text)
    if args.results:
        Path(args.results).mkdir(parents=True, exist_ok=True)
        (Path(args.results) / "dig2dig_ablations.md").write_text(text)
        if "steps" in chosen:
            plot_steps(chosen["steps"], out, Path(args.results) / "dig2dig_steps.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
