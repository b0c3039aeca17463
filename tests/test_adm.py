"""The ADM UNet against the guided-diffusion fixtures, and the checkpoint loaders' strictness."""

import json

import numpy as np
import pytest
import torch

from dig2dig.errors import CheckpointError
from dig2dig.prior import load_prior
from dig2dig.prior.adm import ADMConfig, ADMUNet

from .conftest import FIXTURES, TINY_FLAGS, make_tiny_adm, need


@pytest.mark.parametrize("weights", ["tiny_adm.pt", "tiny_adm.safetensors"])
def test_tiny_adm_reproduces_reference_outputs(weights):
    adm = need(FIXTURES / "adm")
    den = load_prior(adm / weights, spec=adm / "tiny_adm_config.json")
    io = np.load(adm / "tiny_adm_io.npz")
    with torch.no_grad():
        for case in "abcd":
            y = den.net(torch.from_numpy(io[f"x_{case}"]), torch.from_numpy(io[f"t_{case}"]))
            np.testing.assert_allclose(y.numpy(), io[f"y_{case}"], atol=1e-5, err_msg=f"case {case}")
            eps = den.eps(torch.from_numpy(io[f"x_{case}"]), torch.from_numpy(io[f"t_{case}"]))
            np.testing.assert_allclose(eps.numpy(), io[f"y_{case}"][:, :3], atol=1e-5)


def test_timestep_embedding_matches_reference():
    from dig2dig.prior.adm import timestep_embedding

    io = np.load(need(FIXTURES / "adm" / "tiny_adm_io.npz"))
    for case in "abcd":
        emb = timestep_embedding(torch.from_numpy(io[f"t_{case}"]), 32)
        np.testing.assert_allclose(emb.numpy(), io[f"temb_sinusoid_{case}"], atol=1e-6)


def test_adm256_key_and_shape_list_is_exact():
    ref = json.loads(need(FIXTURES / "adm" / "adm256_uncond_keys.json").read_text())
    cfg = ADMConfig.from_guided_diffusion_flags(ref["config"])
    with torch.device("meta"):
        net = ADMUNet(cfg)
    ours = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    assert ours == [(e["key"], e["shape"]) for e in ref["keys"]]
    assert sum(p.numel() for p in net.parameters()) == ref["total_params"]
    # and the architecture is recovered from the shapes alone
    state = {e["key"]: torch.empty(e["shape"], device="meta") for e in ref["keys"]}
    assert ADMConfig.infer_from_state_dict(state, num_head_channels=64) == cfg


def test_inferred_config_of_tiny_fixture_matches_its_flags():
    adm = need(FIXTURES / "adm")
    cfg = ADMConfig.from_guided_diffusion_flags(
        json.loads((adm / "tiny_adm_config.json").read_text())["create_model_kwargs"]
    )
    sd = torch.load(adm / "tiny_adm.pt", weights_only=True)
    assert ADMConfig.infer_from_state_dict(sd, num_heads=4, num_head_channels=8) == cfg


def _save(tmp_path, sd, name="ck"):
    p = tmp_path / f"{name}.pt"
    torch.save(sd, p)
    (tmp_path / f"{name}.pt.json").write_text(json.dumps(TINY_FLAGS))
    return p


def test_missing_extra_and_misshaped_keys_are_named(tmp_path):
    good = torch.load(make_tiny_adm(tmp_path), weights_only=True)
    sd = dict(good)
    del sd["out.2.bias"]
    with pytest.raises(CheckpointError, match=r"missing key\(s\): out\.2\.bias"):
        load_prior(_save(tmp_path, sd, "missing"))
    sd = dict(good, **{"extra.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): extra\.weight"):
        load_prior(_save(tmp_path, sd, "extra"))
    sd = dict(good)
    sd["middle_block.0.in_layers.2.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match=r"mis-shaped key\(s\): middle_block\.0\.in_layers\.2\.bias"):
        load_prior(_save(tmp_path, sd, "shape"))


def test_spec_that_contradicts_the_weights_is_an_error(tmp_path):
    p = make_tiny_adm(tmp_path)
    (tmp_path / "tiny.pt.json").write_text(json.dumps(dict(TINY_FLAGS, num_channels=64)))
    with pytest.raises(CheckpointError, match="model_channels"):
        load_prior(p)


def test_unknown_head_layout_without_spec_is_an_error(tmp_path):
    p = make_tiny_adm(tmp_path)
    (tmp_path / "tiny.pt.json").unlink()
    with pytest.raises(CheckpointError, match="head layout"):
        load_prior(p)


def test_unreadable_and_foreign_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_prior(bad)
    other = tmp_path / "other.pt"
    torch.save({"linear.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(CheckpointError, match="not an ADM"):
        load_prior(other)
    with pytest.raises(FileNotFoundError):
        load_prior(tmp_path / "nope.pt")


def test_odd_sizes_need_padding_and_batches_take_per_item_timesteps(tiny_prior):
    x = torch.randn(2, 3, 16, 24)
    assert tiny_prior.eps(x, torch.tensor([999, 10])).shape == x.shape
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny_prior.eps(torch.randn(1, 3, 12, 16), 5)
    with pytest.raises(ValueError, match="expected a"):
        tiny_prior.eps(torch.randn(1, 1, 8, 8), 5)
