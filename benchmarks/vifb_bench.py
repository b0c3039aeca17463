"""dig2dig against the field on VIFB: our methods, the classical baselines and the 25 VIFB peers.

    python benchmarks/vifb_bench.py [--out runs/bench_vifb] [--methods dig2dig:steps=25,...]
                                    [--limit N] [--results benchmarks/results]

Runs ``dig2dig bench`` on the 21 VIFB pairs (``data/fusion/vif/vifb``) with the VIFB toolbox's
convention (13 metrics, colour scored per channel) and adds the 25 precomputed peer outputs
(``data/peers/vifb/<method>``).  Resumable: rerun to continue.  The embedded prior is pinned into
the run folder on the first run; the table's header names its sha256 and the step counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

SHARED = Path(os.environ.get("DIG2DIG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
METHODS = ["dig2dig:steps=25", "ddfm:steps=100", "average", "maxabs", "laplacian", "guided"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench_vifb")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated method specs")
    ap.add_argument("--limit", type=int, help="only the first N pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", help="copy the table and the bar plot into this folder")
    args = ap.parse_args()

    from dig2dig.bench import run_bench
    from dig2dig.prior.embedded import EMBEDDED_DIR

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prior = out / "prior"
    if not (prior / "spec.json").is_file():
        shutil.copytree(EMBEDDED_DIR, prior, dirs_exist_ok=True)
    spec = json.loads((prior / "spec.json").read_text())
    peers = sorted(p for p in (SHARED / "data/peers/vifb").iterdir() if p.is_dir())
    # the spec-string parser splits on commas inside one spec, so methods are separated by ';' or
    # given as NAME[:opts] items whose options use no commas
    methods = [m for m in args.methods.replace(";", "\n").replace(",", "\n").splitlines() if m]
    methods = _rejoin(methods)
    written = run_bench([SHARED / "data/fusion/vif/vifb"], methods, out, peers=peers, convention="vifb",
                        seed=args.seed, prior=str(prior), limit=args.limit,
                        log=lambda m: print(m, file=sys.stderr))
    md = Path(written["markdown"]).read_text()
    header = (f"Prior: `{spec['name']}` sha256 `{spec['sha256'][:16]}…` "
              f"({spec.get('extra', {}).get('trained_steps', '?')} training steps). Methods run here: "
              f"{', '.join(f'`{m}`' for m in methods)}; the other rows are the VIFB peers' published outputs "
              "scored with the same code. Seed "
              f"{args.seed}; `python benchmarks/vifb_bench.py` reproduces it.\n\n")
    md = md.replace("\n", "\n\n" + header, 1) if md.startswith("#") else header + md
    (out / "summary.md").write_text(md)
    if args.results:
        res = Path(args.results)
        res.mkdir(parents=True, exist_ok=True)
        (res / "vifb_bench.md").write_text(md)
        for plot in written.get("plots", []):
            if Path(plot).name.endswith("_bars.png"):
                shutil.copyfile(plot, res / "vifb_bench_bars.png")
    print(md)
    return 0


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
