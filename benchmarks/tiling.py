"""Tiled against whole-image denoising: differences, metrics, seams, memory and time on big images.

    python benchmarks/tiling.py mad [--pairs 3] [--configs 256:64,256:128,384:96] [--threads 1]
    python benchmarks/tiling.py memory [--threads 2]

``mad``: the first N MSRS pairs at 640×480, Dig2DIG-25 with the embedded prior, whole image against
each tile:overlap configuration: mean and largest absolute difference of the saved 8-bit images (grey
levels), the cddfuse metrics of both, and for the first pair a picture of |tiled - whole| × 10 with the
tile borders drawn (``results/tiling_diff.jpg``), to look for seams.

``memory``: a 3840×2160 pair.  Peak resident memory (``ru_maxrss``, each case in a fresh process) and
time of a 2-step Dig2DIG fusion with the embedded prior, whole and in tiles of 512, and at 1920×1080 for
the scaling; and for the ADM-256 architecture (random weights) tiled at 256, the peak after the first
three chunks of tiles of the first forward (every chunk has the same size, so the peak does not grow
with the number of chunks; a whole 4K forward of ADM-256 on a CPU takes over an hour per step) and the
time per tile.

Each part writes its section of ``results/tiling.md`` (``--out``; the other part's section is kept),
under a line naming the command that made it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from _command import command_line

SHARED = Path(os.environ.get("DIG2DIG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
RESULTS = Path(__file__).parent / "results"
HERE = Path(__file__).resolve()


def part_mad(args) -> list[str]:
    import cv2
    import torch

    import dig2dig
    from dig2dig.io import read_raw
    from dig2dig.metrics import score

    torch.set_num_threads(args.threads)
    pairs = sorted(p for p in (SHARED / "data/fusion/vif/msrs").iterdir() if p.is_dir())[: args.pairs]
    configs = [tuple(int(v) for v in c.split(":")) for c in args.configs.split(",")]
    rows = []
    for k, pair in enumerate(pairs):
        srcs = [str(pair / "ir.png"), str(pair / "vis.png")]
        whole = dig2dig.fuse(srcs, tile="off", seed=0)
        w8 = whole.encode(".png")
        raw_src = [read_raw(s) for s in srcs]

        def metrics(png: bytes) -> dict:
            img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
            return score(img[..., ::-1] if img.ndim == 3 else img, raw_src, convention="cddfuse")

        m_whole = metrics(w8)
        a = cv2.imdecode(np.frombuffer(w8, np.uint8), cv2.IMREAD_UNCHANGED).astype(int)
        for tile, overlap in configs:
            t = dig2dig.fuse(srcs, tile=tile, tile_overlap=overlap, seed=0)
            png = t.encode(".png")
            b = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED).astype(int)
            d = np.abs(a - b)
            m = metrics(png)
            rows.append(
                {
                    "pair": pair.name,
                    "tile": tile,
                    "overlap": overlap,
                    "mad": float(d.mean()),
                    "max": int(d.max()),
                    **{f"{n}_whole": m_whole[n] for n in ("Qabf", "SSIM", "SD", "SF")},
                    **{f"{n}_tiled": m[n] for n in ("Qabf", "SSIM", "SD", "SF")},
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            if k == 0 and (tile, overlap) == configs[0]:
                diff = np.clip(d.max(axis=-1) if d.ndim == 3 else d, 0, 25) * 10
                vis = cv2.cvtColor(diff.astype(np.uint8), cv2.COLOR_GRAY2BGR)
                from dig2dig.prior.execution import tile_positions

                h, w = diff.shape
                for y in tile_positions(h, tile, overlap):
                    for x in tile_positions(w, tile, overlap):
                        cv2.rectangle(vis, (x, y), (min(x + tile, w) - 1, min(y + tile, h) - 1), (0, 160, 255), 1)
                side = np.concatenate([a.astype(np.uint8), b.astype(np.uint8), vis], axis=1)
                side = cv2.resize(side, (side.shape[1] * 3 // 4, side.shape[0] * 3 // 4), interpolation=cv2.INTER_AREA)
                cv2.imwrite(str(RESULTS / "tiling_diff.jpg"), side, [cv2.IMWRITE_JPEG_QUALITY, 85])
    lines = [
        "## Tiled against whole image (640×480, Dig2DIG-25, embedded prior)",
        "",
        "| tile | overlap | pairs | mean abs diff (grey levels) | largest | Qabf whole → tiled | SSIM whole → tiled |"
        " SF whole → tiled |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for tile, overlap in configs:
        sel = [r for r in rows if (r["tile"], r["overlap"]) == (tile, overlap)]
        mean = lambda key: np.mean([r[key] for r in sel])  # noqa: E731
        lines.append(
            f"| {tile} | {overlap} | {len(sel)} | {mean('mad'):.3f} | {max(r['max'] for r in sel)} | "
            f"{mean('Qabf_whole'):.4f} → {mean('Qabf_tiled'):.4f} | {mean('SSIM_whole'):.4f} → "
            f"{mean('SSIM_tiled'):.4f} | {mean('SF_whole'):.3f} → {mean('SF_tiled'):.3f} |"
        )
    lines.append("")
    lines.append(
        "`results/tiling_diff.jpg`: whole, tiled (first configuration) and |difference| × 10 with the tiles "
        "drawn, first pair."
    )
    return lines


CASE = """
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
case = json.loads(sys.argv[1])
import numpy as np
import dig2dig
h, w = case["size"]
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
base = 0.5 + 0.3 * np.sin(40 * xx) * np.cos(30 * yy)
srcs = [np.clip(base + 0.05 * rng.standard_normal((h, w)), 0, 1).astype(np.float32),
        np.clip(base[::-1] + 0.05 * rng.standard_normal((h, w)), 0, 1).astype(np.float32)]
