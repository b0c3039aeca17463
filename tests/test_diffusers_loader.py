"""diffusers UNet2DModel folders load offline, strictly, and answer eps at DDPM timesteps."""

import json

import pytest
import torch

from dig2dig.errors import CheckpointError
from dig2dig.prior import load_prior

diffusers = pytest.importorskip("diffusers")


def _tiny_unet(out_channels=3):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=out_channels,
        layers_per_block=1,
        block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()


def test_unet_folder_and_pipeline_folder(tmp_path):
    unet = _tiny_unet(out_channels=6)  # learned variance: eps is the first 3 channels
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    sched = {
        "_class_name": "DDPMScheduler",
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
    }
    (tmp_path / "pipe" / "scheduler").mkdir()
    (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched))
    for folder in (tmp_path / "pipe" / "unet", tmp_path / "pipe"):
        den = load_prior(folder)
        assert den.spec.format == "diffusers" and den.channels == 3 and den.spatial_multiple == 2
        x = torch.randn(2, 3, 8, 12)
        with torch.no_grad():
            ref = unet(x, torch.tensor([500, 500])).sample[:, :3]
        torch.testing.assert_close(den.eps(x, 500), ref)


def test_scheduler_mismatch_and_bad_weights_are_errors(tmp_path):
    _tiny_unet().save_pretrained(tmp_path / "p" / "unet")
    (tmp_path / "p" / "scheduler").mkdir()
    (tmp_path / "p" / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon"})
    )
    with pytest.raises(CheckpointError, match="beta_schedule"):
        load_prior(tmp_path / "p")
    # weights that do not fit the config: a hard error naming the keys, never random init
    from safetensors.torch import load_file, save_file

    w = tmp_path / "p" / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(w))
    sd.pop("conv_out.bias")
    save_file(sd, str(w))
    with pytest.raises(CheckpointError, match="conv_out.bias"):
        load_prior(tmp_path / "p" / "unet")


def test_folder_without_model_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="neither"):
        load_prior(tmp_path)
