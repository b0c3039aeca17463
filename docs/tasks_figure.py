"""``docs/img/tasks.jpg``: two dev pairs of each task -- the sources, the plain average, ``guided`` and the
default -- each with a 2x crop where the sources disagree (infrared targets in glare, MRI detail inside the
CT's bone and under the PET colour, clipped highlights, the in-focus edge of a multi-focus pair).

    python docs/tasks_figure.py [--out docs/img/tasks.jpg] [--height 200]

Draws through :mod:`compare_figure` (beside this file); the pairs and crops are listed here, once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SHARED = Path(os.environ.get("DIG2DIG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
PAIRS = [  # (pair folder, crop x,y,w,h as fractions of the image)
    ("data/fusion/vif/vifb/manlight", "0.3,0.3,0.3,0.3"),
    ("data/fusion/vif/msrs/00003N", "0.1,0.25,0.3,0.45"),
    ("data/fusion/mif/mri_ct/2004", "0.12,0.3,0.35,0.3"),
    ("data/fusion/mif/mri_pet/13", "0.25,0.3,0.5,0.4"),
    ("data/fusion/mef/sice/holoco_001", "0.4,0.0,0.4,0.3"),
    ("data/fusion/mef/iidmef/05", "0.0,0.1,0.4,0.4"),
    ("data/fusion/mff/mffw/01", "0.3,0.1,0.4,0.4"),
    ("data/fusion/mff/mffw/03", "0.0,0.5,0.5,0.5"),
]
CONFIGS = ["guided=guided", "default=dig2dig"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).parent / "img" / "tasks.jpg"))
    ap.add_argument("--height", type=int, default=200, help="panel height in pixels")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import compare_figure

    argv = [str(SHARED / p) for p, _ in PAIRS] + [a for c in CONFIGS for a in ("--config", c)]
    argv += [a for _, crop in PAIRS for a in ("--crop", crop)] + ["--out", args.out, "--height", str(args.height)]
    sys.argv = [compare_figure.__file__, *argv]
    return compare_figure.main()


if __name__ == "__main__":
    sys.exit(main())