if case["prior"] == "adm256":
    sys.path.insert(0, case["bench"])
    from gpu_check import ADM256, adm_prior
    den = adm_prior(ADM256, "cpu")
    from dig2dig.prior.execution import ExecutedDenoiser
    ex = ExecutedDenoiser(den, tile=256, tile_overlap=64, tile_batch=4)
    calls, times = [0], []
    real = ex._forward
    class Enough(Exception):
        pass
    def counted(x, t):
        calls[0] += 1
        if calls[0] > 3:
            raise Enough
        t0 = time.perf_counter(); out = real(x, t); times.append(time.perf_counter() - t0)
        return out
    ex._forward = counted
    x = torch.randn(1, 3, h, w)
    try:
        ex.eps(x, 500)
    except Enough:
        pass
    out = {"per_tile_s": float(np.mean(times[1:]) / 4)}
else:
    t0 = time.perf_counter()
    r = dig2dig.fuse(srcs, steps=2, task="mff", tile=case["tile"])
    out = {"wall_s": time.perf_counter() - t0, "tile_used": r.config["prior_run"]["tile"]}
out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps(out))
"""


def part_memory(args) -> list[str]:
    cases = [
        ("embedded", (1080, 1920), "off"),
        ("embedded", (1080, 1920), 512),
        ("embedded", (2160, 3840), "off"),
        ("embedded", (2160, 3840), 512),
        ("adm256", (2160, 3840), 256),
    ]
    rows = []
    for prior, size, tile in cases:
        case = {"prior": prior, "size": size, "tile": tile, "bench": str(HERE.parent)}
        p = subprocess.run(
            [sys.executable, "-c", CASE, json.dumps(case), str(args.threads)], capture_output=True, text=True
        )
        if p.returncode != 0:
            raise SystemExit(p.stderr[-3000:])
        rows.append({**case, **json.loads(p.stdout.strip().splitlines()[-1])})
        print(json.dumps(rows[-1]), flush=True)
    return render_memory(rows, args.threads)


def render_memory(rows: list[dict], threads: int) -> list[str]:
    """The Markdown section from the measured rows (one per case: prior, size, tile setting, results)."""
    lines = [
        "## 4K pairs: peak memory and time (CPU, " + f"{threads} thread{'s' if threads != 1 else ''})",
        "",
        "| prior | size | tile | Dig2DIG, 2 steps (s) | peak resident memory (GB) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        wall = f"{r['wall_s']:.1f}" if "wall_s" in r else f"{r['per_tile_s']:.1f} s per 256² tile"
        lines.append(
            f"| {r['prior']} | {r['size'][1]}x{r['size'][0]} | {r['tile']} | {wall} | {r['peak_rss_gb']:.2f} |"
        )
    from dig2dig.prior.execution import tile_positions

    n_tiles = len(tile_positions(3840, 256, 64)) * len(tile_positions(2160, 256, 64))
    wall = {(r["size"][0], r["tile"]): r["wall_s"] for r in rows if r["prior"] == "embedded"}
    adm_min = next(r for r in rows if r["prior"] == "adm256")["per_tile_s"] * n_tiles / 60
    lines.append("")
    lines.append(
        f"Time 3840×2160 / 1920×1080 (4× the pixels): whole {wall[2160, 'off'] / wall[1080, 'off']:.2f}×, "
        f"tiles of 512 {wall[2160, 512] / wall[1080, 512]:.2f}×. ADM-256 tiled: the peak after three chunks "
        f"of four 256² tiles (the peak of a whole tiled run; a whole 4K forward of ADM-256 takes "
        f"{adm_min:.0f} min on this CPU in {n_tiles} tiles)."
    )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("mad", "memory"))
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--configs", default="256:64,256:96,192:48,384:96")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "tiling.md"))
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    lines = part_mad(args) if args.part == "mad" else part_memory(args)
    import dig2dig

    lines[1:1] = ["", f"Written by `{command_line('tiling.py', sys.argv[1:])}` (dig2dig {dig2dig.__version__})."]
    out = Path(args.out)
    old = out.read_text() if out.is_file() else "# Tiled denoising\n\n"
    head = lines[0]
    kept = [blk for blk in old.split("\n## ") if blk and not ("## " + blk).startswith(head)]
    text = kept[0].rstrip() + "\n\n" + "\n\n".join("## " + b.rstrip() for b in kept[1:])
    text = (text.rstrip() + "\n\n" + "\n".join(lines) + "\n").replace("\n\n\n", "\n\n")
    out.write_text(text)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
