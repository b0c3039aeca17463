"""Training the compact prior: ``dig2dig prior train --config configs/prior.toml --out DIR``.

Objective: DDPM ε-prediction on the linear schedule (β 1e-4 … 0.02, T = 1000), plain MSE on ε, so
the trained network *is* a :class:`~dig2dig.prior.Denoiser` with no conversion.  Timesteps are
drawn from a mixture: with probability ``uniform_fraction`` uniformly over [0, T), otherwise
through the equivalent noise level s_t = √((1-ᾱ_t)/ᾱ_t) with log s ~ N(``log_sigma_mean``,
``log_sigma_std``²) -- the low-noise range where a fusion result is finished and where the
denoising check lives gets most of the updates, the high-noise range keeps enough to generate.

Data: single-channel luminance in [-1, 1], random crops with flips and 90° rotations, from the
folders the config names (relative to the data root: ``--data-root``, else ``$DIG2DIG_SHARED``,
else the config's ``root``).  Folders listed under ``exclude`` (the Set12 check set) are refused.

The run is resumable: ``DIR/last.pt`` (weights, EMA, optimiser, step, RNG state) is written
atomically every ``checkpoint_every`` steps and on exit; ``DIR/log.jsonl`` records the loss and,
every ``eval_every`` steps, the EMA weights' check-set PSNR; each time that PSNR improves the EMA
weights are exported to ``DIR/best`` in the dig2dig prior format (fp16 safetensors + spec.json).
Mixed precision (bf16 autocast) is used on CUDA.

Learning rate: linear warm-up over the optimiser's first ``warmup`` updates (again after a warm
start, whose optimiser state is fresh), then constant or, with ``lr_schedule = "cosine"``, a cosine
from ``lr`` at ``decay_start`` to ``lr_min`` at ``max_steps``.  Warm-started runs append to the
``runs`` list in the exported spec, so the shipped weights' full schedule stays on record.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..io import READ_SUFFIXES, atomic_write_bytes, atomic_write_text
from ..schedule import alphas_cumprod


@dataclass
class TrainConfig:
    architecture: dict = field(default_factory=dict)
    # data
    root: str = "../shared"
    folders: list = field(default_factory=lambda: ["data/prior/train400", "data/fusion"])
    weights: list = field(default_factory=lambda: [0.5, 0.5])  # sampling probability per folder
    exclude: list = field(default_factory=lambda: ["data/prior/set12"])
    check_folder: str = "data/prior/set12"
    crop: int = 96
    batch: int = 16
    # optimisation
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: int = 500
    grad_clip: float = 1.0
    ema: float = 0.9995
    max_steps: int = 200_000
    lr_schedule: str = "constant"  # or "cosine": from lr at decay_start down to lr_min at max_steps
    decay_start: int = 0
    lr_min: float = 0.0
    uniform_fraction: float = 0.4
    log_sigma_mean: float = -1.6
    log_sigma_std: float = 1.0
    # bookkeeping
    seed: int = 0
    log_every: int = 50
    eval_every: int = 1000
    eval_sigmas: list = field(default_factory=lambda: [15, 25, 50])
    checkpoint_every: int = 250
    threads: int = 0  # 0: torch's default

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        raw = tomllib.loads(Path(path).read_text())
        flat: dict = {}
        for key, value in raw.items():
            if key == "architecture":
                flat["architecture"] = value
            elif isinstance(value, dict):
                flat.update(value)
            else:
                flat[key] = value
        unknown = set(flat) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown training settings {sorted(unknown)}")
        cfg = cls(**flat)
        if cfg.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"{path}: lr_schedule must be 'constant' or 'cosine', got {cfg.lr_schedule!r}")
        return cfg

    def lr_at(self, step: int, opt_steps: int) -> float:
        """Learning rate for global step ``step``; ``opt_steps`` counts the optimiser's own updates, so
        a warm start (fresh optimiser state) warms up again instead of taking full steps at once."""
        lr = self.lr
        if self.lr_schedule == "cosine":
            span = max(self.max_steps - self.decay_start, 1)
            frac = min(max((step - self.decay_start) / span, 0.0), 1.0)
            lr = self.lr_min + (self.lr - self.lr_min) * 0.5 * (1 + math.cos(math.pi * frac))
        return lr * min(1.0, (opt_steps + 1) / max(self.warmup, 1))


# --------------------------------------------------------------------------------------------
# data


class LumaCrops:
    """All training images held in memory as uint8 luminance; random augmented crops."""

    def __init__(self, root: Path, folders: list[str], weights: list[float], exclude: list[str], crop: int):
        from ..color import luminance
        from ..io import read_image

        if len(weights) != len(folders):
            raise ValueError("give one sampling weight per training folder")
        bad = [str(root / e) for e in exclude]
        self.pools: list[list[np.ndarray]] = []
        self.names: list[str] = []
        for folder in folders:
            base = (root / folder).resolve()
            if not base.is_dir():
                raise FileNotFoundError(f"training folder {base} does not exist (data root {root})")
            files = sorted(p for p in base.rglob("*") if p.suffix.lower() in READ_SUFFIXES)
            for p in files:
                if any(str(p.resolve()).startswith(str(Path(b).resolve())) for b in bad):
                    raise ValueError(f"{p} lies in an excluded folder (the check set); refusing to train on it")
            pool = []
            for p in files:
                lum = np.round(luminance(read_image(p).data) * 255).astype(np.uint8)
                if min(lum.shape) >= crop:
                    pool.append(lum)
            if not pool:
                raise ValueError(f"no image of at least {crop}x{crop} in {base}")
            self.pools.append(pool)
            self.names.append(f"{folder}: {len(pool)} images")
        w = np.asarray(weights, dtype=np.float64)
        self.weights = w / w.sum()
        self.crop = crop

    def batch(self, rng: np.random.Generator, n: int) -> np.ndarray:
        c = self.crop
        out = np.empty((n, 1, c, c), np.float32)
        for i in range(n):
            pool = self.pools[rng.choice(len(self.pools), p=self.weights)]
            img = pool[rng.integers(len(pool))]
            y, x = rng.integers(img.shape[0] - c + 1), rng.integers(img.shape[1] - c + 1)
            patch = img[y: y + c, x: x + c]
            patch = np.rot90(patch, rng.integers(4))
            if rng.random() < 0.5:
                patch = patch[:, ::-1]
            out[i, 0] = patch
        return out / 127.5 - 1.0


def sample_timesteps(rng: np.random.Generator, n: int, cfg: TrainConfig, ab: np.ndarray) -> np.ndarray:
    t = rng.integers(0, len(ab), n)
    mask = rng.random(n) >= cfg.uniform_fraction
    if mask.any():
        s_table = np.sqrt((1 - ab) / ab)
        s = np.exp(cfg.log_sigma_mean + cfg.log_sigma_std * rng.standard_normal(int(mask.sum())))
        t[mask] = np.clip(np.searchsorted(s_table, s), 0, len(ab) - 1)
    return t


# --------------------------------------------------------------------------------------------
# the loop


def _data_root(cfg: TrainConfig, override: str | None) -> Path:
    return Path(override or os.environ.get("DIG2DIG_SHARED") or cfg.root).expanduser()


def export_prior(net: torch.nn.Module, arch: dict, out_dir: Path, extra: dict) -> Path:
    """Write ``net`` as a dig2dig prior folder: fp16 ``weights.safetensors`` + ``spec.json``."""
    from safetensors.torch import save

    from .base import LINEAR_SCHEDULE, file_sha256
    from .compact import CompactConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in net.state_dict().items()}
    atomic_write_bytes(out_dir / "weights.safetensors", save(state))
    cfg = CompactConfig.from_dict(arch)
    spec = {
        "format": "dig2dig", "name": extra.get("name", "dig2dig-compact"), "architecture": cfg.to_dict(),
        "channels": cfg.in_channels, "spatial_multiple": cfg.spatial_multiple, "weights": "weights.safetensors",
        "sha256": file_sha256(out_dir / "weights.safetensors"), "dtype": "float16",
        "schedule": dict(LINEAR_SCHEDULE), "prediction": "eps", "data_range": [-1.0, 1.0],
        "parameters": sum(p.numel() for p in net.parameters()), "extra": extra,
    }
    atomic_write_text(out_dir / "spec.json", json.dumps(spec, indent=2))
    return out_dir


def train(config_path: str | Path, out: str | Path, *, data_root: str | None = None, max_steps: int | None = None,
          minutes: float | None = None, device: str | None = None, init: str | None = None,
          threads: int | None = None, log=print) -> Path:
    from ..prior.base import Denoiser, PriorSpec
    from .compact import CompactConfig, CompactUNet
    from .evaluate import denoise_scores, load_gray_folder

    cfg = TrainConfig.from_toml(config_path)
    if max_steps is not None:
        cfg.max_steps = max_steps
    if threads:
        cfg.threads = threads
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    root = _data_root(cfg, data_root)
    data = LumaCrops(root, cfg.folders, cfg.weights, cfg.exclude, cfg.crop)
    check = load_gray_folder(root / cfg.check_folder) if cfg.check_folder else {}
    log(f"data: {'; '.join(data.names)}; check set: {len(check)} images; device {dev}")

    arch = CompactConfig.from_dict(cfg.architecture)
    net = CompactUNet(arch).to(dev)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ab = alphas_cumprod()
    ab_t = torch.from_numpy(ab).float().to(dev)
    best_key = f"psnr_{int(cfg.eval_sigmas[len(cfg.eval_sigmas) // 2])}"  # the model-selection metric
    step, best, wall, opt_steps = 0, -math.inf, 0.0, 0
    runs: list[dict] = []  # provenance of earlier runs this one continues (warm starts)
    history: list[dict] = []  # check-set numbers of those runs
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    last = out / "last.pt"
    if last.is_file():
        ck = torch.load(last, map_location=dev, weights_only=False)
        net.load_state_dict(ck["net"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        step, best, wall = ck["step"], ck["best"], ck.get("wall", 0.0)
        opt_steps, runs = ck.get("opt_steps", step), ck.get("runs", [])
        history = ck.get("history", [])
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        log(f"resumed from {last} at step {step} (best check PSNR {best:.3f} dB, {wall / 3600:.2f} h trained)")
    elif init:
        # warm start from exported weights (e.g. the shipped prior): weights and EMA, fresh optimiser
        from .loaders import load_dig2dig_folder

        src = load_dig2dig_folder(init)
        if CompactConfig.from_dict(src.spec.architecture) == arch:
            net.load_state_dict(src.module.state_dict())
        else:  # a deeper network, or one with a stem/head: grown from the smaller one, same output at start
            try:
                net.load_grown(src.module.state_dict())
            except ValueError as e:
                raise ValueError(f"--init {init} has architecture {src.spec.architecture}, which cannot grow into "
                                 f"the config's {arch.to_dict()}: {e}") from None
            log(f"grown from {src.spec.architecture} to {arch.to_dict()} (same output at the start)")
        ema.load_state_dict(net.state_dict())
        step = int(src.spec.extra.get("trained_steps", 0))
        wall = float(src.spec.extra.get("train_wall_hours", 0.0)) * 3600
        runs = list(src.spec.extra.get("runs") or [
            {"config": src.spec.extra.get("config"), "steps": [0, step], "wall_hours": round(wall / 3600, 3)}])
        history = list(src.spec.extra.get("check_history") or
                       [{"step": step, **src.spec.extra.get("check_psnr", {})}])
        best = float(src.spec.extra.get("check_psnr", {}).get(best_key, -math.inf))
        log(f"initialised from {init} (trained {step} steps); optimiser state starts fresh")
    n_params = sum(p.numel() for p in net.parameters())
    log(f"compact UNet {arch.to_dict()}: {n_params / 1e6:.2f} M parameters")

    def save_checkpoint():
        import io

        buf = io.BytesIO()
        torch.save({"net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
                    "opt_steps": opt_steps, "runs": runs, "history": history, "best": best, "wall": wall, "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                    "config": cfg.__dict__}, buf)
        atomic_write_bytes(last, buf.getvalue())

    def evaluate() -> dict:
        den = Denoiser(ema, PriorSpec("dig2dig", arch.to_dict(), arch.in_channels, arch.spatial_multiple), module=ema)
        scores = denoise_scores(den, check, cfg.eval_sigmas)
        return {f"psnr_{int(s.sigma)}": round(s.psnr, 4) for s in scores}

    lock = _acquire_lock(out)
    logf = open(out / "log.jsonl", "a")
    amp = dev.type == "cuda"
    t_run = time.time()
    losses: list[float] = []
    try:
        while step < cfg.max_steps:
            if minutes is not None and time.time() - t_run > minutes * 60:
                log(f"time budget of {minutes} min reached")
                break
            t0 = time.time()
            x0 = torch.from_numpy(data.batch(rng, cfg.batch)).to(dev)
            t = torch.from_numpy(sample_timesteps(rng, cfg.batch, cfg, ab)).to(dev)
            noise = torch.randn_like(x0)
            a = ab_t[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
            lr = cfg.lr_at(step, opt_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                pred = net(xt, t)
            loss = torch.mean((pred.float() - noise) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            decay = min(cfg.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pn in zip(ema.parameters(), net.parameters()):
                    pe.lerp_(pn, 1 - decay)
            step += 1
            opt_steps += 1
            wall += time.time() - t0
            losses.append(loss.item())
            if step % cfg.log_every == 0:
                rec = {"step": step, "loss": round(float(np.mean(losses)), 6), "lr": lr, "grad_norm": round(float(gn), 4),
                       "wall_h": round(wall / 3600, 4), "s_per_step": round(wall / max(step, 1), 3)}
                losses.clear()
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                log(json.dumps(rec))
            if step % cfg.checkpoint_every == 0:
                save_checkpoint()
            if check and step % cfg.eval_every == 0:
                scores = evaluate()
                rec = {"step": step, "eval": scores, "wall_h": round(wall / 3600, 4)}
                if scores[best_key] > best:
                    best = scores[best_key]
                    export_prior(ema, arch.to_dict(), out / "best", {
                        "trained_steps": step, "train_wall_hours": round(wall / 3600, 3), "check_set": cfg.check_folder,
                        "check_psnr": scores, "training_folders": cfg.folders, "crop": cfg.crop, "batch": cfg.batch,
                        "objective": "eps-MSE, linear beta schedule, mixed uniform/log-normal timesteps",
                        "config": str(config_path), "check_history": _merge_history(
                            history, _log_evals(out / "log.jsonl"), [{"step": step, **scores}]),
                        "runs": runs + [
                            {"config": str(config_path), "steps": [runs[-1]["steps"][1] if runs else 0, step],
                             "wall_hours": round((wall - 3600 * sum(r.get("wall_hours", 0) for r in runs)) / 3600, 3)}]})
                    rec["exported"] = True
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                log(json.dumps(rec))
    finally:
        save_checkpoint()
        logf.close()
        lock.unlink(missing_ok=True)
    return out


def _merge_history(*parts: list[dict]) -> list[dict]:
    """Check-set records by step, later parts winning."""
    by_step = {r["step"]: r for part in parts for r in part}
    return [by_step[k] for k in sorted(by_step)]


def _log_evals(log: Path) -> list[dict]:
    """This run's check-set numbers, one record per step (a resumed run may have logged a step twice)."""
    evals = {}
    for line in log.read_text().splitlines() if log.is_file() else []:
        rec = json.loads(line) if line.strip() else {}
        if "eval" in rec:
            evals[rec["step"]] = {"step": rec["step"], **rec["eval"]}
    return _merge_history(list(evals.values()))


def _acquire_lock(out: Path) -> Path:
    """One trainer per run folder: two would interleave checkpoints and logs."""
    lock = out / "train.lock"
    if lock.is_file():
        try:
            pid = int(lock.read_text().strip())
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            pass  # stale lock from a run that died
        except PermissionError:
            raise RuntimeError(f"{out} is in use by another training process (PID {lock.read_text().strip()})")
        else:
            if pid != os.getpid():
                raise RuntimeError(f"{out} is in use by another training process (PID {pid}); stop it first")
    lock.write_text(str(os.getpid()))
    return lock


def main_train(args) -> int:
    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    train(args.config, args.out, data_root=args.data_root, max_steps=args.max_steps, minutes=args.minutes,
          device=args.device, init=args.init, threads=args.threads, log=log)
    return 0
