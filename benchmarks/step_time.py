"""Clean timings: the prior's forward, whole fusions, and how close the prior runs to this machine's limit.

    python benchmarks/step_time.py [--methods dig2dig,ddfm,ccf] [--pair DIR ...] [--threads 2] [--precisions fp32,int8]
                                   [--prior PATH] [--repeat 5] [--no-ccf-split]
                                   [--out benchmarks/results/step_time.md] [--json FILE]

Writes ``results/step_time.md`` (``--out``), whose header names the command that made it:

1. the prior's forward at the first pair's size, batch 1 and 2 (best and median of ``--repeat``),
   with its FLOPs (``torch.utils.flop_counter.FlopCounterMode``, one forward) and the GFLOP/s
   achieved, beside the peak measured here: the best of a few large fp32 matmuls
   (``--peak-size``) with the same number of threads;
2. whole fusions of each ``--methods`` spec (as ``dig2dig bench`` reads it, e.g. ``ccf:steps=50``;
   default steps unless the spec sets them) on each pair (default: the first MSRS pair, 640×480),
   each after a 2-step warm-up of the same configuration: wall time of the whole ``dig2dig.fuse``
   call (reading, colour, padding, sampling, cropping), per step, the prior's forwards and the time
   in them (the sampler's own timers), the share outside the prior, and the prior's GFLOP/s (the
   FLOPs of every forward the fusion ran, counted per input shape);
3. CCF's per-step split (``ccf_step_cost.measure``: the forward against the rectification).

Without --prior it uses the embedded prior, or -- when none is installed -- a randomly initialised
compact prior of the shipped architecture (timing does not depend on the weights).  Run it with
nothing else on the machine; the header records the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from _command import command_line

SHARED = Path(os.environ.get("DIG2DIG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
REPO = Path(__file__).resolve().parents[1]
FORWARD_BUDGET_S = 1.5  # one forward of the prior at 640×480 on a 2-core CPU
RATIO_BAR = 1 / 3.5  # Dig2DIG-25 against DDFM-100, wall time
METHODS = "dig2dig,ddfm,ccf"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_denoiser(path: str | None):
    from dig2dig.prior import embedded_available, load_prior
    from dig2dig.prior.base import Denoiser, PriorSpec

    if path or embedded_available():
        return load_prior(path)
    import tomllib

    from dig2dig.prior.compact import CompactConfig, CompactUNet

    arch = tomllib.loads((REPO / "configs/prior.toml").read_text())["architecture"]
    cfg = CompactConfig.from_dict(arch)
    net = CompactUNet(cfg).eval()
    return Denoiser(net, PriorSpec("dig2dig", cfg.to_dict(), 1, cfg.spatial_multiple, name="random-compact"), net)


def matmul_peak(n: int, repeat: int = 5) -> dict:
    """GFLOP/s of the best of ``repeat`` fp32 ``n``×``n`` matmuls (after one untimed)."""
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a @ b
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return {"size": n, "best_s": min(times), "gflops": 2 * n**3 / min(times) / 1e9}


def forward_flops(den, shape: tuple[int, ...]) -> int:
    """FLOPs of one forward of ``den`` on an input of ``shape`` (torch's FLOP counter: convolutions,
    matmuls and attention; elementwise work and normalisation are not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(shape)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        den.eps(x, 500)
    return int(counter.get_total_flops())


def time_forward(den, shape: tuple[int, ...], repeat: int) -> list[float]:
    import torch

    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        den.eps(x, 500)  # warm-up
        for _ in range(repeat):
            t0 = time.perf_counter()
            den.eps(x, 500)
            times.append(time.perf_counter() - t0)
    return times


class ShapeLog:
    """Input shapes of every call of the prior's network (a forward pre-hook: no cost worth timing)."""

    def __init__(self, module):
        self.shapes: list[tuple[int, ...]] = []
        self.handle = module.register_forward_pre_hook(self._hook) if module is not None else None

    def _hook(self, module, args):
        self.shapes.append(tuple(args[0].shape))

    def close(self):
        if self.handle is not None:
            self.handle.remove()


def fusion(den, files, spec: str, flops_of) -> dict:
    import dig2dig
    from dig2dig.bench import parse_method

    _, method, opts = parse_method(spec)
    steps = opts.pop("steps", None)
    dig2dig.fuse(files, method=method, steps=2, prior=den, **opts)  # warm-up
    log = ShapeLog(den.module)
    from dig2dig.prior import int8

    run_int8 = int8.eps

    def logged(sess, x, t):  # the ONNX Runtime forwards do not pass the torch module's hook
        log.shapes.append(tuple(x.shape))
        return run_int8(sess, x, t)

    int8.eps = logged
    try:
        t0 = time.perf_counter()
        r = dig2dig.fuse(files, method=method, steps=steps, prior=den, **opts)
        wall = time.perf_counter() - t0
    finally:
        log.close()
        int8.eps = run_int8
    t = r.timings
    taken = r.config.get("steps_taken") or r.config["steps"]
    flops = sum(flops_of(s) for s in log.shapes) if log.shapes else None
    return {
        "method": spec,
        "steps": taken,
        "wall_s": wall,
        "per_step_s": wall / taken,
        "prior_forward_s": t["prior_forward_s"],
        "prior_forwards": t["prior_forwards"],
        "prior_calls": len(log.shapes) or None,
        "outside_prior_share": (wall - t["prior_forward_s"]) / wall,
        "prior_gflop": None if flops is None else flops / 1e9,
        "prior_gflops": None if flops is None else flops / 1e9 / t["prior_forward_s"],
    }


def _s(v: float) -> str:
    return f"{v:.3f} s" if v < 10 else f"{v:.2f} s"


def report(res: dict) -> str:
    peak = res["peak"]["gflops"]
    first = res["pairs"][0]
    h, w = first["size"]
    lines = [
        f"# Clean timings at {w}×{h}",
        "",
        f"Written by `{res['command']}` (dig2dig {res['dig2dig']}, torch {res['torch']}) on {res['cpu']} "
        f"({res['cpus']} CPUs, {res['threads']} torch threads; load average {res['load_before']:.2f} before the "
        f"run, {res['load_after']:.2f} at its end, which includes the run's own {res['threads']} threads). "
        f"Prior `{res['prior']}` (sha256 `{res['sha256'][:8]}…`, {res['params'] / 1e6:.1f} M parameters; timing "
        f"does not depend on the weights). Pairs: "
        + ", ".join(f"`{p['name']}` ({p['size'][0]}×{p['size'][1]})" for p in res["pairs"])
        + ". Every fusion is timed after a 2-step warm-up of the same configuration; its wall time covers "
        "the whole `dig2dig.fuse` call (reading, colour, padding, sampling, cropping)."
        + (
            ""
            if res["methods"] == METHODS
            else f" A smaller setting than the default `--methods {METHODS}` (each at its default steps)."
        ),
        "",
        f"Peak of this machine: {peak:.1f} GFLOP/s (best of 5 fp32 matmuls of {res['peak']['size']}², "
        f"{res['threads']} threads). FLOPs are torch's FLOP counter (`FlopCounterMode`) on one forward: "
        "convolutions, matmuls and attention, not the elementwise work and normalisations.",
        "",
        f"## The prior's forward ({w}×{h}, padded to {res['forward']['padded'][1]}×{res['forward']['padded'][0]})",
        "",
        "| precision | batch | best | median | per image | GFLOP per image | GFLOP/s | of the peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["forward"]["rows"]:
        rate = r["gflop"] * r["batch"] / r["best_s"]
        lines.append(
            f"| {r.get('precision', 'fp32')} | {r['batch']} | {_s(r['best_s'])} | {_s(r['median_s'])} | "
            f"{_s(r['best_s'] / r['batch'])} | "
            f"{r['gflop']:.1f} | {rate:.1f} | {100 * rate / peak:.0f} % |"
        )
    one = next((r for r in res["forward"]["rows"] if r["batch"] == 1 and r.get("precision", "fp32") == "fp32"), None)
    if one is not None and (h, w) == (480, 640):
        met = "met" if one["best_s"] <= FORWARD_BUDGET_S else "NOT met"
        lines += ["", f"Bar: one forward at 640×480 in ≤ {FORWARD_BUDGET_S} s — {met} ({one['best_s']:.3f} s)."]
    lines += [
        "",
        "## Whole fusions",
        "",
        "| pair | method | steps | wall | per step | prior forwards (images) | time in the prior | "
        "outside the prior | prior GFLOP/s | of the peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in res["pairs"]:
        for f in p["fusions"]:
            rate = f["prior_gflops"]
            lines.append(
                f"| {p['name']} | `{f['method']}` | {f['steps']} | {_s(f['wall_s'])} | {_s(f['per_step_s'])} | "
                f"{f['prior_forwards']:g} | {_s(f['prior_forward_s'])} | {100 * f['outside_prior_share']:.1f} % | "
                + (f"{rate:.1f} | {100 * rate / peak:.0f} % |" if rate is not None else "– | – |")
            )
    lines.append("")
    lines.append(
        "A Dig2DIG refresh is one batched forward of both sources at half resolution (`dig_scale` 0.5), "
        "so it counts two images at about a quarter of a full forward's FLOPs each."
    )
    for p in res["pairs"]:
        by = {f["method"]: f for f in p["fusions"]}
        dig, ddfm = by.get("dig2dig"), by.get("ddfm")
        if dig and ddfm and dig["steps"] == 25 and ddfm["steps"] == 100:
            ratio = dig["wall_s"] / ddfm["wall_s"]
            lines += [
                "",
                f"`{p['name']}`: Dig2DIG-25 / DDFM-100 wall time = {dig['wall_s']:.2f} / {ddfm['wall_s']:.2f} = "
                f"**{ratio:.3f}** ({1 / ratio:.2f}× faster; bar ≤ 1/3.5 = {RATIO_BAR:.3f}: "
                f"{'met' if ratio <= RATIO_BAR else 'NOT met'}).",
            ]
    c = res.get("ccf_split")
    if c:
        ms = c["per_step_ms"]
        lines += [
            "",
            f"## CCF's per-step split ({c['size'][1]}×{c['size'][0]}, `ccf_step_cost.measure`)",
            "",
            f"Per step (mean of {c['steps_timed']} timed steps after one warm-up, VIF preset): prior forward "
            f"{ms['prior_s']:.1f} ms; CCF's rectification (condition losses, one backward per condition, the gate "
            f"and Adam) {ms['rectify_s']:.1f} ms: {100 * c['rectify_share_of_step']:.1f} % of the step "
            f"({100 * c['rectify_over_prior']:.1f} % of one prior forward). Per condition, forward/backward in ms: "
            + ", ".join(f"{k} {v['forward_ms']:.1f}/{v['backward_ms']:.1f}" for k, v in c["per_condition"].items())
            + ".",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior")
    ap.add_argument(
        "--pair",
        action="append",
        help="a pair folder (repeat for more; default: the first MSRS pair)",
    )
    ap.add_argument(
        "--methods",
        default=METHODS,
        help="comma list of method specs as bench reads them, e.g. dig2dig:interval=7 or ccf:steps=50 (each "
        "with its default steps unless the spec sets them)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5, help="timed forwards per batch size (best and median)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2], help="batch sizes of the forward timing")
    ap.add_argument(
        "--precisions",
        default="fp32",
        help="comma list of prior precisions for the forward timing (fp32, int8, ...); int8's GFLOP/s counts "
        "the fp32 network's FLOPs",
    )
    ap.add_argument("--peak-size", type=int, default=2048, help="side of the matmuls that measure the peak")
    ap.add_argument("--no-ccf-split", action="store_true", help="leave out CCF's per-step split")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_time.md"))
    ap.add_argument("--json", help="also write the measurements here")
    args = ap.parse_args()

    import torch

    import dig2dig
    from dig2dig.geometry import padding_for
    from dig2dig.io import list_images, read_image

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    den = load_denoiser(args.prior)
    params = sum(p.numel() for p in den.module.parameters()) if den.module is not None else 0
    pairs = [Path(p) for p in (args.pair or [SHARED / "data/fusion/vif/msrs/00001D"])]
    peak = matmul_peak(args.peak_size)
    print(f"peak: {peak['gflops']:.1f} GFLOP/s (fp32 matmul {args.peak_size}², {args.threads} threads)", flush=True)

    cache: dict[tuple[int, ...], int] = {}

    def flops_of(shape):
        if shape not in cache:
            cache[shape] = forward_flops(den, shape)
        return cache[shape]

    files0 = list_images(pairs[0])
    h, w = read_image(files0[0]).data.shape[:2]
    pad = padding_for(h, w, den.spatial_multiple)
    from dig2dig.prior.execution import ExecutedDenoiser

    rows = []
    for precision in args.precisions.split(","):
        run = den if precision == "fp32" else ExecutedDenoiser(den, precision=precision)
        for b in args.batch:
            shape = (b, den.channels, pad.shape[0], pad.shape[1])
            times = time_forward(run, shape, args.repeat)
            rows.append(
                {
                    "precision": precision,
                    "batch": b,
                    "best_s": min(times),
                    "median_s": statistics.median(times),
                    "gflop": flops_of(shape) / b / 1e9,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    res = {
        "command": command_line("step_time.py", sys.argv[1:]),
        "dig2dig": dig2dig.__version__,
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "prior": den.spec.name,
        "sha256": den.spec.sha256 or "",
        "params": params,
        "peak": peak,
        "forward": {"padded": list(pad.shape), "rows": rows},
        "pairs": [],
        "methods": args.methods,
        "load_before": load_before,
    }
    for pair in pairs:
        files = list_images(pair)
        size = list(read_image(files[0]).data.shape[:2])
        entry = {"name": f"{pair.parent.name}/{pair.name}", "size": size, "fusions": []}
        for spec in filter(None, args.methods.split(",")):
            f = fusion(den, files, spec, flops_of)
            entry["fusions"].append(f)
            print(json.dumps({"pair": entry["name"], **f}), flush=True)
        res["pairs"].append(entry)
    if not args.no_ccf_split:
        sys.path.insert(0, str(Path(__file__).parent))
        from ccf_step_cost import measure

        res["ccf_split"] = measure(den, *pad.shape)
    res["load_after"] = os.getloadavg()[0]
    text = report(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
