"""The compact prior: architecture, export/load round trip, the denoising check, the trainer."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dig2dig.prior import load_prior
from dig2dig.prior.compact import CompactConfig, CompactUNet
from dig2dig.prior.evaluate import denoise_scores, timestep_for_sigma
from dig2dig.prior.train import LumaCrops, TrainConfig, export_prior, sample_timesteps, train
from dig2dig.schedule import alphas_cumprod

from .conftest import smooth_image

SMALL = {"base": 16, "mults": [1, 2], "blocks": [1, 1], "head_channels": 16, "groups": 8}


def test_any_multiple_size_in_same_size_out():
    cfg = CompactConfig.from_dict(SMALL)
    net = CompactUNet(cfg).eval()
    assert cfg.spatial_multiple == 4
    with torch.no_grad():
        for hw in ((36, 52), (8, 8), (64, 20)):
            assert net(torch.randn(2, 1, *hw), torch.tensor([3, 900])).shape == (2, 1, *hw)


def test_export_and_load_round_trip_checks_sha(tmp_path):
    net = CompactUNet(CompactConfig.from_dict(SMALL)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.02)
    export_prior(net, SMALL, tmp_path / "p", {"name": "small"})
    den = load_prior(tmp_path / "p")
    assert den.spec.format == "dig2dig" and den.channels == 1 and den.spatial_multiple == 4
    x = torch.randn(1, 1, 12, 16)
    with torch.no_grad():
        ref = net.half().float()(x, torch.tensor([10]))
    torch.testing.assert_close(den.eps(x, 10), ref, atol=1e-5, rtol=1e-4)
    spec = json.loads((tmp_path / "p" / "spec.json").read_text())
    spec["sha256"] = "0" * 64
    (tmp_path / "p" / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="sha256"):
        load_prior(tmp_path / "p")


def test_sigma_to_timestep_mapping():
    ab = alphas_cumprod()
    assert [timestep_for_sigma(ab, s) for s in (15, 25, 50)] == [32, 56, 114]
    for s in (15, 25, 50):
        t = timestep_for_sigma(ab, s)
        assert np.sqrt((1 - ab[t]) / ab[t]) * 127.5 == pytest.approx(s, rel=0.005)


def test_prior_eval_command_on_two_tiny_images(tmp_path, capsys):
    import cv2

    from dig2dig.cli import main

    net = CompactUNet(CompactConfig.from_dict(SMALL)).eval()
    export_prior(net, SMALL, tmp_path / "p", {})
    (tmp_path / "imgs").mkdir()
    for k in range(2):
        cv2.imwrite(str(tmp_path / "imgs" / f"{k}.png"), np.round(smooth_image(30, 42, k) * 255).astype(np.uint8))
    assert (
        main(
            [
                "prior",
                "eval",
                "--images",
                str(tmp_path / "imgs"),
                "--sigma",
                "25",
                "--prior",
                str(tmp_path / "p"),
                "--per-image",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "sigma 25: t=56" in out and "0.png" in out


def test_a_perfect_denoiser_scores_high_and_identity_scores_the_noise_level():
    from dig2dig.prior.base import Denoiser, PriorSpec

    imgs = {"a": smooth_image(32, 32, 1).astype(np.float64) * 255}
    ab = alphas_cumprod()

    class Oracle(torch.nn.Module):  # knows the clean image: eps = (x_t - sqrt(ab) x0) / sqrt(1-ab)
        def forward(self, x, t):
            a = float(ab[int(t[0])])
            x0 = torch.from_numpy(imgs["a"] / 127.5 - 1).float()[None, None]
            return (x - a**0.5 * x0) / (1 - a) ** 0.5

    class Zero(torch.nn.Module):  # predicts no noise: x̂0 = the noisy image
        def forward(self, x, t):
            return torch.zeros_like(x)

    spec = PriorSpec("test", {}, 1, 1)
    assert denoise_scores(Denoiser(Oracle(), spec), imgs, [25])[0].psnr > 60
    noisy = denoise_scores(Denoiser(Zero(), spec), imgs, [25])[0].psnr
    assert noisy == pytest.approx(20 * np.log10(255 / 25), abs=0.5)


def test_timestep_sampler_mixes_uniform_and_low_noise():
    cfg = TrainConfig()
    t = sample_timesteps(np.random.default_rng(0), 20000, cfg, alphas_cumprod())
    assert t.min() >= 0 and t.max() <= 999
    low = np.mean((t >= 20) & (t <= 150))
    assert 0.3 < low < 0.7  # uniform alone would give 0.13


def test_training_loop_runs_and_the_loss_decreases(tmp_path):
    import cv2

    data = tmp_path / "data" / "train"
    check = tmp_path / "data" / "check"
    data.mkdir(parents=True)
    check.mkdir()
    for k in range(4):
        cv2.imwrite(str(data / f"{k}.png"), np.round(smooth_image(48, 48, k) * 255).astype(np.uint8))
    cv2.imwrite(str(check / "c.png"), np.round(smooth_image(32, 32, 9) * 255).astype(np.uint8))
    arch = "\n".join(f"{k} = {json.dumps(v)}" for k, v in SMALL.items())
    cfg = tmp_path / "t.toml"
    cfg.write_text(f"""[architecture]\n{arch}\n[data]\nroot = "{tmp_path / "data"}"\nfolders = ["train"]
