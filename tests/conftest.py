"""Shared test fixtures: the path to ../shared and tiny random priors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DIG2DIG_SHARED", REPO.parent / "shared")).resolve()
FIXTURES = SHARED / "fixtures"
DATA = SHARED / "data"

torch.set_num_threads(min(2, torch.get_num_threads()))


def _has_avx512() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return True


AVX512 = _has_avx512()


def kernel_tol(tol: float) -> float:
    """A reference-parity tolerance on this CPU.  The fixtures' tolerances were set on AVX-512 CPUs; on
    others (AVX2) oneDNN runs other convolution kernels, whose float sums come in another order, and the
    numbers differ at float-noise level (e.g. 2e-4 after 20 DDFM steps, where two runs of the reference
    itself differ by 1.2e-4): there the tolerance is 4× as wide, and at least 1e-6."""
    return tol if AVX512 else max(4 * tol, 1e-6)


def need(path: Path) -> Path:
    """Skip (with the reason) when the shared data folder is absent."""
    if not path.exists():
        pytest.skip(f"{path} not found; set DIG2DIG_SHARED to the shared data folder")
    return path


# a small guided-diffusion configuration, fast on a CPU: attention at 1/4 resolution (64 // 16); its
# "trained size" of 64 means that test images (at most 64 pixels a side) are not tiled
TINY_FLAGS = {
    "image_size": 64,
    "num_channels": 32,
    "num_res_blocks": 1,
    "channel_mult": "1,1,1,1",
    "attention_resolutions": "16",
    "num_head_channels": 8,
    "learn_sigma": True,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
}


def make_tiny_adm(tmp_path: Path, in_channels: int = 3, seed: int = 0, name: str = "tiny") -> Path:
    """A random-weight ADM checkpoint (+ its spec sidecar) written to ``tmp_path``."""
    from dig2dig.prior.adm import ADMConfig, ADMUNet

    flags = dict(TINY_FLAGS, in_channels=in_channels, out_channels=2 * in_channels)
    torch.manual_seed(seed)
    net = ADMUNet(ADMConfig.from_guided_diffusion_flags(flags))
    with torch.no_grad():  # scale weights down so the random net's output stays tame
        for p in net.parameters():
            p.mul_(0.5)
    path = tmp_path / f"{name}.pt"
    torch.save(net.state_dict(), path)
    (tmp_path / f"{name}.pt.json").write_text(json.dumps(flags))
    return path


@pytest.fixture(scope="session")
def tiny_rgb_prior_path(tmp_path_factory) -> Path:
    return make_tiny_adm(tmp_path_factory.mktemp("prior_rgb"), in_channels=3)


@pytest.fixture(scope="session")
def tiny_gray_prior_path(tmp_path_factory) -> Path:
    return make_tiny_adm(tmp_path_factory.mktemp("prior_gray"), in_channels=1, name="tiny_gray")


@pytest.fixture(scope="session")
def tiny_prior(tiny_rgb_prior_path):
    from dig2dig.prior import load_prior

    return load_prior(tiny_rgb_prior_path)


@pytest.fixture(scope="session")
def tiny_gray_prior(tiny_gray_prior_path):
    from dig2dig.prior import load_prior

    return load_prior(tiny_gray_prior_path)


def smooth_image(h: int, w: int, seed: int, color: bool = False) -> np.ndarray:
    """A deterministic smooth test image in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    chans = []
    for _ in range(3 if color else 1):
        a, b, c = rng.uniform(1, 6, 3)
        chans.append(0.5 + 0.4 * np.sin(a * xx + b * yy + c) * np.cos(b * xx - a * yy))
    img = np.stack(chans, -1) if color else chans[0]
    return np.clip(img, 0, 1).astype(np.float32)
