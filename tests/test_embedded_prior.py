"""The prior shipped inside the package: integrity, size, and use as the default."""

import json

import numpy as np
import pytest
import torch

import dig2dig
from dig2dig.io import file_sha256
from dig2dig.prior import embedded_available, load_prior
from dig2dig.prior.embedded import EMBEDDED_DIR

from .conftest import smooth_image

pytestmark = pytest.mark.skipif(not embedded_available(), reason="no embedded prior in this checkout")


def test_weights_match_their_sha256_and_spec():
    spec = json.loads((EMBEDDED_DIR / "spec.json").read_text())
    weights = EMBEDDED_DIR / spec["weights"]
    assert file_sha256(weights) == spec["sha256"]
    assert weights.stat().st_size <= 30 * 2**20
    assert spec["parameters"] <= 15_000_000
    assert spec["prediction"] == "eps" and spec["schedule"]["kind"] == "linear"
    for key in ("trained_steps", "train_wall_hours", "check_psnr", "training_folders"):
        assert key in spec["extra"], key
    den = load_prior(None)
    assert den.spec.sha256 == spec["sha256"] and den.channels == 1
    assert sum(p.numel() for p in den.module.parameters()) == spec["parameters"]


def test_forward_and_fusion_at_odd_size_return_the_same_size():
    den = load_prior(None)
    m = den.spatial_multiple
    x = torch.randn(1, 1, 2 * m, 3 * m)
    assert den.eps(x, 500).shape == x.shape
    r = dig2dig.fuse([smooth_image(37, 53, 1), smooth_image(37, 53, 2)], steps=2)
    assert r.image.shape == (37, 53) and r.config["prior"]["sha256"] == den.spec.sha256


def test_shipped_prior_denoises():
    """A weak but real check: at sigma 25 the one-step x̂0 beats the noisy input by a wide margin."""
    from dig2dig.prior.evaluate import denoise_scores

    den = load_prior(None)
    img = {"a": smooth_image(64, 64, 3).astype(np.float64) * 255}
    s = denoise_scores(den, img, [25])[0]
    assert s.psnr > 20 * np.log10(255 / 25) + 6
