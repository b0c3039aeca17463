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

from ..io import atomic_write_bytes, atomic_write_text, list_images
from ..schedule import alphas_cumprod

SECTIONS = ("data", "optim", "run")


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
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config {str(path)!r} does not exist")
        try:
            raw = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid TOML ({e}); see configs/prior.toml for the format") from None
        flat: dict = {}
        for key, value in raw.items():
            if key == "architecture":
                flat["architecture"] = value
            elif isinstance(value, dict):
                if key not in SECTIONS:
                    raise ValueError(
                        f"{path}: unknown section [{key}]; the sections are [architecture], [{'], ['.join(SECTIONS)}]"
                    )
                flat.update(value)
            else:
                flat[key] = value
        unknown = set(flat) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown training settings {sorted(unknown)}")
        defaults = cls()
        for key, value in flat.items():  # each setting has its default's type (ints pass for floats)
            want = type(getattr(defaults, key))
            ok = isinstance(value, want) and not (want is not bool and isinstance(value, bool))
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                flat[key], ok = float(value), True
            if not ok:
                raise ValueError(
                    f"{path}: {key} = {value!r} must be {want.__name__} (like its default {getattr(defaults, key)!r})"
                )
        cfg = cls(**flat)
        if cfg.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"{path}: lr_schedule must be 'constant' or 'cosine', got {cfg.lr_schedule!r}")
        bad = [
            f"{k} = {getattr(cfg, k)}"
            for k in ("crop", "batch", "eval_every", "log_every", "checkpoint_every")
            if getattr(cfg, k) < 1
        ]
        bad += [f"{k} = {getattr(cfg, k)}" for k in ("lr", "grad_clip") if not getattr(cfg, k) > 0]
        bad += [
            f"{k} = {getattr(cfg, k)}"
            for k in ("max_steps", "warmup", "weight_decay", "lr_min", "threads")
            if getattr(cfg, k) < 0
        ]
        if not 0 <= cfg.ema < 1 or not 0 <= cfg.uniform_fraction <= 1:
            bad.append(f"ema = {cfg.ema} and uniform_fraction = {cfg.uniform_fraction} must lie in [0, 1)/[0, 1]")
        if len(cfg.weights) != len(cfg.folders) or any(w < 0 for w in cfg.weights) or not sum(cfg.weights) > 0:
            bad.append(f"weights = {cfg.weights}: one non-negative weight per folder ({len(cfg.folders)})")
        if bad:
            raise ValueError(f"{path}: out of range: {'; '.join(bad)}")
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
            files = list_images(base, recursive=True)
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
            patch = img[y : y + c, x : x + c]
            patch = np.rot90(patch, int(rng.integers(4)))
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

    from ..io import file_sha256
    from .base import LINEAR_SCHEDULE
    from .compact import CompactConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in net.state_dict().items()}
    atomic_write_bytes(out_dir / "weights.safetensors", save(state))
    cfg = CompactConfig.from_dict(arch)
    spec = {
        "format": "dig2dig",
        "name": extra.get("name", "dig2dig-compact"),
        "architecture": cfg.to_dict(),
        "channels": cfg.in_channels,
        "spatial_multiple": cfg.spatial_multiple,
        "weights": "weights.safetensors",
        "sha256": file_sha256(out_dir / "weights.safetensors"),
        "dtype": "float16",
        "schedule": dict(LINEAR_SCHEDULE),
        "prediction": "eps",
        "data_range": [-1.0, 1.0],
        "parameters": sum(p.numel() for p in net.parameters()),
        "extra": extra,
    }
    atomic_write_text(out_dir / "spec.json", json.dumps(spec, indent=2))
    return out_dir


