"""Wall time per reverse step and the share of it spent outside the prior's forward pass.

    python benchmarks/step_time.py [--prior PATH] [--pair DIR] [--steps 10] [--method ddfm]

Fuses one real pair (default: the first MSRS pair, 640×480) and reports, from the sampler's own
timers, the time in network forwards versus everything else (guidance, DDIM update, colour,
padding, I/O).  Without --prior it uses the embedded prior, or -- when none is installed -- a
randomly initialised compact prior of the shipped architecture (timing does not depend on weights).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

SHARED = Path(os.environ.get("DIG2DIG_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior")
    ap.add_argument("--pair", default=str(SHARED / "data/fusion/vif/msrs/00001D"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--method", default="ddfm", help="a method spec as bench reads it, e.g. dig2dig:interval=7")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args()

    import torch

    import dig2dig
    from dig2dig.bench import parse_method
    from dig2dig.io import list_images
    from dig2dig.prior import embedded_available, load_prior
    from dig2dig.prior.base import Denoiser, PriorSpec

    torch.set_num_threads(args.threads)
    if args.prior:
        den = load_prior(args.prior)
    elif embedded_available():
        den = load_prior(None)
    else:
        import tomllib

        from dig2dig.prior.compact import CompactConfig, CompactUNet

        arch = tomllib.loads((Path(__file__).resolve().parents[1] / "configs/prior.toml").read_text())["architecture"]
        cfg = CompactConfig.from_dict(arch)
        net = CompactUNet(cfg).eval()
        den = Denoiser(net, PriorSpec("dig2dig", cfg.to_dict(), 1, cfg.spatial_multiple, name="random-compact"), net)
    pair = Path(args.pair)
    files = list_images(pair)
    _, method, opts = parse_method(args.method)
    dig2dig.fuse(files, method=method, steps=2, prior=den, **opts)  # warm-up
    t0 = time.perf_counter()
    r = dig2dig.fuse(files, method=method, steps=args.steps, prior=den, **opts)
    wall = time.perf_counter() - t0
    t = r.timings
    outside = wall - t["prior_forward_s"]
    res = {
        "pair": str(pair),
        "size": r.config["size"],
        "prior": den.spec.name,
        "method": args.method,
        "steps": args.steps,
        "threads": args.threads,
        "wall_s": round(wall, 3),
        "per_step_s": round(wall / args.steps, 4),
        "prior_forward_s": round(t["prior_forward_s"], 3),
        "prior_forwards": t["prior_forwards"],
        "outside_prior_in_loop_s": round(t["outside_prior_s"], 3),
        "outside_prior_share": round(outside / wall, 4),
        "outside_prior_share_in_loop": round(1 - t["prior_forward_s"] / t["sample_total_s"], 4),
    }
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
