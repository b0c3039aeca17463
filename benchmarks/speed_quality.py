"""Do the speed settings keep the default's quality?  Each candidate against the default, every task.

    python benchmarks/speed_quality.py [--candidates dig2dig:precision=int8,...] [--out runs/speed_quality]
                                       [--tasks vif,mif,mef,mff] [--datasets msrs,...] [--limit N]
                                       [--results benchmarks/results]

Fuses the dev sets of ``task_quality.py`` (the same datasets, pair limits, seeds and pinned prior) with
the default ``dig2dig`` and each candidate spec (as ``dig2dig bench`` reads them, e.g.
``dig2dig:precision=int8`` or ``dig2dig:steps=18,interval=7``), scores both with the same metrics
(cddfuse convention; MEF-SSIM in the mefb convention) and writes ``speed_quality.md``: per dataset,
each metric's mean for the default and the candidate and the relative change (signed so that
positive is better; the absolute change where the default's mean is not positive, as SSIM_min can
be), the largest loss over all metrics, and the wall time per pair from the batch sidecars (timings
are only comparable when nothing else ran meanwhile).  The bar: no metric of any dataset more than
1 % worse than the default.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _command import command_line
from task_quality import DEFAULT, SHARED, SHOWN, TASKS, UP, _cap, _fmt, _mean, dataset_scores, table_head

BAR = 0.01


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", default="dig2dig:precision=int8")
    ap.add_argument("--out", default="runs/speed_quality")
    ap.add_argument("--datasets", help="comma list: only these of the tasks' datasets (default: all)")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--limit", type=int, help="only the first N pairs of each dataset")
    ap.add_argument(
        "--seed-noise",
        action="store_true",
        help="also the default with seed 1: how far a change of seed alone moves each metric (the floor under the bar)",
    )
    ap.add_argument("--results", help="write speed_quality.md into this folder")
    args = ap.parse_args()

    import shutil

    from dig2dig.prior.embedded import EMBEDDED_DIR

    out = Path(args.out)
    prior = out / "prior"
    if not (prior / "spec.json").is_file():
        shutil.copytree(EMBEDDED_DIR, prior, dirs_exist_ok=True)
    cands = _split(args.candidates)
    seeded = "default, seed 1"
    lines = [
        "# Speed settings against the default: the quality of every task",
        "",
        f"Written by `{command_line('speed_quality.py', sys.argv[1:], ('--out',))}` (the embedded prior pinned "
        "in the run folder, seed 0 per run as in `task_quality.md`; cddfuse convention, MEF-SSIM in the mefb "
        "convention). Change = (candidate − default) / |default|, signed so that **positive is better** "
        f"(for ↓ metrics the sign is flipped). Bar: no change below −{100 * BAR:g} %."
        + (
            " The row *default, seed 1* is the default itself with another seed: how far chance alone moves "
            "each mean over these pairs (its time is not shown: it only measures that noise)."
            if args.seed_noise
            else ""
        ),
        "",
    ]
    rows = [*cands, seeded] if args.seed_noise else cands
    summary: dict[str, list] = {c: [] for c in rows}
    for task in args.tasks.split(","):
        datasets, _, keys = TASKS[task]
        for name, folder, first in datasets:
            if args.datasets and name not in args.datasets.split(","):
                continue
            limit = _cap(first, args.limit)
            methods = [DEFAULT, *cands]
            v = dataset_scores(out / name, SHARED / folder, methods, keys, prior, limit)
            if args.seed_noise:  # the same default, another seed: its own run folder
                (out / "seed1").mkdir(parents=True, exist_ok=True)
                other = dataset_scores(out / "seed1" / name, SHARED / folder, [DEFAULT], keys, prior, limit, seed=1)
                v.update({(seeded, c): x for (_, c), x in other.items()})
            cols = [k for k in dict.fromkeys(keys + SHOWN)]
            n = len(v.get((DEFAULT, cols[0]), []))
            lines += [f"## {task.upper()} · {name} ({n} pairs)", "", *table_head(cols)]
            base = {c: _mean(v.get((DEFAULT, c), [])) for c in cols}
            lines.append(
                "| default | " + " | ".join(_fmt(base[c]) for c in cols) + f" | {_fmt(_mean(v[(DEFAULT, 'time_s')]))} |"
            )
            for cand in rows:
                cells, worst = [], (0.0, "")
                for c in cols:
                    mine = _mean(v.get((cand, c), []))
                    sign = 1 if c in UP else -1
                    if base[c] <= 0:  # a signed measure near zero (SSIM_min): a ratio means nothing there
                        cells.append(f"{_fmt(mine)} (Δ {sign * (mine - base[c]):+.4f})")
                        continue
                    change = (mine - base[c]) / base[c] * sign
                    worst = min(worst, (change, c))
                    cells.append(f"{_fmt(mine)} ({100 * change:+.2f} %)")
                summary[cand].append((task, name, worst, _mean(v[(cand, "time_s")]) / _mean(v[(DEFAULT, "time_s")])))
                label = cand if cand == seeded else f"`{cand}`"
                t = "–" if cand == seeded else _fmt(_mean(v[(cand, "time_s")]))  # the seed row measures noise only
                lines.append(f"| {label} | " + " | ".join(cells) + f" | {t} |")
            lines.append("")
    lines += [
        "## Summary",
        "",
        "| candidate | dataset | largest loss | metric | time / default's |",
        "|---|---|---|---|---|",
    ]
    for cand, rows in summary.items():
        for task, name, (change, metric), ratio in rows:
            flag = "" if change >= -BAR else " **over the bar**"
            shown = "–" if cand == seeded else f"{ratio:.2f}"
            lines.append(
                f"| {cand if cand == seeded else f'`{cand}`'} | {task} · {name} | {100 * change:+.2f} %{flag} | "
                f"{metric or '–'} | {shown} |"
            )
    text = "\n".join(lines) + "\n"
    (out / "speed_quality.md").write_text(text)
    if args.results:
        Path(args.results, "speed_quality.md").write_text(text)
    print(text)
    return 0


def _split(text: str) -> list[str]:
    """Candidate specs separated by ';' or by ',' before a method name (specs contain commas)."""
    if ";" in text:
        return [c.strip() for c in text.split(";") if c.strip()]
    out: list[str] = []
    for part in text.split(","):
        if ":" in part or not out or "=" not in part:
            out.append(part)
        else:
            out[-1] += "," + part
    return out


if __name__ == "__main__":
    sys.exit(main())
