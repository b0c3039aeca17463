"""``docs/img/register.jpg``: a misaligned pair of each listed task fused without and with ``--register``.

    python docs/register_figure.py [--out docs/img/register.jpg] [--height 240] [--mode affine]

Each row: the reference (first source), the second source moved by a known transform (a shift, a
rotation, a scale change), the default fusion without registration (double edges), the default
fusion with ``register`` (the yellow outline: the region the moved source covers; outside it the
reference stands in), and a 2x crop of both fusions side by side.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("DIG2DIG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
PAIRS = [  # (pair folder, crop x,y,w,h as fractions of the image)
    ("data/fusion/mef/sice/holoco_001", (0.35, 0.05, 0.3, 0.3)),
    ("data/fusion/mff/mffw/01", (0.3, 0.2, 0.3, 0.3)),
]
MOVE = (6.0, 18.0, -12.0, 1.05)  # rotation in degrees, shift x, y in pixels, scale


def moved(img: np.ndarray) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    ang, tx, ty, s = MOVE
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), ang, s)
    m[:, 2] += (tx, ty)
    return np.clip(cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT), 0, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).parent / "img" / "register.jpg"))
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--mode", default="affine")
    args = ap.parse_args()
    import cv2

    import dig2dig
    from dig2dig.io import read_image

    rows = []
    for folder, (cx, cy, cw, ch) in PAIRS:
        files = sorted(p for p in (SHARED / folder).iterdir() if p.suffix.lower() in (".png", ".jpg"))
        ref, src = read_image(files[0]).data, read_image(files[1]).data
        mis = moved(src)
        names = [files[0].name, files[1].name]
        off = dig2dig.fuse([ref, mis], names=names).image
        on = dig2dig.fuse([ref, mis], names=names, register=args.mode)
        reg = on.config["registration"]
        print(f"{folder}: {on.config['notes']}", file=sys.stderr)

        def rgb(x):
            x = np.asarray(x, np.float32)
            return np.repeat(x[..., None], 3, axis=2) if x.ndim == 2 else x

        h, w = ref.shape[:2]
        scale = args.height / h
        panels = [rgb(ref), rgb(mis), rgb(off), rgb(on.image).copy()]
        from dig2dig.registration import coverage

        covered = coverage(mis.shape, np.array(reg["sources"][0]["matrix"]), (h, w))
        contours, _ = cv2.findContours(covered.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(panels[3], contours, -1, (1.0, 0.85, 0.0), max(1, round(2 / scale)))
        box = (int(cx * w), int(cy * h), int((cx + cw) * w), int((cy + ch) * h))
        crops = [rgb(off)[box[1] : box[3], box[0] : box[2]], rgb(on.image)[box[1] : box[3], box[0] : box[2]]]
        labels = ["reference", "moved source", "fused, --register off", f"fused, --register {args.mode}"]
        row = []
        for p, label in zip(panels, labels):
            p = cv2.resize(p, (round(w * scale), args.height), interpolation=cv2.INTER_AREA)
            row.append(_label(p, label))
        crop_h = args.height
        pair = [cv2.resize(c, (round(c.shape[1] * crop_h / c.shape[0]), crop_h)) for c in crops]
        gap = np.ones((crop_h, 4, 3), np.float32)
        row.append(_label(np.concatenate([pair[0], gap, pair[1]], axis=1), "2x crop: off | on"))
        white = np.full((args.height, 6, 3), 255, np.uint8)
        rows.append(np.concatenate([np.concatenate([r, white], axis=1) for r in row], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 6), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    out = np.concatenate(rows, axis=0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(args.out, out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(args.out)
    return 0


def _label(p: np.ndarray, text: str) -> np.ndarray:
    import cv2

    p = np.ascontiguousarray((np.clip(p, 0, 1) * 255).round().astype(np.uint8))
    cv2.rectangle(p, (0, 0), (min(p.shape[1], 8 * len(text) + 8), 20), (0, 0, 0), -1)
    cv2.putText(p, text, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return p


if __name__ == "__main__":
    sys.exit(main())
