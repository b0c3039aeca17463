"""How far the int8 prior's ε is from the float network's, per noise level, for each quantisation recipe.

    python benchmarks/int8_error.py [--images 16] [--size 240x320] [--out benchmarks/results/int8_error.md]

Held-out dev luminance (every task's sources, shuffled with seed 0; the first 24 files are skipped, the
next ``--images`` used), resized to ``--size``, noised to eleven levels t = 20 … 980 (noise seeded per
level and image).  For each recipe (``dig2dig.prior.int8.build`` keywords): the mean relative squared
error of ε against the fp32 network, and the PSNR of x̂0 against the fp32 x̂0 (range [-1, 1]).
The shipped recipe is the first row.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from _command import command_line

SHARED = Path(os.environ.get("DIG2DIG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
LEVELS = (20, 100, 200, 300, 400, 500, 600, 700, 800, 900, 980)
RECIPES = {
    "shipped: convolutions, 7-bit weights, first and last float": {},
    "convolutions, 7-bit weights": {"float_ends": False},
    "convolutions, 8-bit weights": {"float_ends": False, "reduce_range": False},
    "every op, 8-bit weights": {"all_ops": True, "float_ends": False, "reduce_range": False},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--size", default="240x320", help="HxW")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "int8_error.md"))
    args = ap.parse_args()

    import cv2
    import onnxruntime
    import torch

    from dig2dig.prior import int8, load_prior

    h, w = (int(v) for v in args.size.split("x"))
    den = load_prior(None)
    ac = np.asarray(den.alphas_cumprod, dtype=np.float64)
    files = sorted(str(p) for p in (SHARED / "data/fusion").glob("*/*/*/*.*"))
    np.random.default_rng(0).shuffle(files)
    images = []
    for f in files[24 : 24 + args.images]:
        y = cv2.cvtColor(cv2.imread(f, cv2.IMREAD_COLOR), cv2.COLOR_BGR2YCrCb)[..., 0]
        images.append(cv2.resize(y, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 127.5 - 1)
    lines = [
        "# int8 prior: ε against the fp32 network, per noise level",
        "",
        f"Written by `{command_line('int8_error.py', sys.argv[1:])}` (ONNX Runtime {onnxruntime.__version__}; "
        f"{len(images)} held-out dev images at {h}×{w}; the embedded prior). Each cell: mean relative squared error "
        "of ε, and the PSNR of x̂0 against the fp32 x̂0 (clipped to [-1, 1], peak-to-peak 2).",
        "",
        "| recipe | " + " | ".join(f"t={t}" for t in LEVELS) + " |",
        "|---|" + "---|" * len(LEVELS),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in RECIPES.items():
            path = int8.build(den, Path(tmp) / "m.onnx", **kw)
            so = onnxruntime.SessionOptions()
            so.log_severity_level = 3
            sess = onnxruntime.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            cells = []
            for t in LEVELS:
                a = ac[t]
                errs, psnrs = [], []
                for i, x0 in enumerate(images):
                    noise = np.random.default_rng(t * 100 + i).standard_normal(x0.shape).astype(np.float32)
                    xt = (np.sqrt(a) * x0 + np.sqrt(1 - a) * noise)[None, None].astype(np.float32)
                    tt = np.array([t], np.int64)
                    with torch.inference_mode():
                        ref = den.net(torch.from_numpy(xt), torch.from_numpy(tt)).numpy()
                    q = sess.run(None, {"x": xt, "t": tt})[0]
                    errs.append(np.mean((q - ref) ** 2) / np.mean(ref**2))
                    x_ref = np.clip((xt - np.sqrt(1 - a) * ref) / np.sqrt(a), -1, 1)
                    x_q = np.clip((xt - np.sqrt(1 - a) * q) / np.sqrt(a), -1, 1)
                    psnrs.append(10 * np.log10(4 / max(float(np.mean((x_ref - x_q) ** 2)), 1e-12)))
                cells.append(f"{100 * np.mean(errs):.2f} % / {np.mean(psnrs):.1f} dB")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