weights = [1.0]\nexclude = ["check"]\ncheck_folder = "check"\ncrop = 16\nbatch = 8
[optim]\nlr = 2e-3\nwarmup = 1\nmax_steps = 100\nuniform_fraction = 1.0
[run]\nlog_every = 25\neval_every = 50\ncheckpoint_every = 50\neval_sigmas = [25]\n""")
    root = str(tmp_path / "data")  # explicit: $DIG2DIG_SHARED would otherwise take precedence
    out = train(cfg, tmp_path / "run", data_root=root, log=lambda m: None)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 4 and losses[-1] < 0.8 * losses[0], losses
    assert any("eval" in r for r in log) and (out / "best" / "spec.json").is_file()
    # resuming continues from the checkpoint
    train(cfg, tmp_path / "run", data_root=root, max_steps=105, log=lambda m: None)
    assert torch.load(out / "last.pt", weights_only=False)["step"] == 105
    # a warm start from the export continues its step count and keeps the earlier run on record
    best_steps = json.loads((out / "best" / "spec.json").read_text())["extra"]["trained_steps"]
    train(cfg, tmp_path / "run2", data_root=root, init=str(out / "best"), max_steps=best_steps + 5, log=lambda m: None)
    ck = torch.load(tmp_path / "run2" / "last.pt", weights_only=False)
    assert ck["step"] == best_steps + 5 and ck["opt_steps"] == 5
    assert [r["steps"] for r in ck["runs"]] == [[0, best_steps]]
    hist = json.loads((out / "best" / "spec.json").read_text())["extra"]["check_history"]
    assert [h["step"] for h in hist] == sorted({50, 100} & {h["step"] for h in hist}) and hist[-1]["step"] == best_steps
    assert ck["history"] == hist


def test_training_refuses_the_check_set(tmp_path):
    (tmp_path / "set").mkdir()
    import cv2

    cv2.imwrite(str(tmp_path / "set" / "x.png"), np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="excluded"):
        LumaCrops(tmp_path, ["set"], [1.0], ["set"], 16)


def test_lr_schedule_warms_up_after_a_warm_start_and_decays_by_cosine():
    cfg = TrainConfig(lr=1e-3, warmup=10, lr_schedule="cosine", decay_start=100, max_steps=200, lr_min=1e-4)
    # a warm start at step 100 has a fresh optimiser: the warm-up counts its own updates
    assert cfg.lr_at(100, 0) == pytest.approx(1e-4)
    assert cfg.lr_at(100, 9) == pytest.approx(1e-3)
    assert cfg.lr_at(150, 50) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    assert cfg.lr_at(200, 100) == pytest.approx(1e-4)
    lrs = [cfg.lr_at(s, s) for s in range(100, 201)]
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert TrainConfig(lr=1e-3, warmup=1).lr_at(10_000, 5) == 1e-3  # constant by default


def test_stage2_config_continues_stage1(tmp_path):
    root = Path(__file__).resolve().parents[1] / "configs"
    one, two = TrainConfig.from_toml(root / "prior.toml"), TrainConfig.from_toml(root / "prior_stage2.toml")
    assert one.architecture == two.architecture and one.folders == two.folders and one.exclude == two.exclude
    assert two.lr_schedule == "cosine" and two.decay_start < two.max_steps
    bad = tmp_path / "bad.toml"
    bad.write_text('[optim]\nlr_schedule = "step"\n')
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig.from_toml(bad)


def test_a_grown_network_computes_what_the_smaller_one_did():
    small = CompactUNet(CompactConfig.from_dict(SMALL)).eval()
    with torch.no_grad():
        for p in small.parameters():
            p.normal_(0, 0.05)
    big = CompactUNet(CompactConfig.from_dict({**SMALL, "blocks": [2, 3], "stem": 4, "head": 8})).eval()
    big.load_grown(small.state_dict())
    x, t = torch.randn(2, 1, 20, 28), torch.tensor([5, 700])
    with torch.no_grad():
        torch.testing.assert_close(big(x, t), small(x, t), atol=0, rtol=0)
        # once the new parts have weights of their own, the output changes
        big.head_out.weight.normal_(0, 0.1)
        assert (big(x, t) - small(x, t)).abs().max() > 1e-3
    wider = CompactUNet(CompactConfig.from_dict({**SMALL, "base": 32}))
    with pytest.raises(ValueError, match="cannot grow"):
        wider.load_grown(small.state_dict())
    with pytest.raises(ValueError, match="positive sizes"):
        CompactConfig.from_dict({**SMALL, "head": -1})
