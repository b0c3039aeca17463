"""Time dig2dig.metrics on one 640x480 image pair.

Uses a VIFB pair resized to 640x480 (kettle: IR, VIS and the CBF fusion) when the shared data
folder is present, otherwise deterministic synthetic images.  For each convention it runs the
default metric set ``--repeat`` times and prints per-metric times (best run) and the suite total
(best and median), then the same for every registered metric on the gray pair (FMI included,
LPIPS excluded: it needs local weights).

    python benchmarks/metrics_speed.py [--repeat 3] [--skip-registry] [--out benchmarks/results/metrics_speed.txt]

The budget is 2 s per convention suite on a 2-core CPU.  Writes ``results/metrics_speed.txt``
(``--out``), whose first line names the command that made it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from _command import command_line

from dig2dig.metrics import CONVENTIONS, REGISTRY, score

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DIG2DIG_SHARED", REPO.parent / "shared")).resolve()
SIZE = (640, 480)  # (width, height)
BUDGET_S = 2.0


def load_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    base = SHARED / "data"
    paths = [
        base / "fusion/vif/vifb/kettle/ir.jpg",
        base / "fusion/vif/vifb/kettle/vis.jpg",
        base / "peers/vifb/CBF/kettle.jpg",
    ]
    if all(p.exists() for p in paths):
        imgs = [cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), SIZE) for p in paths]
        return imgs[0], imgs[1], imgs[2], "VIFB kettle (CBF) resized to 640x480"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : SIZE[1], 0 : SIZE[0]]
    base_img = 127 + 100 * np.sin(xx / 37.0) * np.cos(yy / 23.0)
    imgs = []
    for k in range(3):
        noisy = base_img[..., None] + rng.normal(0, 12 + 4 * k, (SIZE[1], SIZE[0], 3))
        imgs.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return imgs[0], imgs[1], imgs[2], "synthetic 640x480"


def time_suite(convention: str, fused, sources, repeat: int) -> tuple[list[float], dict[str, float]]:
    names = [m.name for m in CONVENTIONS[convention].metrics if m.default]
    totals, per_metric = [], {n: float("inf") for n in names}
    for _ in range(repeat):
        t_suite = 0.0
        for name in names:
            t0 = time.perf_counter()
            score(fused, sources, convention=convention, metrics=[name])
            dt = time.perf_counter() - t0
            per_metric[name] = min(per_metric[name], dt)
            t_suite += dt
        t0 = time.perf_counter()
        score(fused, sources, convention=convention)  # the suite as one call (shares the colour prep)
        totals.append(time.perf_counter() - t0)
    return totals, per_metric


def time_registry(fused, a, b, repeat: int) -> tuple[list[float], dict[str, float]]:
    """Every registered metric variant (but LPIPS) on float64 gray planes."""
    per: dict[str, float] = {}
    totals = []
    for _ in range(repeat):
        total = 0.0
        for (name, variant), spec in REGISTRY.items():
            if name == "LPIPS":
                continue
            t0 = time.perf_counter()
            if spec.needs_sources == 0:
                spec.func(fused)
            elif spec.needs_sources == -2:
                spec.func(fused, [a, b])
            else:
                spec.func(fused, a, b)
            dt = time.perf_counter() - t0
            key = f"{name}/{variant}"
            per[key] = min(per.get(key, float("inf")), dt)
            total += dt
        totals.append(total)
    return totals, per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-registry", action="store_true", help="only time the convention suites")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "metrics_speed.txt"))
    args = ap.parse_args()
    import dig2dig

    lines: list[str] = []

    def emit(text: str) -> None:  # printed, and kept for --out
        lines.append(text)
        print(text, flush=True)

    load_before = os.getloadavg()[0]
    ir, vis, fused, what = load_pair()
    emit(f"images: {what}; cv2 threads {cv2.getNumThreads()}, {os.cpu_count()} CPUs; best of {args.repeat}")
    for conv in CONVENTIONS:
        totals, per = time_suite(conv, fused, [ir, vis], args.repeat)
        detail = ", ".join(f"{k} {v * 1000:.0f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]))
        verdict = "within" if min(totals) <= BUDGET_S else "OVER"
        emit(
            f"\n[{conv}] {len(per)} metrics on RGB uint8: best {min(totals):.3f} s, median "
            f"{statistics.median(totals):.3f} s ({verdict} the {BUDGET_S:.0f} s budget)"
        )
        emit(f"  per metric (ms): {detail}")
    if not args.skip_registry:
        g = [cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).astype(np.float64) for x in (fused, ir, vis)]
        totals, per = time_registry(g[0], g[1], g[2], args.repeat)
        detail = ", ".join(f"{k} {v * 1000:.0f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]))
        emit(
            f"\n[all registered variants, gray float64] {len(per)} functions: best {min(totals):.3f} s, "
            f"median {statistics.median(totals):.3f} s"
        )
        emit(f"  per function (ms): {detail}")
    cmd = command_line("metrics_speed.py", sys.argv[1:])
    head = (
        f"# Written by `{cmd}` (dig2dig {dig2dig.__version__}); load average "
        f"{load_before:.2f} before the run, {os.getloadavg()[0]:.2f} at its end (which includes the run), "
        f"{os.cpu_count()} CPUs"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join([head, *lines]) + "\n")


if __name__ == "__main__":
    main()
