r"""CCF: Cao, Xu, Zhu, Wang, Hu, "Conditional Controllable Image Fusion", NeurIPS 2024
(arXiv 2411.01573; release jehovahxu/CCF).

The method
----------
A pretrained unconditional DDPM is sampled with deterministic DDIM.  At every step the prior's
clipped estimate x̂0 is *rectified* by one optimiser step on a sum of fusion conditions:

    z   = x̂0                                           (a fresh leaf; no backprop through the UNet)
    S_t = top-k(w)                                      the k conditions with the largest gate weight
    J   = Σ_{i ∈ S_t} w_i L_i(z, sources) + L_mse(z, sources)
    x̂0' = Adam(z, ∂J/∂z)                                one step, lr 0.03; the moments persist
    x_{t-1} = sqrt(ᾱ') x̂0' + sqrt(1 - ᾱ') ε̂,   ε̂ = (sqrt(1/ᾱ) x_t - x̂0) / sqrt(1/ᾱ - 1)

ε̂ is the noise of the *un-rectified* clipped x̂0 (the sampler's ``recompute_eps=False``), as
released.  The conditions L_i come from the condition bank (:mod:`.ccf_conditions`): basic (MSE,
low-/high-frequency Haar terms, edge), enhanced (SSIM, SD, SF, EI), optional (CC, SCD, VIF,
MS-SSIM) and task-specific (feature matching ‖F(x̂0) - F(s)‖² for any torch callable F).

Sampling-adaptive condition selection (SCS) -- the gate.  The weights w (one per condition,
starting at 1) are updated after every step by a GradNorm rule (Chen et al. 2018, α = 1.5):

    G_i = ‖w_i ∂L_i/∂z‖₂                       for *every* condition, selected or not
    r_i = L̃_i / mean_j L̃_j,   L̃_i = L_i / L_i(first step)
    T_i = mean_j(G_j) · r_i^α                    (a constant target)
    w  ← w - ∂/∂w [ mean_i |G_i - T_i| ],  then  w ← n · w / Σ w

so conditions whose loss falls slowly relative to the others gain weight and get selected.

Batches
-------
Everything above is per image: each batch item has its own gate weights, first-step losses,
selection and Adam moments (Adam is elementwise and all items step together, so one moment
tensor of the batch's shape is exactly per-item moments).  A batch gives the same result as its
items one by one.

Channels
--------
Conditions are evaluated on x̂0 with the prior's channel count, against the sources replicated to
that many channels -- what the release does with its 3-channel ADM (its infrared image is read
as three equal channels).  With dig2dig's embedded one-channel prior this is plain luminance.
Within the bank, MSE, SSIM, MS-SSIM and the Haar terms use all channels, SD is averaged over
channels, and edge, SF and EI use the BT.601 luminance, as the release's do; CC, SCD and VIF
(not used by the release's sampler) use the luminance too.

Presets
-------
``conditions=None`` takes the fusion task's preset: VIF and MIF use the release's full bank
(ssim, mse, edge, lowfreq, highfreq, sf, ei, sd -- in this order, which fixes tie-breaking and the
gate's indices); MEF and MFF use the basic conditions mse, edge, lowfreq, highfreq.  With a
``feature_extractor`` the ``feature`` condition is appended to the preset.  ``topk`` larger than
the bank selects every condition.

Paper intent (default) versus ``release_compat=True``
-----------------------------------------------------
``release_compat=True`` reproduces jehovahxu/CCF @97c4d99 (``sample_LLVIP.py`` with
``gaussian_diffusion_LLVIP_optim.py``, ``util/loss.py::GradNormLoss``, the condition bank) to
float precision; the fixtures in ``fixtures/ccf`` are matched end to end.  Every difference:

1. **Edge condition.**  Release: mean (E(x̂0) - E(vis))², written as the average of two identical
   terms -- the visible image twice, the infrared never -- with E a clipped 8-neighbour Laplacian
   on a 0..255 scale and zero borders.  Paper: |∇x̂0| against max_i |∇s_i| (Sobel magnitude,
   replicate borders), every source included.
2. **EI condition.**  Release: non-standard kernels (the "vertical" one is
   [[-1,0,-1],[2,0,-2],[1,0,-1]]), responses clipped to [0, 255] and shifted to [-1, 1], and the
   input wrapped in ``Variable`` -- which detaches it, so EI's gradient is exactly zero: it can be
   selected and its weight evolves, but it never moves x̂0.  Paper: -mean Sobel magnitude, with
   its gradient.
3. **SSIM loss offset.**  Release: -SSIM; default: 1 - SSIM (our choice: the same gradient, but a
   positive loss, so the gate's loss ratio has the meaning GradNorm gives it).
4. **The always-on MSE term.**  The release adds L_mse once *per selected condition*
   (Σ_{i∈S}(w_i L_i + L_mse), i.e. k·L_mse); the objective as the paper states it (the selected
   conditions plus the basic MSE condition) adds it once.
5. **Top-k tie-breaking** (``tiebreak``).  At the first step all weights are 1.  The release uses
   ``torch.topk``, whose tie order is implementation-defined (torch 2.13 CPU picks [6, 5, 4] =
   EI, SF, high-frequency; a GPU may differ).  ``"torch"`` (release default) calls ``torch.topk``
   per item; ``"stable"`` (paper default) breaks ties toward the lower bank index (ssim, mse,
   edge at the first VIF step), the same on every device.  Fixture ``ccf_case1_stabletopk`` is the
   release with a stable sort.
6. **Portrait resizing, scaling, output.**  The release resizes inputs whose short side exceeds
   512 to a short side of 512, but for portrait images computes the height as 512·w/h instead of
   512·h/w (squashing them); it then resizes every image down to a multiple of 32 (distorting
   the aspect ratio) and min–max normalises the output before saving.  dig2dig does none of that
   in either mode: the pipeline pads to the prior's multiple, crops back, and maps the clipped
   luminance linearly -- pipeline matters, not this module's.

Shared by both modes, deliberately different from the release:

* **Sign-changing loss ratios are guarded.**  The release's r_i^α with a negative ratio (a loss
  that crossed zero, e.g. its -SSIM once SSIM turns negative) is NaN and would poison the gate;
  we use |L_i / L_i(0)| (a ratio with L_i(0) = 0 counts as 1).  Identical whenever the signs agree,
  as they do throughout the fixtures.
* Square roots carry ε = 1e-12 (SD, SF, Sobel magnitude) so flat images have finite gradients.
* Per-item gates and moments (the release runs one image at a time; identical for batch 1).
* ∂J/∂z is assembled from the per-condition gradients the gate needs anyway (Σ_i c_i ∂L_i/∂z)
  instead of a separate backward pass of J: one backward per condition per step.

Cost and steps
--------------
Per step: one prior forward, one forward of every condition on x̂0 and one backward per
condition (the gate needs every ‖∂L_i/∂z‖; the UNet is never differentiated).  Measured with
``benchmarks/ccf_step_cost.py`` (embedded luminance prior, VIF bank): 256×256 at 1 CPU thread,
35 ms of CCF against a 330 ms forward (≈ 11 %); 480×640 at 2 threads, 41 ms (losses 14, gradients
26, gate + Adam 1) against a 498 ms forward: 7.6 % of the step (``benchmarks/results/step_time.md``).
Adam moves each pixel by about ``lr`` per step, so the sources shape the image only over many
steps: the release samples 200; at 25 steps the result is still mostly the prior's.

Noted, not changed: GradNorm's ratio assumes positive, decreasing losses.  For the maximised
metrics (SD, SF, EI: losses ≤ 0) an *improving* loss has L/L(0) > 1, which the gate reads as
"training slowly", so those conditions tend to gain weight -- in both modes, as released (the
paper does not discuss it).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..options import CCFOptions, check_condition_names
from ..sampler import Rectifier
from .ccf_conditions import iter_gradients, make_condition

RELEASE_BANK = ("ssim", "mse", "edge", "lowfreq", "highfreq", "sf", "ei", "sd")
BASIC_BANK = ("mse", "edge", "lowfreq", "highfreq")
TASK_PRESETS = {"vif": RELEASE_BANK, "mif": RELEASE_BANK, "mef": BASIC_BANK, "mff": BASIC_BANK}
TIEBREAKS = ("stable", "torch")
ANCHOR = "mse"  # the basic condition added at every step, selected or not

# --------------------------------------------------------------------------------------------
# the gate (SCS) and the optimiser, as pure functions
# --------------------------------------------------------------------------------------------


def select_topk(w: torch.Tensor, k: int, tiebreak: str = "stable") -> torch.Tensor:
    """Indices (B, k) of the k largest weights per item, in descending order.

    ``"stable"``: ties go to the lower index.  ``"torch"``: ``torch.topk`` on each item's row,
    the release's (implementation-defined) order.
    """
    if tiebreak == "stable":
        return torch.sort(w, dim=1, descending=True, stable=True).indices[:, :k]
    if tiebreak == "torch":
        return torch.stack([torch.topk(row, k).indices for row in w])
    raise ValueError(f"tiebreak must be one of {TIEBREAKS}, got {tiebreak!r}")


class GateUpdate(NamedTuple):
    grad_norms: torch.Tensor  # G_i = ‖w_i ∂L_i/∂z‖ (B, n)
    target: torch.Tensor  # mean(G) r^α (B, n)
    w_grad: torch.Tensor  # ∂ mean|G - target| / ∂w (B, n)
    w: torch.Tensor  # updated and renormalised weights (B, n)


def loss_ratios(losses: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """|L / L(0)| -- the release's L / L(0) whenever the two have one sign; 1 where L(0) = 0."""
    safe = torch.where(first == 0, torch.ones_like(first), first)
    return torch.where(first == 0, torch.ones_like(losses), (losses / safe).abs())


