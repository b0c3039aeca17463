"""dig2dig against the published field: our methods, the classical baselines and the peers' outputs.

    python benchmarks/field_bench.py [--dataset vifb|mffw] [--out runs/bench_DATASET]
                                     [--methods dig2dig,ddfm:steps=100,...] [--limit N] [--results benchmarks/results]

``vifb``: the 21 VIFB pairs (``data/fusion/vif/vifb``) with the VIFB toolbox's convention (13 metrics,
colour scored per channel) beside the 25 VIFB peers (``data/peers/vifb/<method>``).  ``mffw``: the 13
MFFW multi-focus pairs (``data/fusion/mff/mffw``) with the cddfuse convention beside the 30 MFIFB peers
(``data/peers/mffw/<method>``).  Runs ``dig2dig bench`` (resumable: rerun to continue); the embedded
prior is pinned into the run folder on the first run and the table's header names its sha256.  Under
the table: each of our methods' rank among the peers on every metric, and the peers' median.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

from _command import command_line

SHARED = Path(os.environ.get("DIG2DIG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
METHODS = ["dig2dig", "ddfm:steps=100", "average", "maxabs", "laplacian", "guided"]
DATASETS = {  # name: (pairs, peers, convention)
    "vifb": ("data/fusion/vif/vifb", "data/peers/vifb", "vifb"),
    "mffw": ("data/fusion/mff/mffw", "data/peers/mffw", "cddfuse"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="vifb")
    ap.add_argument("--out", help="run folder (default: runs/bench_DATASET)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated method specs")
    ap.add_argument("--limit", type=int, help="only the first N pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", help="copy the table and the bar plot into this folder")
    args = ap.parse_args()

    from dig2dig.bench import aggregate, read_csv, run_bench
    from dig2dig.metrics.registry import higher_is_better
    from dig2dig.prior.embedded import EMBEDDED_DIR
    from dig2dig.spec import FusionSpec

    pairs, peer_dir, convention = DATASETS[args.dataset]
    out = Path(args.out or f"runs/bench_{args.dataset}")
    out.mkdir(parents=True, exist_ok=True)
    prior = out / "prior"
    if not (prior / "spec.json").is_file():
        shutil.copytree(EMBEDDED_DIR, prior, dirs_exist_ok=True)
    spec = json.loads((prior / "spec.json").read_text())
    peers = sorted(p for p in (SHARED / peer_dir).iterdir() if p.is_dir())
    # the spec-string parser splits on commas inside one spec, so methods are separated by ';' or
    # given as NAME[:opts] items whose options use no commas
    methods = [m for m in args.methods.replace(";", "\n").replace(",", "\n").splitlines() if m]
    methods = _rejoin(methods)
    written = run_bench(
        [SHARED / pairs],
        methods,
        out,
        peers=peers,
        convention=convention,
        spec=FusionSpec(seed=args.seed, prior=str(prior)),
        limit=args.limit,
        log=lambda m: print(m, file=sys.stderr),
    )
    md = Path(written["markdown"]).read_text()
    header = (
        f"Prior: `{spec['name']}` sha256 `{spec['sha256'][:16]}…` "
        f"({spec.get('extra', {}).get('trained_steps', '?')} training steps). Methods run here: "
        f"{', '.join(f'`{m}`' for m in methods)}; the other {len(peers)} rows are the published peers' outputs "
        f"scored with the same code ({convention} convention). Seed {args.seed}; written by "
        f"`{command_line('field_bench.py', sys.argv[1:], ('--out',))}`.\n\n"
    )
    header += _resolved(methods)
    md = md.replace("\n", "\n\n" + header, 1) if md.startswith("#") else header + md
    md += (
        "\n"
        + "\n".join(
            ranks(
                aggregate(read_csv(written["csv"])),
                Path(pairs).name,
                methods,
                [p.name for p in peers],
                higher_is_better,
            )
        )
        + "\n"
    )
    (out / "summary.md").write_text(md)
    if args.results:
        res = Path(args.results)
        res.mkdir(parents=True, exist_ok=True)
        (res / f"{args.dataset}_bench.md").write_text(md)
        for plot in written.get("plots", []):
            if Path(plot).name.endswith("_bars.png"):
                shutil.copyfile(plot, res / f"{args.dataset}_bench_bars.png")
    print(md)
    return 0


def _resolved(methods: list[str]) -> str:
    """The options each diffusion method ran with, defaults filled in (a default may change later)."""
    from dig2dig.bench import parse_method
    from dig2dig.methods import get_method

    lines = []
    for spec in methods:
        _, name, opts = parse_method(spec)
        m = get_method(name)
        if m.needs_prior:
            steps = opts.pop("steps", m.default_steps)
            given = m.configure(opts).to_dict()
            lines.append(f"`{spec}`: {steps} steps, " + ", ".join(f"{k}={v}" for k, v in given.items()))
    return ("Options as run: " + "; ".join(lines) + ".\n\n") if lines else ""


def ranks(agg: dict, dataset: str, methods: list[str], peers: list[str], higher_is_better) -> list[str]:
    """Markdown: for each of our methods, its rank among the peers (1 = best of peers + it) per metric."""
    metrics = sorted({k for (d, m, k) in agg if d == dataset and m in peers and k != "time_s"})
    lines = [
        f"## Rank among the {len(peers)} peers (1 = best of {len(peers) + 1})",
        "",
        "| method | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    up = {k: higher_is_better(k) for k in metrics}
    field = {k: [agg[(dataset, p, k)][0] for p in peers if (dataset, p, k) in agg] for k in metrics}
    med = {k: statistics.median(v) for k, v in field.items() if v}

    def rank(m: str, k: str) -> str:  # 1 + the peers strictly better
        if (dataset, m, k) not in agg:
            return "–"
        v = agg[(dataset, m, k)][0]
        return str(1 + sum(1 for x in field[k] if (x > v if up[k] else x < v)))

    for m in methods:
        lines.append(f"| {m} | " + " | ".join(rank(m, k) for k in metrics) + " |")
    lines.append("| *peer median* | " + " | ".join(f"{med[k]:.4g}" if k in med else "–" for k in metrics) + " |")
    return lines


def _rejoin(parts: list[str]) -> list[str]:
    """``["dig2dig:steps=25", "distance=l1", "ddfm"]`` -> ``["dig2dig:steps=25,distance=l1", "ddfm"]``."""
    out: list[str] = []
    for p in parts:
        if out and "=" in p and ":" not in p:
            out[-1] += "," + p
        else:
            out.append(p)
    return out


if __name__ == "__main__":
    sys.exit(main())
