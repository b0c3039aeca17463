"""How well ``--register`` recovers known misalignments, in every task, and what it does to fusion.

    python benchmarks/register.py [--pairs 4] [--cases 3] [--modes rigid,affine,homography]
                                  [--fuse-pairs 1] [--fuse-steps N] [--results benchmarks/results]

For the first ``--pairs`` pairs of a dev set of each task (VIF: MSRS, VIFB; MIF: MRI-CT, MRI-PET;
MEF: SICE, IID-MEF; MFF: MFFW), the second source is moved by ``--cases`` random transforms per
motion model (seeded): shifts up to 30 px, rotations up to 8°; for ``affine`` also scales 0.9-1.1
per axis and a shear up to 0.05; for ``homography`` also a perspective tilt moving corners by up to
about 8 %.  The reference is the centre of the first source (12 % of the shorter side cut from
each edge); the moved source is what a camera moved by the transform sees of the whole second
source on that grid, so it shows real scene beyond the reference's edges (reflected only where it
reaches past the whole image, at a corner now and then).  :func:`dig2dig.registration.estimate`
aligns it back to the reference.

Measured per dataset and model: the corner error (mean distance of the reference's four corners
mapped by the estimated and the true transform, in reference pixels; median and 95th percentile),
the success rate (corner error ≤ 1.5 px; a refused registration counts as a failure), refusals, and
the time per registration.  The dev pairs were aligned by their authors, not perfectly: the
"consistency" columns measure the error against the true transform composed with the
registration of the untouched pair -- what the method recovers of the applied motion, free of the
pair's own residual misalignment.

With ``--fuse-pairs N``: the first N pairs of each dataset, one ``affine`` case each, fused with the
default method from the aligned originals and from the registered moved source; the key metrics
of both, scored against the aligned originals inside the largest box the moved source covers
(outside it the registered fusion has only the reference), and registration time as a share of
the fusion's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from _command import command_line

SHARED = Path(os.environ.get("DIG2DIG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DATASETS = [
    ("vif", "msrs"),
    ("vif", "vifb"),
    ("mif", "mri_ct"),
    ("mif", "mri_pet"),
    ("mef", "sice"),
    ("mef", "iidmef"),
    ("mff", "mffw"),
]
KEYS = {
    "vif": ["Qabf", "VIF", "SSIM"],
    "mif": ["Qabf", "VIF", "SSIM"],
    "mef": ["Qabf", "SSIM"],
    "mff": ["Qabf", "SSIM"],
}
OK_PX = 1.5


def pairs(task: str, dataset: str, n: int) -> list[list[Path]]:
    out = []
    for d in sorted(p for p in (SHARED / "data/fusion" / task / dataset).iterdir() if p.is_dir())[:n]:
        out.append(sorted(f for f in d.iterdir() if f.suffix.lower() in (".png", ".jpg", ".bmp", ".tif")))
    return out


def random_transform(rng: np.random.Generator, mode: str, h: int, w: int) -> np.ndarray:
    """A 3×3 matrix mapping reference pixels to the moved source's pixels, about the centre."""
    ang = np.deg2rad(rng.uniform(-8, 8))
    tx, ty = rng.uniform(-30, 30, 2)
    sx = sy = 1.0
    shear = 0.0
    if mode in ("affine", "homography"):
        sx, sy = rng.uniform(0.9, 1.1, 2)
        shear = rng.uniform(-0.05, 0.05)
    c, s = np.cos(ang), np.sin(ang)
    a = np.array([[c, -s], [s, c]]) @ np.array([[sx, shear], [0, sy]])
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    m = np.eye(3)
    m[:2, :2] = a
    m[:2, 2] = centre - a @ centre + [tx, ty]
    if mode == "homography":
        p = np.eye(3)
        p[2, :2] = rng.uniform(-0.08, 0.08, 2) / np.array([w, h]) * 2
        t = np.array([[1, 0, -centre[0]], [0, 1, -centre[1]], [0, 0, 1]])
        m = m @ np.linalg.inv(t) @ p @ t
        m /= m[2, 2]
    return m


def corner_error(a: np.ndarray, b: np.ndarray, h: int, w: int) -> float:
    c = np.array([[0, 0, 1], [w - 1, 0, 1], [w - 1, h - 1, 1], [0, h - 1, 1]], float).T
    pa, pb = a @ c, b @ c
    return float(np.mean(np.linalg.norm(pa[:2] / pa[2] - pb[:2] / pb[2], axis=0)))


