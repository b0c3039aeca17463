"""The GPU check, in one go: wall time and peak memory of the three methods on a GPU.

    python benchmarks/gpu_check.py [--device cuda] [--out benchmarks/results/gpu.md] [--budget-s 480] [--prior PATH]
    python benchmarks/gpu_check.py --smoke          # the same code path on the CPU with tiny sizes (a test runs it)

What it measures (each after a warm-up run of the same configuration; times synchronised):

1. 640×480, Dig2DIG-25, DDFM-100 and CCF-200 with the ADM-256 architecture (random weights: the
   time does not depend on them; tiles of 256, as the prior was trained, and without tiles) and with
   the embedded compact prior (or ``--prior``), in fp32;
2. Dig2DIG-25 in fp32, bf16 and fp16 with both priors;
3. a batch of 8 pairs (``fuse_batch(max_batch=8)``) against the same 8 one by one;
4. a 3840×2160 pair, Dig2DIG-25, tiled, with both priors;
5. peak GPU memory of every run (``torch.cuda.max_memory_allocated``).

It writes a Markdown table (and the JSON behind it).  A time budget (``--budget-s``) skips what is
left once it is spent, and says so in the table, so one run fits a short GPU lease.  Sources: the
first MSRS pair from ``$DIG2DIG_SHARED`` (default ``../shared``), else synthetic images.

``--smoke`` runs every part on the CPU in seconds: 24×16 sources (48×32 for the tiled part), three
steps, a two-level ADM of 32 channels and the given prior (default: the embedded one).  The half
precisions take the slow reference convolutions on most CPUs, which is why the sizes are this small.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from _command import command_line

SHARED = Path(os.environ.get("DIG2DIG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
ADM256 = {
    "image_size": 256,
    "num_channels": 256,
    "num_res_blocks": 2,
    "attention_resolutions": "32,16,8",
    "num_head_channels": 64,
    "learn_sigma": True,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
    "in_channels": 3,
    "out_channels": 6,
}
TINY = {  # the smallest ADM the code builds (GroupNorm needs 32 channels): two levels, attention at the lower
    "image_size": 16,
    "num_channels": 32,
    "num_res_blocks": 1,
    "channel_mult": "1,1",
    "attention_resolutions": "2",
    "num_head_channels": 8,
    "learn_sigma": True,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
    "in_channels": 3,
    "out_channels": 6,
}


def adm_prior(flags: dict, device):
    """An ADM of the given architecture with random weights, as a Denoiser (the spec says it was trained at
    ``image_size``, so ``tile=auto`` tiles like for the real checkpoint)."""
    import torch

    from dig2dig.prior.adm import ADMConfig, ADMUNet
    from dig2dig.prior.base import Denoiser, PriorSpec

    torch.manual_seed(0)
    cfg = ADMConfig.from_guided_diffusion_flags(flags)
    net = ADMUNet(cfg).eval().to(device)
    spec = PriorSpec(
        "adm",
        cfg.to_dict(),
        cfg.in_channels,
        cfg.spatial_multiple,
        name=f"adm-{flags['num_channels']}",
        trained_size=int(flags["image_size"]),
    )
    return Denoiser(net, spec, net)


def sources(h: int, w: int) -> list[np.ndarray]:
    pair = SHARED / "data/fusion/vif/msrs/00001D"
    if (pair / "ir.png").is_file():
        import cv2

        from dig2dig.io import read_image

        return [
            cv2.resize(read_image(pair / n).data, (w, h), interpolation=cv2.INTER_AREA) for n in ("ir.png", "vis.png")
        ]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = 0.5 + 0.3 * np.sin(9 * xx) * np.cos(7 * yy)
    return [
        np.clip(base + 0.1 * rng.standard_normal((h, w)), 0, 1).astype(np.float32),
        np.clip(np.stack([base[::-1]] * 3, -1) + 0.05 * rng.standard_normal((h, w, 3)), 0, 1).astype(np.float32),
    ]


class Bench:
    def __init__(self, device: str, budget_s: float):
        import torch

        self.torch, self.device, self.t0, self.budget = torch, device, time.perf_counter(), budget_s
        self.rows: list[dict] = []

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def sync(self):
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def run(self, label: str, fn, warm=None, **info) -> dict:
        """Time ``fn`` after ``warm`` (or ``fn`` with fewer steps); skip when the budget is spent."""
        torch = self.torch
        if self.left() <= 0:
            row = {"run": label, **info, "skipped": "time budget spent"}
            self.rows.append(row)
            print(json.dumps(row), flush=True)
            return row
        try:
            if warm is not None:
                warm()
            self.sync()
            if self.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            out = fn()
            self.sync()
            wall = time.perf_counter() - t
            peak = torch.cuda.max_memory_allocated() / 2**30 if self.device.startswith("cuda") else None
            row = {"run": label, **info, "wall_s": round(wall, 3), "peak_gb": None if peak is None else round(peak, 2)}
            if isinstance(out, dict):
                row.update(out)
        except Exception as e:  # noqa: BLE001 -- a failed measurement is a row, the check goes on
            row = {"run": label, **info, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"}
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu.md"))
    ap.add_argument("--budget-s", type=float, default=480.0, help="stop measuring after this many seconds")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and a tiny ADM on the CPU: checks the script")
    ap.add_argument("--only", default="", help="comma list of parts to run: methods,precision,batch,4k")
    ap.add_argument("--prior", help="the second prior, beside ADM-256 (default: the embedded prior)")
    args = ap.parse_args()

    import torch

    import dig2dig
    from dig2dig.prior import load_prior

    device = args.device or ("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        size, big, steps, tile_adm, n_batch = (16, 24), (32, 48), {"dig2dig": 3, "ddfm": 3, "ccf": 3}, 16, 2
        adm_flags = TINY
    else:
        size, big, steps, tile_adm, n_batch = (480, 640), (2160, 3840), {"dig2dig": 25, "ddfm": 100, "ccf": 200}, 256, 8
        adm_flags = ADM256
    parts = set(filter(None, args.only.split(","))) or {"methods", "precision", "batch", "4k"}
    b = Bench(device, args.budget_s)
    second = load_prior(args.prior, device=device)
    priors = {
        "adm256" if not args.smoke else "adm-tiny": adm_prior(adm_flags, device),
        "embedded" if not args.prior else second.spec.name or Path(args.prior).name: second,
    }
    src = sources(*size)

    def fuse(den, method, n_steps, **kw):
        r = dig2dig.fuse(src, method=method, steps=n_steps, prior=den, task="vif", device=device, seed=0, **kw)
        return {
            "per_step_ms": round(1000 * r.timings["per_step_s"], 1),
            "prior_share": round(r.timings["prior_forward_s"] / max(r.timings["sample_total_s"], 1e-9), 3),
            "tile": r.config["prior_run"]["tile"],
        }

    if "methods" in parts:
        for pname, den in priors.items():
            tiles = ["auto", "off"] if den is not second else ["auto"]
            for method, n in steps.items():
                for tile in tiles:
                    b.run(
                        f"{method}-{n}",
                        lambda: fuse(den, method, n, tile=tile),
                        warm=lambda: fuse(den, method, 2, tile=tile),
                        prior=pname,
                        size=f"{size[1]}x{size[0]}",
                        precision="fp32",
                        tile_setting=tile,
                    )
    if "precision" in parts:
        for pname, den in priors.items():
            for prec in ("fp32", "bf16", "fp16"):
                b.run(
                    f"dig2dig-{steps['dig2dig']}",
                    lambda: fuse(den, "dig2dig", steps["dig2dig"], precision=prec),
                    warm=lambda: fuse(den, "dig2dig", 2, precision=prec),
                    prior=pname,
                    size=f"{size[1]}x{size[0]}",
                    precision=prec,
                )
    if "batch" in parts:
        pairs = [sources(*size) for _ in range(n_batch)]
        for pname, den in priors.items():

            def batched(mb, n=steps["dig2dig"], den=den):
                t = time.perf_counter()
                dig2dig.fuse_batch(
                    pairs,
                    steps=n,
                    prior=den,
                    task="vif",
                    device=device,
                    max_batch=mb,
                    precision="bf16" if device.startswith("cuda") else "fp32",
                )
                return {"per_pair_s": round((time.perf_counter() - t) / len(pairs), 3)}

            for mb in (1, n_batch):
                b.run(
                    f"dig2dig-{steps['dig2dig']} × {n_batch} pairs, max_batch {mb}",
                    lambda mb=mb: batched(mb),
                    warm=lambda mb=mb: batched(mb, 2),
                    prior=pname,
                    size=f"{size[1]}x{size[0]}",
                )
    if "4k" in parts:
        big_src = sources(*big)
        for pname, den in priors.items():

            def big_run(n, den=den):
                r = dig2dig.fuse(
                    big_src,
                    steps=n,
                    prior=den,
                    task="vif",
                    device=device,
                    tile=tile_adm if den is not second else 512 if not args.smoke else 32,
                    precision="bf16" if device.startswith("cuda") else "fp32",
                )
                return {"tile": r.config["prior_run"]["tile"], "per_step_ms": round(1000 * r.timings["per_step_s"], 1)}

            b.run(
                f"dig2dig-{steps['dig2dig']} tiled",
                lambda: big_run(steps["dig2dig"]),
                warm=lambda: big_run(1),
                prior=pname,
                size=f"{big[1]}x{big[0]}",
            )

    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    lines = [
        f"# GPU check ({'smoke run on the CPU' if args.smoke else name})",
        "",
        f"`{command_line('gpu_check.py', sys.argv[1:])}` on {name}, torch {torch.__version__}, "
        f"dig2dig {dig2dig.__version__}; times are wall seconds after a warm-up run, synchronised; peak = "
        f"`torch.cuda.max_memory_allocated`. ADM-256 has random weights (time and memory do not depend on them).",
        "",
        "| run | prior | size | precision | tile | wall (s) | ms / step | prior share | per pair (s) "
        "| peak GPU (GB) | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in b.rows:
        note = r.get("skipped") or r.get("error") or ""
        lines.append(
            f"| {r['run']} | {r['prior']} | {r['size']} | {r.get('precision', '')} | "
            f"{r.get('tile', r.get('tile_setting', ''))} | {r.get('wall_s', '')} | {r.get('per_step_ms', '')} | "
            f"{r.get('prior_share', '')} | {r.get('per_pair_s', '')} | {r.get('peak_gb', '') or ''} | {note} |"
        )
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"device": name, "rows": b.rows}, indent=1))
    print(text)
    return 0 if all("error" not in r for r in b.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