def gradnorm_update(
    w: torch.Tensor, losses: torch.Tensor, first: torch.Tensor, grad_norms: torch.Tensor, alpha: float = 1.5
) -> GateUpdate:
    """One GradNorm update of the gate weights ``w`` (B, n), per item.

    ``grad_norms`` are ‖∂L_i/∂z‖ (B, n); ``first`` the losses of the first step.  The update is
    the release's: one plain gradient step (rate 1) on mean_i |G_i - T_i| with the target held
    constant, then renormalisation so the weights sum to n.
    """
    n = w.shape[1]
    G = w.abs() * grad_norms
    ratio = loss_ratios(losses, first)
    r = ratio / ratio.mean(1, keepdim=True).clamp_min(torch.finfo(ratio.dtype).tiny)
    target = G.mean(1, keepdim=True) * r**alpha
    w_grad = torch.sign(G - target) * torch.sign(w) * grad_norms / n
    w_new = w - w_grad
    w_new = w_new / w_new.sum(1, keepdim=True) * n
    return GateUpdate(G, target, w_grad, w_new)


class AdamMoments(NamedTuple):
    m: torch.Tensor
    v: torch.Tensor
    steps: int


def adam_step(
    z: torch.Tensor,
    grad: torch.Tensor,
    moments: AdamMoments | None,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[torch.Tensor, AdamMoments]:
    """One Adam step (``torch.optim.Adam``'s arithmetic, out of place): (z', new moments)."""
    b1, b2 = betas
    if moments is None:
        moments = AdamMoments(torch.zeros_like(z), torch.zeros_like(z), 0)
    step = moments.steps + 1
    m = torch.lerp(moments.m, grad, 1 - b1)
    v = torch.addcmul(moments.v * b2, grad, grad, value=1 - b2)
    step_size = lr / (1 - b1**step)
    denom = v.sqrt() / (1 - b2**step) ** 0.5 + eps
    return torch.addcdiv(z, m, denom, value=-step_size), AdamMoments(m, v, step)


# --------------------------------------------------------------------------------------------
# the rectifier
# --------------------------------------------------------------------------------------------


@dataclass
class CCFState:
    """What CCF carries from step to step (all per batch item)."""

    w: torch.Tensor  # (B, n) gate weights
    first: torch.Tensor | None = None  # (B, n) losses of the first step (GradNorm's L(0))
    adam: AdamMoments | None = None
    history: list[dict] = field(default_factory=list)  # one record per step (CPU tensors)


def parse_conditions(conditions, task: str | None = None, feature_extractor=None) -> tuple[str, ...]:
    """The bank's names: the task's preset for ``conditions=None``, else the given list / comma string."""
    if conditions is None:
        key = (task or "vif").lower()
        if key not in TASK_PRESETS:
            raise ValueError(f"unknown task {task!r} for a CCF preset; use one of {', '.join(TASK_PRESETS)}")
        names = list(TASK_PRESETS[key])
        if feature_extractor is not None:
            names.append("feature")
    else:
        if isinstance(conditions, str):
            conditions = conditions.split(",")
        names = [str(c).strip().lower() for c in conditions if str(c).strip()]
    if not names:
        raise ValueError("CCF needs at least one condition")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate CCF conditions in {names}")
    check_condition_names(names, feature_extractor)
    return tuple(names)


def resolve_extractor(obj):
    """A callable, or ``"module:attr"`` (a class named that way is instantiated with no arguments)."""
    if obj is None or callable(obj):
        return obj
    if isinstance(obj, str) and ":" in obj:
        mod, attr = obj.split(":", 1)
        try:
            target = importlib.import_module(mod)
            for part in attr.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError, ValueError) as e:
            raise ValueError(
                f"feature extractor {obj!r}: cannot import it ({type(e).__name__}: {e}); give "
                f"'module:attr' of an importable torch module or function"
            ) from None
        if isinstance(target, type):
            try:
                target = target()
            except Exception as e:  # noqa: BLE001 -- a class that needs arguments, or fails to build
                raise ValueError(
                    f"feature extractor {obj!r}: {attr}() cannot be created without arguments "
                    f"({type(e).__name__}: {e}); name a module instance or a factory"
                ) from None
        if callable(target):
            return target
    raise ValueError(f"feature_extractor must be a torch callable or 'module:attr', got {obj!r}")