MARGIN = 0.12  # of the shorter side, cut from every edge: the moved camera sees real scene beyond the crop


def margin(image: np.ndarray) -> int:
    return round(MARGIN * min(image.shape[:2]))


def crop(image: np.ndarray) -> np.ndarray:
    """The centre of ``image`` without :func:`margin` on each side: the reference's view."""
    k = margin(image)
    return image[k : image.shape[0] - k, k : image.shape[1] - k]


def moved(image: np.ndarray, m: np.ndarray) -> np.ndarray:
    """What a camera moved by ``m`` sees of the full ``image``, on the grid of :func:`crop`:
    moved(m x) = crop(image)(x); beyond the full image (a corner now and then), reflected."""
    import cv2

    k = margin(image)
    h, w = image.shape[0] - 2 * k, image.shape[1] - 2 * k
    to_full = np.array([[1, 0, k], [0, 1, k], [0, 0, 1.0]]) @ np.linalg.inv(m)
    out = cv2.warpPerspective(
        image, to_full, (w, h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
    )
    return np.clip(out, 0, 1).astype(np.float32)


def inner_box(valid: np.ndarray) -> tuple[int, int, int, int]:
    """A large axis-aligned box (x0, y0, x1, y1) inside ``valid``: edges moved in, the worst first."""
    ys, xs = np.nonzero(valid)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    while x1 - x0 > 8 and y1 - y0 > 8:
        box = valid[y0:y1, x0:x1]
        if box.all():
            break
        bad = [(~box[:, 0]).sum(), (~box[:, -1]).sum(), (~box[0]).sum(), (~box[-1]).sum()]
        k = int(np.argmax(bad))
        x0, x1, y0, y1 = x0 + (k == 0), x1 - (k == 1), y0 + (k == 2), y1 - (k == 3)
    return int(x0), int(y0), int(x1), int(y1)


def pct(v: list[float], q: float) -> float:
    """A percentile that stays a sample (refusals count as infinitely wrong: no inf - inf)."""
    return float(np.percentile(v, q, method="higher")) if v else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--modes", default="rigid,affine,homography")
    ap.add_argument("--datasets", help="comma list (default: all seven)")
    ap.add_argument("--fuse-pairs", type=int, default=0)
    ap.add_argument("--fuse-steps", type=int, help="steps of the fusions (default: the method's)")
    ap.add_argument("--results", help="write register.md into this folder")
    args = ap.parse_args()

    import dig2dig
    from dig2dig.color import luminance
    from dig2dig.errors import RegistrationError
    from dig2dig.io import read_image
    from dig2dig.registration import estimate

    rng = np.random.default_rng(0)
    modes = args.modes.split(",")
    chosen = [d for d in DATASETS if not args.datasets or d[1] in args.datasets.split(",")]
    rows, fuse_rows, all_err = [], [], {m: [] for m in modes}
    for task, ds in chosen:
        for mode in modes:
            errs, cons, secs, refused = [], [], [], 0
            for p in pairs(task, ds, args.pairs):
                ref = read_image(p[0]).data
                src = read_image(p[1]).data
                ry, sy = luminance(ref).astype(np.float32), luminance(src).astype(np.float32)
                rc = np.ascontiguousarray(crop(ry))
                h, w = rc.shape
                try:
                    own = np.array(estimate(rc, np.ascontiguousarray(crop(sy)), mode).matrix)
                except RegistrationError:
                    own = None
                for _ in range(args.cases):
                    m = random_transform(rng, mode, h, w)
                    t0 = time.perf_counter()
                    try:
                        est = np.array(estimate(rc, moved(sy, m), mode).matrix)
                    except RegistrationError:
                        refused += 1
                        errs.append(float("inf"))
                        cons.append(float("inf"))
                        continue
                    finally:
                        secs.append(time.perf_counter() - t0)
                    errs.append(corner_error(est, m, h, w))
                    cons.append(corner_error(est, m @ own, h, w) if own is not None else float("inf"))
            all_err[mode] += errs
            rows.append((task, ds, mode, len(errs), errs, cons, refused, float(np.median(secs))))
            print(
                f"{task} {ds} {mode}: median {pct(errs, 50):.2f} px, p95 {pct(errs, 95):.2f}, "
                f"ok {np.mean(np.array(errs) <= OK_PX):.2f}, consistency ok {np.mean(np.array(cons) <= OK_PX):.2f}, "
                f"refused {refused}, {np.median(secs):.3f} s",
                file=sys.stderr,
            )
        if args.fuse_pairs:
            from dig2dig.metrics import score

            for p in pairs(task, ds, args.fuse_pairs):
                ref, src = read_image(p[0]), read_image(p[1])
                ref_c, src_c = np.ascontiguousarray(crop(ref.data)), np.ascontiguousarray(crop(src.data))
                h, w = ref_c.shape[:2]
                m = random_transform(rng, "affine", h, w)
                mis = moved(src.data, m)
                kw = {"steps": args.fuse_steps} if args.fuse_steps else {}
                t0 = time.perf_counter()
                a = dig2dig.fuse([ref_c, src_c], names=[p[0].name, p[1].name], **kw)
                fuse_s = time.perf_counter() - t0
                try:
                    b = dig2dig.fuse([ref_c, mis], names=[p[0].name, p[1].name], register="affine", **kw)
                except RegistrationError as e:
                    print(f"{ds}/{p[0].parent.name}: {e}", file=sys.stderr)
                    fuse_rows.append((task, ds, p[0].parent.name, None, None, None, fuse_s))
                    continue
                rec = b.config["registration"]
                from dig2dig.registration import coverage

                valid = coverage(mis.shape, np.array(rec["sources"][0]["matrix"]), (h, w))
                x0, y0, x1, y1 = inner_box(valid)  # scored where both sources are really there
                u8 = [np.round(x[y0:y1, x0:x1] * 255).astype(np.uint8) for x in (a.image, b.image, ref_c, src_c)]
                sa = score(u8[0], [u8[2], u8[3]], metrics=KEYS[task])
                sb = score(u8[1], [u8[2], u8[3]], metrics=KEYS[task])
                reg_s = rec["sources"][0]["seconds"]
                err = corner_error(np.array(rec["sources"][0]["matrix"]), m, h, w)
                fuse_rows.append((task, ds, p[0].parent.name, sa, sb, (reg_s, err, rec["valid_fraction"]), fuse_s))

    head = [
        "# Registration of misaligned sources (`--register`)",
        "",
        f"Written by `{command_line('register.py', sys.argv[1:])}` (dig2dig {dig2dig.__version__}, "
        f"seeded transforms). Corner error: mean distance of the reference's four corners mapped by the "
        f"estimated and the true transform, in reference pixels; success: error ≤ {OK_PX} px (a refused "
        "registration is a failure). Consistency: the same against the true transform composed with the "
        "registration of the untouched pair (the dev pairs' own residual misalignment removed).",
        "",
        "| task | dataset | model | cases | median px | p95 px | success | consistency median px | "
        "consistency success | refused | s per registration |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, ds, mode, n, errs, cons, refused, sec in rows:
        head.append(
            f"| {task.upper()} | {ds} | {mode} | {n} | {np.median(errs):.2f} | {pct(errs, 95):.2f} | "
            f"{100 * np.mean(np.array(errs) <= OK_PX):.0f} % | {pct(cons, 50):.2f} | "
            f"{100 * np.mean(np.array(cons) <= OK_PX):.0f} % | {refused} | {sec:.3f} |"
        )
    head += ["", "| model | cases | median px | p95 px | success |", "|---|---|---|---|---|"]
    for mode, errs in all_err.items():
        head.append(
            f"| {mode} | {len(errs)} | {pct(errs, 50):.2f} | {pct(errs, 95):.2f} | "
            f"{100 * np.mean(np.array(errs) <= OK_PX):.0f} % |"
        )
    if fuse_rows:
        head += [
            "",
            "## Fusion: from the aligned originals against registered (`affine`) from a moved source",
            "",
            "Both scored against the aligned originals inside the largest box the moved source covers. The dev pairs "
            "are not perfectly aligned themselves, so a registration that corrects them also moves these scores.",
            "",
            "| task | pair | metric | aligned | registered | change | corner px | valid | registration / fusion |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for task, ds, pair, sa, sb, reg, fuse_s in fuse_rows:
            if sa is None:
                head.append(f"| {task.upper()} | {ds}/{pair} | – | – | refused | – | – | – | – |")
                continue
            for k in sa:
                change = (sb[k] - sa[k]) / abs(sa[k]) * 100 if sa[k] else float("nan")
                head.append(
                    f"| {task.upper()} | {ds}/{pair} | {k} | {sa[k]:.4g} | {sb[k]:.4g} | {change:+.2f} % | "
                    f"{reg[1]:.2f} | {100 * reg[2]:.1f} % | {100 * reg[0] / fuse_s:.1f} % |"
                )
    text = "\n".join(head) + "\n"
    if args.results:
        Path(args.results, "register.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
