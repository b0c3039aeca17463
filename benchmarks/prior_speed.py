"""Time one forward of the embedded prior at 640×480 (the bar: ≤ 1.5 s on a 2-core CPU).

    python benchmarks/prior_speed.py [--prior PATH] [--threads 2] [--repeat 5] [--batch 1 2]
                                     [--size 480x640] [--json out.json]

The input is padded to the prior's spatial multiple exactly as ``dig2dig fuse`` pads it (480×640
is already a multiple of the embedded prior's 16).  Each batch size is warmed up once and then timed ``--repeat``
times; best and median are printed, per forward and per image.  (A Dig2DIG refresh with two
sources is one forward of batch 2 at half this resolution: ``dig_scale`` = 0.5.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

BUDGET_S = 1.5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", help="a prior path (default: the embedded prior)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--size", default="480x640", help="HxW")
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args()

    import torch

    from dig2dig.geometry import padding_for
    from dig2dig.prior import load_prior

    torch.set_num_threads(args.threads)
    den = load_prior(args.prior)
    h, w = (int(v) for v in args.size.lower().split("x"))
    ph, pw = padding_for(h, w, den.spatial_multiple).shape
    gen = torch.Generator().manual_seed(0)
    rows = []
    for b in args.batch:
        x = torch.randn(b, den.channels, ph, pw, generator=gen)
        times = []
        with torch.inference_mode():
            den.eps(x, 500)  # warm-up
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                den.eps(x, 500)
                times.append(time.perf_counter() - t0)
        rows.append(
            {
                "batch": b,
                "best_s": round(min(times), 4),
                "median_s": round(statistics.median(times), 4),
                "per_image_best_s": round(min(times) / b, 4),
            }
        )
    res = {
        "prior": den.spec.name,
        "sha256": den.spec.sha256,
        "size": [h, w],
        "padded": [ph, pw],
        "threads": args.threads,
        "torch": torch.__version__,
        "repeat": args.repeat,
        "rows": rows,
        "budget_s": BUDGET_S,
    }
    single = next((r for r in rows if r["batch"] == 1), None)
    if single is not None:
        res["within_budget"] = single["best_s"] <= BUDGET_S
    print(f"prior {den.spec.name} ({den.spec.sha256[:12]}), {h}x{w} -> {ph}x{pw}, {args.threads} threads")
    for r in rows:
        print(
            f"  batch {r['batch']}: best {r['best_s']:.3f} s, median {r['median_s']:.3f} s "
            f"({r['per_image_best_s']:.3f} s per image)"
        )
    if single is not None:
        print(f"  budget {BUDGET_S} s per forward: {'met' if res['within_budget'] else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