class CCFGuidance(Rectifier):
    """The CCF rectifier ``(x̂0, step, state) -> (x̂0', state)`` for :func:`dig2dig.sampler.ddim`.

    ``sources``: N tensors (B, C_s, H, W) in [-1, 1], role order (VIF: infrared, visible); one-
    channel sources are replicated to x̂0's channel count.  ``task`` picks the preset bank when the
    ``conditions`` option is not given.  Keyword options: :class:`dig2dig.options.CCFOptions`; see the
    module docstring for the rest.
    """

    name = "ccf"
    recompute_eps = False  # ε of the un-rectified x̂0 drives the DDIM update (as released)

    def __init__(self, sources: Sequence[torch.Tensor], opts: CCFOptions | None = None, *, task: str | None = None):
        self.opts = o = CCFOptions.ensure(opts)
        sources = list(sources)
        if not sources or any(s.ndim != 4 for s in sources) or len({tuple(s.shape) for s in sources}) != 1:
            raise ValueError("sources must be one or more (B, C, H, W) tensors of one shape")
        self.tiebreak = o.tiebreak or ("torch" if o.release_compat else "stable")
        self.feature_extractor = resolve_extractor(o.feature_extractor)
        self.names = parse_conditions(o.conditions, task, self.feature_extractor)
        self.topk = min(o.topk, len(self.names))
        self.sources = sources
        self._bank: list | None = None  # built for x̂0's channel count on first use
        self._channels: int | None = None

    # --- the bank --------------------------------------------------------------------------
    def bank(self, channels: int) -> list:
        """The gated conditions (in ``names`` order), plus the MSE anchor when it is not among them."""
        if self._bank is None or self._channels != channels:
            srcs = []
            for s in self.sources:
                if s.shape[1] == channels:
                    srcs.append(s)
                elif s.shape[1] == 1:
                    srcs.append(s.expand(-1, channels, -1, -1).contiguous())
                else:
                    raise ValueError(f"sources have {s.shape[1]} channels, x̂0 has {channels}")
            names = list(self.names) + ([ANCHOR] if ANCHOR not in self.names else [])
            self._bank = [
                make_condition(
                    n, srcs, release_compat=self.opts.release_compat, feature_extractor=self.feature_extractor
                )
                for n in names
            ]
            self._channels = channels
        return self._bank

    def initial_state(self, x0_hat: torch.Tensor) -> CCFState:
        return CCFState(w=torch.ones((x0_hat.shape[0], len(self.names)), dtype=x0_hat.dtype, device=x0_hat.device))

    def coefficients(self, w: torch.Tensor, selected: torch.Tensor, n_all: int) -> torch.Tensor:
        """c (B, n_all) with ∂J/∂z = Σ_i c_i ∂L_i/∂z: w_i on the selected, plus the MSE anchor."""
        c = torch.zeros((w.shape[0], n_all), dtype=w.dtype, device=w.device)
        c.scatter_(1, selected, w.gather(1, selected))
        anchor = self.names.index(ANCHOR) if ANCHOR in self.names else n_all - 1
        c[:, anchor] += selected.shape[1] if self.opts.release_compat else 1
        return c

    # --- one step ----------------------------------------------------------------------------
    def __call__(self, x0_hat: torch.Tensor, step, state: CCFState) -> tuple[torch.Tensor, CCFState]:
        bank = self.bank(x0_hat.shape[1])
        n = len(self.names)
        selected = select_topk(state.w, self.topk, self.tiebreak)
        coef = self.coefficients(state.w, selected, len(bank))

        with torch.enable_grad():
            z = x0_hat.detach().clone().requires_grad_(True)
            per_condition = [c(z) for c in bank]
            zgrad = torch.zeros_like(z)
            norms = torch.zeros(coef.shape, dtype=z.dtype, device=z.device)
            for i, g in enumerate(iter_gradients(per_condition, z)):
                norms[:, i] = torch.linalg.vector_norm(g.flatten(1), dim=1)
                zgrad += coef[:, i].view(-1, 1, 1, 1) * g
        losses = torch.stack([v.detach() for v in per_condition], dim=1)
        if state.first is None:
            state.first = losses[:, :n].clone()
        gate = gradnorm_update(state.w, losses[:, :n], state.first, norms[:, :n], self.opts.alpha)
        x0_new, state.adam = adam_step(x0_hat.detach(), zgrad, state.adam, self.opts.lr)
        state.history.append(
            {
                # kept on the device: copying to the host here would stall a GPU at every step
                "step": step.index,
                "t": step.t,
                "selected": selected,
                "w_before": state.w,
                "w_after": gate.w,
                "losses": losses[:, :n],
                "grad_norms": gate.grad_norms,
                "target": gate.target,
                "w_grad": gate.w_grad,
                "total": (coef * losses).sum(1),
            }
        )
        state.w = gate.w
        return x0_new, state

    # --- records -------------------------------------------------------------------------------
    def item_records(self, state: CCFState, b: int, crop=None) -> dict:
        """Batch item ``b``'s selection history (``crop`` is accepted for the pipeline; CCF keeps no maps)."""
        steps = []
        for rec in state.history:
            rec = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in rec.items()}
            idx = [int(i) for i in rec["selected"][b]]
            steps.append(
                {
                    "step": rec["step"],
                    "t": rec["t"],
                    "selected": [self.names[i] for i in idx],
                    "selected_idx": idx,
                    "w_before": rec["w_before"][b].tolist(),
                    "w_after": rec["w_after"][b].tolist(),
                    "losses": rec["losses"][b].tolist(),
                    "grad_norms": rec["grad_norms"][b].tolist(),
                    "total": float(rec["total"][b]),
                }
            )
        return {
            "method": "ccf",
            "conditions": list(self.names),
            "topk": self.topk,
            "alpha": self.opts.alpha,
            "lr": self.opts.lr,
            "release_compat": self.opts.release_compat,
            "tiebreak": self.tiebreak,
            "first_losses": state.first[b].tolist() if state.first is not None else None,
            "steps": steps,
        }