class Trainer:
    """One training run in a run folder, in the steps a reader looks for: :meth:`resume` (from the
    folder's checkpoint), :meth:`warm_start` (from exported weights, possibly of a smaller network),
    :meth:`step` (one optimiser update), :meth:`evaluate_and_export` (check set, best weights out) and
    :meth:`save_checkpoint`; :meth:`run` strings them together."""

    def __init__(
        self,
        cfg: TrainConfig,
        out: Path,
        *,
        data_root: str | None = None,
        device: str | None = None,
        config_path: str | Path = "",
        log=print,
    ):
        from .compact import CompactConfig, CompactUNet
        from .evaluate import load_gray_folder
        from .loaders import check_device

        self.cfg, self.out, self.log, self.config_path = cfg, Path(out), log, str(config_path)
        if self.out.exists() and not self.out.is_dir():
            raise NotADirectoryError(20, f"--out {str(self.out)!r} is a file; give a folder for the run", str(self.out))
        self.dev = check_device(device)
        root = _data_root(cfg, data_root)
        self.data = LumaCrops(root, cfg.folders, cfg.weights, cfg.exclude, cfg.crop)
        self.check = load_gray_folder(root / cfg.check_folder) if cfg.check_folder else {}
        log(f"data: {'; '.join(self.data.names)}; check set: {len(self.check)} images; device {self.dev}")
        self.arch = CompactConfig.from_dict(cfg.architecture)
        self.net = CompactUNet(self.arch).to(self.dev)
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.ab = alphas_cumprod()
        self.ab_t = torch.from_numpy(self.ab).float().to(self.dev)
        self.best_key = f"psnr_{int(cfg.eval_sigmas[len(cfg.eval_sigmas) // 2])}"  # the model-selection metric
        self.step_count, self.best, self.wall, self.opt_steps = 0, -math.inf, 0.0, 0
        self.runs: list[dict] = []  # provenance of earlier runs this one continues (warm starts)
        self.history: list[dict] = []  # check-set numbers of those runs
        self.rng = np.random.default_rng(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.last = self.out / "last.pt"
        self.out.mkdir(parents=True, exist_ok=True)  # only once everything above is known to be usable

    # --- starting points ---------------------------------------------------------------------
    def resume(self) -> bool:
        """Continue from the run folder's checkpoint, if there is one."""
        if not self.last.is_file():
            return False
        ck = torch.load(self.last, map_location=self.dev, weights_only=False)
        self.net.load_state_dict(ck["net"])
        self.ema.load_state_dict(ck["ema"])
        self.opt.load_state_dict(ck["opt"])
        self.step_count, self.best, self.wall = ck["step"], ck["best"], ck.get("wall", 0.0)
        self.opt_steps, self.runs = ck.get("opt_steps", self.step_count), ck.get("runs", [])
        self.history = ck.get("history", [])
        self.rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        self.log(
            f"resumed from {self.last} at step {self.step_count} (best check PSNR {self.best:.3f} dB, "
            f"{self.wall / 3600:.2f} h trained)"
        )
        return True

    def warm_start(self, init: str | Path) -> None:
        """Start from exported weights (weights and EMA; the optimiser starts fresh).  Weights of a
        smaller configuration are grown into this one with the same output (:meth:`CompactUNet.load_grown`)."""
        from .compact import CompactConfig
        from .loaders import load_dig2dig_folder

        src = load_dig2dig_folder(init)
        assert src.module is not None  # the loader builds an nn.Module
        if CompactConfig.from_dict(src.spec.architecture) == self.arch:
            self.net.load_state_dict(src.module.state_dict())
        else:
            try:
                self.net.load_grown(src.module.state_dict())
            except ValueError as e:
                raise ValueError(
                    f"--init {init} has architecture {src.spec.architecture}, which cannot grow into "
                    f"the config's {self.arch.to_dict()}: {e}"
                ) from None
            self.log(f"grown from {src.spec.architecture} to {self.arch.to_dict()} (same output at the start)")
        self.ema.load_state_dict(self.net.state_dict())
        extra = src.spec.extra
        self.step_count = int(extra.get("trained_steps", 0))
        self.wall = float(extra.get("train_wall_hours", 0.0)) * 3600
        self.runs = list(
            extra.get("runs")
            or [
                {"config": extra.get("config"), "steps": [0, self.step_count], "wall_hours": round(self.wall / 3600, 3)}
            ]
        )
        self.history = list(extra.get("check_history") or [{"step": self.step_count, **extra.get("check_psnr", {})}])
        self.best = float(extra.get("check_psnr", {}).get(self.best_key, -math.inf))
        self.log(f"initialised from {init} (trained {self.step_count} steps); optimiser state starts fresh")

    # --- one update ---------------------------------------------------------------------------
    def step(self) -> dict:
        """One optimiser update on a fresh batch; returns the loss, learning rate and gradient norm."""
        cfg, dev = self.cfg, self.dev
        x0 = torch.from_numpy(self.data.batch(self.rng, cfg.batch)).to(dev)
        t = torch.from_numpy(sample_timesteps(self.rng, cfg.batch, cfg, self.ab)).to(dev)
        noise = torch.randn_like(x0)
        a = self.ab_t[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        lr = cfg.lr_at(self.step_count, self.opt_steps)
        for g in self.opt.param_groups:
            g["lr"] = lr
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            pred = self.net(xt, t)
        loss = torch.mean((pred.float() - noise) ** 2)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        self.opt.step()
        decay = min(cfg.ema, (1 + self.step_count) / (10 + self.step_count))
        with torch.no_grad():
            for pe, pn in zip(self.ema.parameters(), self.net.parameters()):
                pe.lerp_(pn, 1 - decay)
        self.step_count += 1
        self.opt_steps += 1
        return {"loss": loss.item(), "lr": lr, "grad_norm": float(gn)}

    # --- check and export -------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """The EMA weights' check-set PSNR at each σ."""
        from .base import Denoiser, PriorSpec
        from .evaluate import denoise_scores

        a = self.arch
        den = Denoiser(self.ema, PriorSpec("dig2dig", a.to_dict(), a.in_channels, a.spatial_multiple), module=self.ema)
        return {f"psnr_{int(s.sigma)}": round(s.psnr, 4) for s in denoise_scores(den, self.check, self.cfg.eval_sigmas)}

    def evaluate_and_export(self) -> dict:
        """Score the EMA weights; when the model-selection PSNR improves, export them to ``<out>/best``."""
        cfg, step = self.cfg, self.step_count
        scores = self.evaluate()
        rec = {"step": step, "eval": scores, "wall_h": round(self.wall / 3600, 4)}
        if scores[self.best_key] > self.best:
            self.best = scores[self.best_key]
            done = self.runs[-1]["steps"][1] if self.runs else 0
            this_run_h = (self.wall - 3600 * sum(r.get("wall_hours", 0) for r in self.runs)) / 3600
            export_prior(
                self.ema,
                self.arch.to_dict(),
                self.out / "best",
                {
                    "trained_steps": step,
                    "train_wall_hours": round(self.wall / 3600, 3),
                    "check_set": cfg.check_folder,
                    "check_psnr": scores,
                    "training_folders": cfg.folders,
                    "crop": cfg.crop,
                    "batch": cfg.batch,
                    "objective": "eps-MSE, linear beta schedule, mixed uniform/log-normal timesteps",
                    "config": self.config_path,
                    "check_history": _merge_history(
                        self.history, _log_evals(self.out / "log.jsonl"), [{"step": step, **scores}]
                    ),
                    "runs": self.runs
                    + [{"config": self.config_path, "steps": [done, step], "wall_hours": round(this_run_h, 3)}],
                },
            )
            rec["exported"] = True
        return rec

    def save_checkpoint(self) -> None:
        import io

        buf = io.BytesIO()
        torch.save(
            {
                "net": self.net.state_dict(),
                "ema": self.ema.state_dict(),
                "opt": self.opt.state_dict(),
                "step": self.step_count,
                "opt_steps": self.opt_steps,
                "runs": self.runs,
                "history": self.history,
                "best": self.best,
                "wall": self.wall,
                "rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "config": self.cfg.__dict__,
            },
            buf,
        )
        atomic_write_bytes(self.last, buf.getvalue())

    # --- the loop ---------------------------------------------------------------------------------
    def run(self, minutes: float | None = None) -> Path:
        """Train to ``max_steps`` (or for ``minutes``), logging, checkpointing and exporting as configured."""
        cfg = self.cfg
        self.log(
            f"compact UNet {self.arch.to_dict()}: "
            f"{sum(p.numel() for p in self.net.parameters()) / 1e6:.2f} M parameters"
        )
        lock = _acquire_lock(self.out)
        t_run = time.time()
        losses: list[float] = []
        try:
            with open(self.out / "log.jsonl", "a") as logf:

                def write(rec: dict) -> None:
                    logf.write(json.dumps(rec) + "\n")
                    logf.flush()
                    self.log(json.dumps(rec))

                while self.step_count < cfg.max_steps:
                    if minutes is not None and time.time() - t_run > minutes * 60:
                        self.log(f"time budget of {minutes} min reached")
                        break
                    t0 = time.time()
                    upd = self.step()
                    self.wall += time.time() - t0
                    losses.append(upd["loss"])
                    step = self.step_count
                    if step % cfg.log_every == 0:
                        write(
                            {
                                "step": step,
                                "loss": round(float(np.mean(losses)), 6),
                                "lr": upd["lr"],
                                "grad_norm": round(upd["grad_norm"], 4),
                                "wall_h": round(self.wall / 3600, 4),
                                "s_per_step": round(self.wall / max(step, 1), 3),
                            }
                        )
                        losses.clear()
                    if step % cfg.checkpoint_every == 0:
                        self.save_checkpoint()
                    if self.check and step % cfg.eval_every == 0:
                        write(self.evaluate_and_export())
        finally:
            self.save_checkpoint()
            lock.unlink(missing_ok=True)
        return self.out


def train(
    config_path: str | Path,
    out: str | Path,
    *,
    data_root: str | None = None,
    max_steps: int | None = None,
    minutes: float | None = None,
    device: str | None = None,
    init: str | None = None,
    threads: int | None = None,
    log=print,
) -> Path:
    """Train (or resume) the run in ``out``; ``init`` warm-starts a new run from exported weights."""
    cfg = TrainConfig.from_toml(config_path)
    if max_steps is not None:
        cfg.max_steps = max_steps
    if threads:
        cfg.threads = threads
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    existed = Path(out).exists()
    trainer = Trainer(cfg, Path(out), data_root=data_root, device=device, config_path=config_path, log=log)
    try:
        if not trainer.resume() and init:
            trainer.warm_start(init)
    except BaseException:
        if not existed:  # a refused start leaves no empty run folder behind
            try:
                Path(out).rmdir()
            except OSError:
                pass
        raise
    return trainer.run(minutes)


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
            raise RuntimeError(
                f"{out} is in use by another training process (PID {lock.read_text().strip()})"
            ) from None
        else:
            if pid != os.getpid():
                raise RuntimeError(f"{out} is in use by another training process (PID {pid}); stop it first")
    lock.write_text(str(os.getpid()))
    return lock


def main_train(args) -> int:
    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    train(
        args.config,
        args.out,
        data_root=args.data_root,
        max_steps=args.max_steps,
        minutes=args.minutes,
        device=args.device,
        init=args.init,
        threads=args.threads,
        log=log,
    )
    return 0
