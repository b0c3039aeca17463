"""Side-by-side pictures: the sources, the plain average and fused results, one row per pair.

    python docs/compare_figure.py --out runs/compare.jpg \\
        --config "0.2 selection=dig2dig:preset=select" --config "default=dig2dig" \\
        ../shared/data/fusion/vif/vifb/kettle ../shared/data/fusion/mff/mffw/03 ...

Each row is scaled to one height; every panel is labelled.  ``--config`` takes ``LABEL=SPEC`` with a
method spec as ``bench`` reads it (``method:key=value,...``); the default seed is 0.  ``--crop`` adds a
2x enlargement of a region (x,y,w,h as fractions of the image) under each row, where details decide.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def _label(cv2, img: np.ndarray, text: str) -> np.ndarray:
    img = img.copy()
    scale = max(0.4, img.shape[0] / 500)
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(img, (0, 0), (w + 8, h + 10), (0, 0, 0), -1)
    cv2.putText(img, text, (4, h + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def _rgb(a: np.ndarray) -> np.ndarray:
    a = a if a.dtype == np.uint8 else (a.astype(np.float64) / 257).round().astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="+", help="pair folders (<pair>/<role>.<ext>)")
    ap.add_argument("--config", action="append", required=True, metavar="LABEL=SPEC")
    ap.add_argument("--out", required=True)
    ap.add_argument("--height", type=int, default=220, help="panel height in pixels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--crop",
        action="append",
        default=[],
        metavar="x,y,w,h",
        help="one per pair (in order; '-' for none): a region to show enlarged under the row",
    )
    args = ap.parse_args()

    import cv2

    import dig2dig
    from dig2dig.bench import parse_method
    from dig2dig.io import decode_bytes, list_images, read_raw

    configs = []
    for c in args.config:
        label, eq, spec = c.partition("=")
        if not eq:
            ap.error(f"--config {c!r}: use LABEL=SPEC")
        configs.append((label, *parse_method(spec)[1:]))
    rows = []
    for k, pair in enumerate(args.pairs):
        paths = list_images(pair)
        srcs = [_rgb(read_raw(p)) for p in paths]
        panels = [(p.stem, s) for p, s in zip(paths, srcs)]
        panels.append(("average", np.mean([s.astype(np.float64) for s in srcs], axis=0).round().astype(np.uint8)))
        for label, method, opts in configs:
            print(f"{Path(pair).name}: {label}", file=sys.stderr)
            r = dig2dig.fuse([str(p) for p in paths], method=method, seed=args.seed, **opts)
            a = decode_bytes(r.encode(".png", bit_depth=8), label)
            panels.append((label, _rgb(a[..., ::-1] if a.ndim == 3 else a)))
        h = args.height
        scaled = [
            (t, cv2.resize(a, (round(a.shape[1] * h / a.shape[0]), h), interpolation=cv2.INTER_AREA)) for t, a in panels
        ]
        row = np.concatenate([_label(cv2, a, t) for t, a in scaled], axis=1)
        crop = args.crop[k] if k < len(args.crop) else "-"
        if crop != "-":
            x, y, w, hh = (float(v) for v in crop.split(","))
            zooms = []
            for (_t, a), (_, sa) in zip(panels, scaled):
                H, W = a.shape[:2]
                c = a[int(y * H) : int((y + hh) * H), int(x * W) : int((x + w) * W)]
                zooms.append(cv2.resize(c, (sa.shape[1], sa.shape[0]), interpolation=cv2.INTER_NEAREST))
            zrow = np.concatenate(zooms, axis=1)
            row = np.concatenate([row, zrow], axis=0)
        rows.append(row)
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    grid = np.concatenate(rows, axis=0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ok = cv2.imwrite(str(out), grid[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 88])
    if not ok:
        print(f"could not write {out}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
