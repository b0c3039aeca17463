"""Figures of what a method did: Dig2DIG's weight maps and cumulative information gains.

:func:`save_dig` writes, for one :class:`~dig2dig.api.FusionResult` of ``method="dig2dig"``
(run with ``record=True`` so the DIG maps are kept):

* ``weights_step<k>.png`` for every refresh k: one panel per source, its weight map (0 … 1);
* ``dig_curves.png``: cumulative DIG against the reverse step for each source -- mean and spread
  (± one standard deviation) over the whole image and over regions where each source carries the
  most local structure (the paper's Figure 5: infrared gains early, visible gains late);
* ``dig.json``: the numbers behind the curves.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _structure_regions(sources: list[np.ndarray], size: tuple[int, int], top: float = 0.15) -> dict[int, np.ndarray]:
    """For each source (by index), the pixels (at DIG resolution) where its local contrast most exceeds the others'."""
    import cv2

    maps = []
    for s in sources:
        s = cv2.resize(s.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA)
        mu = cv2.blur(s, (7, 7))
        maps.append(np.sqrt(np.maximum(cv2.blur(s * s, (7, 7)) - mu * mu, 0)))
    stds = np.stack(maps)
    regions = {}
    for i in range(len(sources)):
        others = np.delete(stds, i, axis=0).max(axis=0)
        margin = stds[i] - others
        regions[i] = margin >= np.quantile(margin, 1 - top)
    return regions


def region_masks(regions: dict, full: tuple[int, int], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """User regions -- boxes (x0, y0, x1, y1) in pixels of the image, or boolean masks of its size --
    as masks at the DIG resolution ``size``."""
    import cv2

    masks = {}
    for name, reg in regions.items():
        if isinstance(reg, np.ndarray):
            if reg.shape != full:
                raise ValueError(f"region {name!r}: mask of shape {reg.shape}, the image is {full}")
            m = cv2.resize(reg.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0
        else:
            x0, y0, x1, y1 = (int(v) for v in reg)
            if not (0 <= x0 < x1 <= full[1] and 0 <= y0 < y1 <= full[0]):
                raise ValueError(
                    f"region {name!r}: box {reg} must satisfy 0 <= x0 < x1 <= {full[1]} and "
                    f"0 <= y0 < y1 <= {full[0]} (x0,y0,x1,y1 in pixels)"
                )
            m = np.zeros(size, bool)
            sy, sx = size[0] / full[0], size[1] / full[1]
            m[
                int(y0 * sy) : max(int(np.ceil(y1 * sy)), int(y0 * sy) + 1),
                int(x0 * sx) : max(int(np.ceil(x1 * sx)), int(x0 * sx) + 1),
            ] = True
        masks[name] = m
    return masks


def save_dig(
    result, out_dir: str | Path, sources: list[np.ndarray] | None = None, regions: dict | None = None
) -> list[Path]:
    """Write the weight maps and DIG curves; ``sources`` (role order) default to the result's files.

    ``regions`` (name -> box ``(x0, y0, x1, y1)`` in image pixels, or a boolean mask of the image's
    size) adds a curve panel per region; without it the panels are the regions where each source
    carries the most local structure.  Curves have a point per reverse step when the result holds
    the per-level record (``record=True`` runs compute it), else a point per refresh.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .color import luminance
    from .io import atomic_savefig, write_image

    g = result.guidance
    if not g or g.get("method") != "dig2dig":
        raise ValueError("save_dig needs a result of method='dig2dig'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    refreshes = [r for r in g["refreshes"] if "weights" in r]
    names = [Path(n).stem for n in result.config["roles"].values()]
    written = []
    for r in refreshes:
        w = r["weights"]
        gap = np.ones((w.shape[1], 4), np.float32)
        panel = np.concatenate(sum(([w[i].astype(np.float32), gap] for i in range(len(w))), [])[:-1], axis=1)
        written.append(write_image(out / f"weights_step{r['step']:03d}.png", np.clip(panel, 0, 1)))

    summary: dict = {
        "names": names,
        "steps": [r["step"] for r in refreshes],
        "t": [r["t"] for r in refreshes],
        "t_from": [r["t_from"] for r in refreshes],
        "dig_mean": [r["dig_mean"] for r in refreshes],
    }
    curve = g.get("curve")
    with_maps = [r for r in refreshes if "dig" in r]
    if curve is not None:  # cumulative DIG from the first grid level down to each level
        d = np.asarray(curve["dist"])  # (K, N, h, w)
        cum, xs, xlabel = d[:1] - d, list(range(len(d))), "reverse step"
        summary["curve_t"] = list(curve["t"])
    elif with_maps:
        cum = np.cumsum(np.stack([r["dig"] for r in with_maps]), axis=0)  # (R, N, h, w)
        xs, xlabel = [r["step"] for r in with_maps], "reverse step (refresh)"
    else:
        cum = None
    if cum is not None:
        size = cum.shape[-2:]
        if regions:
            masks = region_masks(regions, tuple(result.image.shape[:2]), size)
        else:
            srcs = [luminance(im) for im in (sources if sources is not None else _source_images(result))]
            masks = {
                f"where {names[i]} has structure": m
                for i, m in (_structure_regions(srcs, size).items() if srcs else [])
            }
        panels = [("whole image", np.ones(size, bool))] + list(masks.items())
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
        summary["curves"] = {}
        summary["curve_steps"] = xs
        for ax, (title, mask) in zip(axes[0], panels):
            for i in range(cum.shape[1]):
                vals = cum[:, i][:, mask]
                mean, std = vals.mean(axis=1), vals.std(axis=1)
                ax.plot(xs, mean, marker="o", markersize=3, label=names[i])
                ax.fill_between(xs, mean - std, mean + std, alpha=0.2)
                summary["curves"].setdefault(title, {})[names[i]] = {"mean": mean.tolist(), "std": std.tolist()}
            for k in summary["steps"]:
                ax.axvline(k, color="0.8", lw=0.8, zorder=0)
            ax.set(title=title, xlabel=xlabel, ylabel="cumulative DIG")
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / "dig_curves.png"
        atomic_savefig(fig, path, dpi=110)
        plt.close(fig)
        written.append(path)
    from .io import atomic_write_text

    written.append(atomic_write_text(out / "dig.json", json.dumps(summary, indent=2)))
    return written


def _source_images(result) -> list[np.ndarray]:
    """The sources in role order, if they were files (for the region masks)."""
    from .io import read_image

    imgs = []
    for path in result.config["roles"].values():
        try:
            imgs.append(read_image(path).data)
        except (OSError, ValueError):
            return []
    return imgs
