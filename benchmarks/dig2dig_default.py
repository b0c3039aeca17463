"""Choosing Dig2DIG's default configuration on the dev sets: a Pareto table of candidates.

    python benchmarks/dig2dig_default.py [--out runs/default_study] [--limit N] [--candidates a,b,...]
                                         [--datasets vifb,msrs,mffw] [--results benchmarks/results]

Every candidate (a set of Dig2DIG options, below) fuses the dev pairs of VIFB (21 pairs), MSRS (the first
10) and MFFW (13) with the same pinned prior; the plain average (and with --ddfm DDFM-100) stands beside them.  All of
it is scored with the cddfuse convention on the metrics that reward carrying each source's structure and
information (Qabf, VIF, SF, SD, MI: higher is better) and on those a plain average wins (SSIM and CC:
higher, MSE and Nabf: lower).  The table marks, per dataset, the candidates no other candidate beats on
every one of the nine metrics (the Pareto front).  Resumable (one bench folder per dataset).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from _command import command_line

SHARED = Path(os.environ.get("DIG2DIG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DATASETS = {
    "vifb": ("data/fusion/vif/vifb", None),
    "msrs": ("data/fusion/vif/msrs", 10),
    "mffw": ("data/fusion/mff/mffw", None),
}
METRICS = ["Qabf", "VIF", "SF", "SD", "MI", "SSIM", "CC", "MSE", "Nabf"]
UP = {"Qabf", "VIF", "SF", "SD", "MI", "SSIM", "CC"}
CANDIDATES = {  # spelled out, so that the table means the same after a default changes
    "paper-literal": "dig2dig:mixing=attractive,limit=0,smooth=0,temperature=1",
    "v1-default": "dig2dig:mixing=complementary,limit=1,smooth=12,temperature=1",
    "t002-s48": "dig2dig:mixing=complementary,limit=20,temperature=0.02,smooth=48",
    "t002-s64": "dig2dig:mixing=complementary,limit=20,temperature=0.02,smooth=64",
    "t001-s64": "dig2dig:mixing=complementary,limit=20,temperature=0.01,smooth=64",
    "t002-s32": "dig2dig:mixing=complementary,limit=20,temperature=0.02,smooth=32",  # the default since 0.2
    "fast-18-7": "dig2dig:steps=18,interval=7,mixing=complementary,limit=20,temperature=0.02,smooth=32",
}
BASELINES = ["average"]  # --ddfm adds DDFM-100 (four times Dig2DIG-25's time)


def pareto(rows: dict[str, dict[str, float]]) -> set[str]:
    """Names whose metric vector no other dominates (>= everywhere in the metric's direction, > somewhere)."""

    def better_or_equal(a, b, k):
        return a[k] >= b[k] if k in UP else a[k] <= b[k]

    front = set()
    for n, a in rows.items():
        dominated = any(
            all(better_or_equal(b, a, k) for k in METRICS) and any(not better_or_equal(a, b, k) for k in METRICS)
            for m, b in rows.items()
            if m != n
        )
        if not dominated:
            front.add(n)
    return front


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/default_study")
    ap.add_argument("--limit", type=int, help="only the first N pairs of each dataset")
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=SPEC", help="another candidate")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--ddfm", action="store_true", help="also run DDFM-100 beside the candidates")
    ap.add_argument("--prior", help="prior to pin (default: the embedded one)")
    ap.add_argument("--results", help="write the table into this folder")
    args = ap.parse_args()

    import shutil

    from dig2dig.bench import aggregate, run_bench
    from dig2dig.prior.embedded import EMBEDDED_DIR
    from dig2dig.spec import FusionSpec

    cands = {k: CANDIDATES[k] for k in args.candidates.split(",") if k}
    for e in args.extra:
        name, _, spec = e.partition("=")
        cands[name] = spec
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prior = out / "prior"
    if not (prior / "spec.json").is_file():
        shutil.copytree(Path(args.prior) if args.prior else EMBEDDED_DIR, prior, dirs_exist_ok=True)
    label = {spec: name for name, spec in cands.items()}
    lines = [
        "# Dig2DIG default configuration: candidates on the dev sets",
        "",
        f"Written by `{command_line('dig2dig_default.py', sys.argv[1:], ('--out',))}` (cddfuse convention; prior "
        "pinned in the run folder). "
        "Higher is better for Qabf, VIF, SF, SD, MI, SSIM, CC; lower for MSE and Nabf. **Bold**: on the "
        "dataset's Pareto front among the candidates.",
        "",
    ]
    for ds in args.datasets.split(","):
        folder, limit = DATASETS[ds]
        methods = list(cands.values()) + (
            [] if args.no_baselines else BASELINES + (["ddfm:steps=100"] if args.ddfm else [])
        )
        w = run_bench(
            [SHARED / folder],
            methods,
            out / ds,
            convention="cddfuse",
            metrics=METRICS,
            spec=FusionSpec(prior=str(prior)),
            limit=args.limit or limit,
            plots=False,
            log=lambda m: print(m, file=sys.stderr),
        )
        from dig2dig.bench import read_csv

        agg = aggregate(read_csv(w["csv"]))
        name = Path(folder).name
        rows = {
            label.get(m, m): {k: agg[(name, m, k)][0] for k in METRICS}
            for m in methods
            if all((name, m, k) in agg for k in METRICS)
        }
        n_pairs = max(agg[(name, m, "Qabf")][2] for m in methods if (name, m, "Qabf") in agg)
        front = pareto({k: v for k, v in rows.items() if k in cands})
        lines += [
            f"## {ds} ({n_pairs} pairs)",
            "",
            "| candidate | options | " + " | ".join(METRICS) + " |",
            "|---|---|" + "---|" * len(METRICS),
        ]
        for n, v in rows.items():
            spec = cands.get(n, n)
            cells = [f"{v[k]:.4g}" for k in METRICS]
            lines.append(f"| {'**' + n + '**' if n in front else n} | `{spec}` | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    (out / "pareto.md").write_text(text)
    if args.results:
        Path(args.results, "dig2dig_default.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
