"""Dig2DIG on the dev data: the headline comparison and the paper's ablations, via ``dig2dig bench``.

    python benchmarks/dig2dig_ablations.py [--out runs/dig2dig_ablations] [--msrs 10] [--llvip 4]
           [--other 4] [--only headline,distance,interval,steps,tasks] [--results benchmarks/results]

Parts (each a resumable ``run_bench`` into its own folder; rerun to continue):

* ``headline`` -- Dig2DIG-25 vs DDFM-100 (equal weights) vs the average, MSRS + LLVIP, cddfuse
  convention; the bar: Dig2DIG-25 wins ≥ 4 of SSIM, MSE, CC, Nabf, PSNR, Qabf and takes ≤ 1/3.5
  of DDFM-100's time.
* ``distance`` -- the paper's Table 3: l2 / l1 / ssim / none, and equal weights (MSRS).
* ``interval`` -- Table 4: S ∈ {1, 5, 10, 20} (MSRS).
* ``temperature`` -- the softmax temperature τ ∈ {0.5, 1, 2, 4} (MSRS), our choice to make.
* ``steps``    -- Table 5: DIG-N for N ∈ {15, 20, 25, 50} against DDFM-100, with wall time (MSRS).
* ``tasks``    -- MFF (MFFW) and MEF (SICE, IID-MEF): Dig2DIG-25, DDFM-100, average.

Each part writes its own summary.md; this script also writes one combined Markdown report with the
headline win count and the per-part tables, which is what ``benchmarks/results`` keeps.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SHARED = Path(os.environ.get("DIG2DIG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FUSION = SHARED / "data" / "fusion"
HEADLINE_METRICS = ["SSIM", "MSE", "CC", "Nabf", "PSNR", "Qabf"]
ALL_CDD = ["EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "CC", "MSE", "PSNR", "Nabf"]


def _subset(dataset: Path, n: int, out: Path) -> Path:
    """A folder of symlinks to the first n pairs (so bench's --limit stays per dataset)."""
    dst = out / "_subsets" / dataset.name
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(d for d in dataset.iterdir() if d.is_dir())[:n]:
        link = dst / p.name
        if not link.exists():
            link.symlink_to(p.resolve(), target_is_directory=True)
    return dst


def _pinned_prior(out: Path) -> str:
    """The embedded prior, copied into the run folder on the first run so that a resumed run keeps
    comparing methods under the same weights even if the shipped prior is updated meanwhile."""
    import shutil

    from dig2dig.prior.embedded import EMBEDDED_DIR

    pinned = out / "prior"
    if not (pinned / "spec.json").is_file():
        shutil.copytree(EMBEDDED_DIR, pinned, dirs_exist_ok=True)
    return str(pinned)


def run(args) -> int:
    from dig2dig.bench import aggregate, read_csv, run_bench, summary_markdown

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prior = args.prior or _pinned_prior(out)
    msrs = _subset(FUSION / "vif" / "msrs", args.msrs, out)
    llvip = _subset(FUSION / "vif" / "llvip", args.llvip, out)
    parts = {
        "headline": ([msrs, llvip], ["dig2dig:steps=25", "ddfm:steps=100", "dig2dig:steps=25,weights=equal",
                                     "average"]),
        "distance": ([msrs], ["dig2dig:steps=25,distance=l2", "dig2dig:steps=25,distance=l1",
                              "dig2dig:steps=25,distance=ssim", "dig2dig:steps=25,distance=none",
                              "dig2dig:steps=25,weights=equal"]),
        "interval": ([msrs], [f"dig2dig:steps=25,interval={s}" for s in (1, 5, 10, 20)]),
        "temperature": ([msrs], [f"dig2dig:steps=25,temperature={t}" for t in (0.5, 1, 2, 4)]),
        "steps": ([msrs], [f"dig2dig:steps={n}" for n in (15, 20, 25, 50)] + ["ddfm:steps=100"]),
        "tasks": ([_subset(FUSION / "mff" / "mffw", args.other, out), _subset(FUSION / "mef" / "sice", args.other, out),
                   _subset(FUSION / "mef" / "iidmef", args.other, out)],
                  ["dig2dig:steps=25", "ddfm:steps=100", "average"]),
    }
    only = args.only.split(",") if args.only else list(parts)
    report = ["# Dig2DIG on the dev data\n",
              f"cddfuse convention; seed {args.seed}; prior: {prior} (sha256 in each part's manifest.json). "
              "Mean ± std over pairs; `time_s` is wall time per pair on the machine that ran it.\n"]
    for name in only:
        datasets, methods = parts[name]
        metrics = ALL_CDD if name in ("headline", "tasks") else HEADLINE_METRICS + ["EN", "SD", "SF", "MI"]
        written = run_bench(datasets, methods, out / name, convention="cddfuse", metrics=metrics, seed=args.seed,
                            prior=prior, plots=True, log=lambda m: print(m, file=sys.stderr))
        rows = read_csv(written["csv"])
        report.append(f"## {name}\n")
        if name == "headline":
            report.append(_headline(rows, aggregate))
        report.append(summary_markdown(rows).replace("## ", "### "))
    text = "\n".join(report)
    (out / "report.md").write_text(text)
    if args.results:
        res = Path(args.results)
        res.mkdir(parents=True, exist_ok=True)
        (res / "dig2dig_ablations.md").write_text(text)
    print(text)
    return 0


def _headline(rows, aggregate) -> str:
    """Win count of Dig2DIG-25 over DDFM-100 on the bar's six metrics, pooled over MSRS+LLVIP pairs."""
    from dig2dig.bench import _direction

    pooled = [dict(r, dataset="pooled") for r in rows]
    agg = aggregate(pooled)
    a, b = "dig2dig:steps=25", "ddfm:steps=100"
    lines = ["| metric | Dig2DIG-25 | DDFM-100 | winner |", "|---|---|---|---|"]
    wins = 0
    for k in HEADLINE_METRICS + ["time_s"]:
        if ("pooled", a, k) not in agg or ("pooled", b, k) not in agg:
            continue
        va, vb = agg[("pooled", a, k)][0], agg[("pooled", b, k)][0]
        better = va > vb if _direction(k) else va < vb
        if k in HEADLINE_METRICS:
            wins += better
        lines.append(f"| {k} | {va:.4g} | {vb:.4g} | {'Dig2DIG-25' if better else 'DDFM-100'} |")
    ta, tb = agg.get(("pooled", a, "time_s"), (None,))[0], agg.get(("pooled", b, "time_s"), (None,))[0]
    ratio = f"{ta / tb:.3f} (bar ≤ {1 / 3.5:.3f})" if ta and tb else "n/a"
    return ("Pooled over the MSRS and LLVIP pairs: Dig2DIG-25 wins "
            f"**{wins} of {len(HEADLINE_METRICS)}** headline metrics (bar: ≥ 4); wall-time ratio Dig2DIG-25 / "
            f"DDFM-100 = {ratio}.\n\n" + "\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/dig2dig_ablations")
    ap.add_argument("--msrs", type=int, default=10, help="MSRS pairs (first N)")
    ap.add_argument("--llvip", type=int, default=4, help="LLVIP pairs (first N)")
    ap.add_argument("--other", type=int, default=4, help="pairs per MFF/MEF dataset")
    ap.add_argument("--only", help="comma-separated parts: headline,distance,interval,temperature,steps,tasks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prior", help="prior path (default: the embedded prior)")
    ap.add_argument("--results", help="also copy the combined report into this folder")
    return run(ap.parse_args())


if __name__ == "__main__":
    sys.exit(main())