def build_ccf(sources, prior, opts: CCFOptions | None = None, *, task: str | None = None) -> CCFGuidance:
    """CCF for the pipeline: ``sources`` are (B, 1, H, W) luminance tensors, replicated to the prior's
    channels; the bank is built now, so source-side targets are computed once.  CCF is deterministic
    given x_T: it needs no grid or seeds."""
    guidance = CCFGuidance(sources, opts, task=task)
    if prior is not None:
        guidance.bank(prior.channels)
    return guidance


# --------------------------------------------------------------------------------------------
# the selection figure (the paper's Figure 1: conditions × steps)
# --------------------------------------------------------------------------------------------


def selection_matrix(records: dict) -> tuple[list[str], list[int], Any]:
    """(condition names, step timesteps, rank matrix (n, steps): 1..k where selected, 0 elsewhere)."""
    import numpy as np

    names = list(records["conditions"])
    ranks = np.zeros((len(names), len(records["steps"])), dtype=np.int32)
    for j, s in enumerate(records["steps"]):
        for r, i in enumerate(s["selected_idx"]):
            ranks[i, j] = r + 1
    return names, [s["t"] for s in records["steps"]], ranks


def save_selection(records: dict[str, Any] | None, out_dir: str | Path, stem: str = "ccf_selection") -> list[Path]:
    """Write ``<stem>.png`` (which conditions were selected at each step, and the gate weights)
    and ``<stem>.json`` (the history) for one image's CCF records (``FusionResult.guidance``)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    from ..io import atomic_savefig, atomic_write_text

    if not records or records.get("method") != "ccf":
        raise ValueError("save_selection needs the guidance records of a method='ccf' result")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names, ts, ranks = selection_matrix(records)
    n, steps = ranks.shape
    w = np.array([s["w_before"] for s in records["steps"]]).T  # (n, steps)

    fig = Figure(figsize=(max(6.0, min(18.0, 0.28 * steps + 2.5)), 1.2 + 0.42 * n + 2.6), dpi=120)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, gridspec_kw={"height_ratios": [max(n, 2), 4]}, sharex=True)
    cmap = ListedColormap(
        ["#f4f4f4"] + [c for c in ("#1f4e79", "#2e75b6", "#9dc3e6", "#bdd7ee", "#deebf7")][: max(1, records["topk"])]
    )
    top.imshow(
        np.minimum(ranks, 5),
        aspect="auto",
        interpolation="nearest",
        cmap=cmap,
        vmin=0,
        vmax=max(1, min(records["topk"], 5)),
    )
    if steps <= 60:
        for i, j in zip(*np.nonzero(ranks)):
            top.text(
                j,
                i,
                str(ranks[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if ranks[i, j] <= 2 else "black",
            )
    top.set_yticks(range(n), names)
    top.set_title(
        f"CCF sampling-adaptive selection: top-{records['topk']} of {n} conditions per step "
        f"({'release' if records.get('release_compat') else 'paper'} mode)",
        fontsize=9,
    )
    for i in range(n):
        bottom.plot(range(steps), w[i], label=names[i], lw=1.2)
    bottom.set_ylabel("gate weight w")
    bottom.legend(fontsize=7, ncol=min(n, 4), loc="best")
    tick = max(1, steps // 12)
    bottom.set_xticks(range(0, steps, tick), [str(ts[j]) for j in range(0, steps, tick)])
    bottom.set_xlabel("reverse step (timestep t)")
    fig.tight_layout()
    png = atomic_savefig(fig, out / f"{stem}.png")

    js = out / f"{stem}.json"
    payload = {
        **{k: v for k, v in records.items() if k != "steps"},
        "timesteps": ts,
        "selection_ranks": ranks.tolist(),
        "steps": records["steps"],
    }
    atomic_write_text(js, json.dumps(payload, indent=1, allow_nan=True))
    return [png, js]


__all__ = [
    "ANCHOR",
    "BASIC_BANK",
    "CCFGuidance",
    "CCFState",
    "RELEASE_BANK",
    "TASK_PRESETS",
    "AdamMoments",
    "GateUpdate",
    "adam_step",
    "build_ccf",
    "gradnorm_update",
    "loss_ratios",
    "parse_conditions",
    "save_selection",
    "select_topk",
    "selection_matrix",
]
