"""Figures and numbers for the prior's model card (docs/prior.md).

    python benchmarks/prior_card.py [--prior DIR] [--log runs/prior/log.jsonl ...] [--out docs/img]

Writes
* ``prior_samples.png``   -- unconditional samples: DDIM, 50 uniform steps, from pure noise;
* ``prior_denoise.png``   -- Set12 crops: clean / noisy / one-step x̂0, at σ = 25 and 50;
* ``prior_training.png``  -- training loss and check-set PSNR against steps (when a log is given);
and prints the Set12 PSNR at σ = 15, 25, 50.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("DIG2DIG_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def samples(den, out: Path, n: int = 12, size: int = 128, seed: int = 0) -> None:
    from dig2dig.sampler import ddim, initial_noise
    from dig2dig.schedule import uniform_grid

    x = initial_noise((n, den.channels, size, size), list(range(seed, seed + n)))
    imgs = ddim(den, x, uniform_grid(50)).x0.clamp(-1, 1)[:, 0].numpy()
    cols = 6
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (size + 4) + 4, cols * (size + 4) + 4), np.float32)
    for k, im in enumerate(imgs):
        r, c = divmod(k, cols)
        grid[4 + r * (size + 4) : 4 + r * (size + 4) + size, 4 + c * (size + 4) : 4 + c * (size + 4) + size] = (
            im + 1
        ) / 2
    from dig2dig.io import write_image

    write_image(out / "prior_samples.png", grid)


def denoise_panel(den, out: Path) -> None:
    import torch

    from dig2dig.io import read_image, write_image
    from dig2dig.prior.evaluate import timestep_for_sigma

    names = ["01.png", "05.png", "08.png"]
    rows = []
    for sigma in (25, 50):
        t = timestep_for_sigma(den.alphas_cumprod, sigma)
        ab = float(den.alphas_cumprod[t])
        row = []
        for k, name in enumerate(names):
            x = read_image(SHARED / "data/prior/set12" / name).data[:160, :160].astype(np.float64)
            y = x + sigma / 255 * np.random.default_rng(k).standard_normal(x.shape)
            xt = torch.from_numpy((y * 2 - 1) * math.sqrt(ab)).float()[None, None]
            x0 = (den.x0(xt, t)[0, 0].numpy() + 1) / 2
            row += [x, np.clip(y, 0, 1), x0]
        rows.append(np.concatenate([np.pad(r, 2, constant_values=1) for r in row], axis=1))
    write_image(out / "prior_denoise.png", np.concatenate(rows, axis=0).astype(np.float32))


def training_plot(logs: list[Path], out: Path, extra: dict | None = None) -> None:
    """Loss from the run logs; check-set PSNR from the logs and the spec's ``check_history``
    (which keeps the numbers of earlier runs whose logs are gone); run boundaries from ``runs``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    extra = extra or {}
    recs = [json.loads(line) for log in logs for line in log.read_text().splitlines() if line.strip()]
    # one record per step and kind (a resumed run may repeat a few steps); the latest wins
    tr = sorted({r["step"]: r["loss"] for r in recs if "loss" in r}.items())
    evals = {h["step"]: {k: v for k, v in h.items() if k != "step"} for h in extra.get("check_history", [])}
    evals.update({r["step"]: r["eval"] for r in recs if "eval" in r})
    ev = sorted(evals.items())
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    if tr:
        s, lo = zip(*tr)
        k = max(1, len(lo) // 60)
        smooth = np.convolve(lo, np.ones(k) / k, mode="valid")
        ax[0].plot(s[k - 1 :], smooth)
    ax[0].set(xlabel="step", ylabel="ε-MSE (running mean)", title="training loss (logged runs)")
    for r in extra.get("runs", [])[1:]:
        for a in ax:
            a.axvline(r["steps"][0], color="0.7", lw=0.8, ls=":")
    if ev:
        for key in ev[0][1]:
            ax[1].plot([e[0] for e in ev], [e[1][key] for e in ev], marker="o", ms=3, label=f"σ = {key.split('_')[1]}")
        for ref, lab in ((29.97, "BM3D σ=25"), (30.44, "DnCNN σ=25")):
            ax[1].axhline(ref, ls="--", lw=0.8, color="gray")
            ax[1].text(ev[0][0], ref + 0.1, lab, fontsize=7, color="gray")
        ax[1].legend(fontsize=8)
    ax[1].set(xlabel="step", ylabel="PSNR (dB)", title="Set12, one-step x̂0 (EMA weights)")
    fig.tight_layout()
    fig.savefig(out / "prior_training.png", dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior", help="prior folder (default: the embedded prior)")
    ap.add_argument("--log", nargs="*", default=[], help="training log.jsonl file(s) for the curves")
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--no-samples", action="store_true")
    args = ap.parse_args()

    from dig2dig.prior import load_prior
    from dig2dig.prior.evaluate import denoise_scores, load_gray_folder

    den = load_prior(args.prior)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_samples:
        samples(den, out)
    denoise_panel(den, out)
    if args.log or den.spec.extra.get("check_history"):
        training_plot([Path(p) for p in args.log], out, den.spec.extra)
    scores = denoise_scores(den, load_gray_folder(SHARED / "data/prior/set12"), (15, 25, 50))
    for s in scores:
        print(f"Set12 sigma {s.sigma:g} (t={s.t}): {s.psnr:.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
