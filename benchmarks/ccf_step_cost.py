"""CCF per-step cost: the prior's forward against the autograd on x̂0 (conditions, gradients, gate).

    python benchmarks/ccf_step_cost.py [--sizes 256x256,480x640] [--steps 6] [--threads 1]
                                       [--prior PATH] [--conditions ...] [--json out.json]

Runs CCF's DDIM with random sources of each size (timing does not depend on image content) and
reports, per step, the network forward (timed by :class:`dig2dig.prior.TimedDenoiser`) and the
rest of the step, which is CCF's rectification (condition losses, one backward per condition, the
gate and Adam); then each condition's own forward/backward time on one x̂0.  The first step of each
run is a warm-up and is not counted.  Without --prior it uses the embedded luminance prior.
``benchmarks/step_time.py`` runs :func:`measure` at 640×480 for ``results/step_time.md``.
"""

from __future__ import annotations

import argparse
import json
import time


def measure(den, h: int, w: int, steps: int = 6, conditions=None, release_compat: bool = False) -> dict:
    """CCF's DDIM on random ``h``×``w`` sources with ``den``: the mean step split into the prior's forward
    and the rectification (the first step, a warm-up, is not counted), and each condition's own
    forward/backward time on the last x̂0."""
    import torch

    from dig2dig.guidance.ccf import CCFGuidance
    from dig2dig.guidance.ccf_conditions import iter_gradients
    from dig2dig.options import CCFOptions
    from dig2dig.prior import TimedDenoiser
    from dig2dig.sampler import ddim
    from dig2dig.schedule import uniform_grid

    g = torch.Generator().manual_seed(0)
    srcs = [torch.rand((1, 1, h, w), generator=g) * 2 - 1 for _ in range(2)]
    x_T = torch.randn((1, den.channels, h, w), generator=g)
    grid = uniform_grid(steps + 1)
    ccf = CCFGuidance(srcs, CCFOptions.create({"conditions": conditions, "release_compat": release_compat}))
    prior = TimedDenoiser(den, sync=True)
    per_step: dict[str, list[float]] = {"prior_s": [], "rectify_s": []}
    mark = [time.perf_counter(), 0.0]

    def on_step(o):
        now = time.perf_counter()
        per_step["prior_s"].append(prior.seconds - mark[1])
        per_step["rectify_s"].append(now - mark[0] - per_step["prior_s"][-1])
        mark[:] = [now, prior.seconds]

    t0 = time.perf_counter()
    out = ddim(prior, x_T, grid, ccf, callback=on_step)
    wall = time.perf_counter() - t0
    n = len(grid) - 1  # drop the warm-up step
    mean = {k: sum(v[1:]) / n for k, v in per_step.items()}
    step_s = mean["prior_s"] + mean["rectify_s"]
    # each condition alone, on the last x̂0
    x0 = out.x0.detach()
    per_cond = {}
    for c in ccf.bank(den.channels):
        z = x0.clone().requires_grad_(True)
        with torch.enable_grad():
            c(z)  # warm-up
            t1 = time.perf_counter()
            loss = c(z)
            t2 = time.perf_counter()
            list(iter_gradients([loss], z))
            t3 = time.perf_counter()
        per_cond[c.name] = {"forward_ms": 1e3 * (t2 - t1), "backward_ms": 1e3 * (t3 - t2)}
    return {
        "size": [h, w],
        "prior": den.spec.name,
        "channels": den.channels,
        "threads": torch.get_num_threads(),
        "steps_timed": n,
        "wall_s": wall,
        "per_step_ms": {k: 1e3 * v for k, v in mean.items()},
        "rectify_share_of_step": mean["rectify_s"] / step_s,
        "rectify_over_prior": mean["rectify_s"] / mean["prior_s"],
        "per_condition": per_cond,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256x256,480x640", help="HxW list")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prior")
    ap.add_argument("--conditions", default=None, help="comma list; default: the VIF preset")
    ap.add_argument("--release-compat", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()

    import torch

    from dig2dig.prior import load_prior

    torch.set_num_threads(args.threads)
    den = load_prior(args.prior)
    results = []
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.lower().split("x"))
        res = measure(den, h, w, args.steps, args.conditions, args.release_compat)
        results.append(res)
        ms = res["per_step_ms"]
        print(
            f"{h}x{w}: step {ms['prior_s'] + ms['rectify_s']:.1f} ms = prior {ms['prior_s']:.1f} + CCF "
            f"{ms['rectify_s']:.1f}; CCF share {100 * res['rectify_share_of_step']:.1f}% of the step, "
            f"{100 * res['rectify_over_prior']:.1f}% of a prior forward"
        )
        print(
            "   per condition (fwd/bwd ms): "
            + ", ".join(f"{k} {v['forward_ms']:.1f}/{v['backward_ms']:.1f}" for k, v in res["per_condition"].items())
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
