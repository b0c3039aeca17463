"""How the prior runs: tiles (positions, blending, auto choice), precision, and the GPU check script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dig2dig
from dig2dig.prior.base import Denoiser, PriorSpec
from dig2dig.prior.execution import ExecutedDenoiser, choose_tile, tile_positions, tiled_eps

from .conftest import smooth_image

REPO = Path(__file__).resolve().parents[1]


def test_tile_positions_cover_the_image_with_the_overlap():
    assert tile_positions(100, 128, 32) == [0]
    for size, tile, overlap in ((640, 256, 64), (481, 96, 24), (1000, 256, 0), (257, 256, 64)):
        pos = tile_positions(size, tile, overlap)
        assert pos[0] == 0 and pos[-1] + tile == size
        assert all(b - a <= tile - overlap for a, b in zip(pos, pos[1:]))  # at least the overlap is shared


class Pointwise(torch.nn.Module):
    def forward(self, x, t):
        return torch.tanh(x) * (1 + t.view(-1, 1, 1, 1) / 1000)


class Conv(torch.nn.Module):
    def __init__(self, out=1):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, out, 3, padding=1)

    def forward(self, x, t):
        return self.conv(x)


def _den(net, multiple=1, trained=None):
    return Denoiser(net, PriorSpec("test", {}, 1, multiple, trained_size=trained), module=net)


def test_tiles_of_a_pointwise_network_are_seamless_and_exact():
    den = _den(Pointwise())
    x = torch.randn(2, 1, 70, 90)
    ref = den.eps(x, torch.tensor([5, 900]))
    out = tiled_eps(den.eps, x, torch.tensor([5, 900]), 32, 8, 3)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


def _border_to_interior(diff: np.ndarray, tile: int, overlap: int, band: int = 2) -> float:
    """Mean of ``diff`` within ``band`` pixels of the tile edges inside the image, over its mean elsewhere."""
    near = []
    for size in diff.shape:
        pos = tile_positions(size, tile, overlap)
        edges = {p for p in pos if p > 0} | {p + tile for p in pos if p + tile < size}
        m = np.zeros(size, bool)
        for e in edges:
            m[max(0, e - band) : e + band] = True
        near.append(m)
    border = near[0][:, None] | near[1][None, :]
    assert border.any() and not border.all()
    return float(diff[border].mean() / diff[~border].mean())


def test_tiled_fusion_stays_close_and_has_no_seams(tiny_gray_prior):
    pair = [smooth_image(64, 64, 1), smooth_image(64, 64, 2)]
    whole = dig2dig.fuse(pair, steps=4, prior=tiny_gray_prior, tile="off")
    tiled = dig2dig.fuse(pair, steps=4, prior=tiny_gray_prior, tile=32, tile_overlap=8)
    assert tiled.config["prior_run"]["tile"] == 32 and whole.config["prior_run"]["tile"] is None
    diff = np.abs(tiled.luminance - whole.luminance)
    assert 0 < diff.mean() < 0.1  # a random tiny prior: tiles change the output, not the picture
    # Seams: DDFM's output is the prior's x̂0 (Dig2DIG's output weighs the sources with smoothed weights,
    # so tiles barely reach it), and two steps leave little time to blur an edge.  A seam is a larger
    # difference from the whole-image run along the tile edges than inside the tiles.
    ddfm = {
        tile: dig2dig.fuse(pair, method="ddfm", steps=2, prior=tiny_gray_prior, tile=tile, tile_overlap=8)
        for tile in ("off", 32)
    }
    blended = np.abs(ddfm[32].luminance - ddfm["off"].luminance)
    assert 0 < blended.mean() < 0.1
    assert _border_to_interior(blended, 32, 8) < 1.75  # 1.4 here; 2.1 with the overlaps averaged, unramped
    # the same measure sees the seam of tiles put side by side without an overlap to blend them in
    hard = dig2dig.fuse(pair, method="ddfm", steps=2, prior=tiny_gray_prior, tile=32, tile_overlap=0)
    assert _border_to_interior(np.abs(hard.luminance - ddfm["off"].luminance), 32, 0) > 3.0


def test_auto_tiles_fixed_size_priors_and_images_too_big_for_memory(tiny_gray_prior, monkeypatch):
    import dig2dig.prior.memory as mem

    fixed = _den(Conv(), multiple=8, trained=64)
    assert choose_tile(fixed, "auto", 64, 64) is None and choose_tile(fixed, "auto", 64, 128) == 64
    assert choose_tile(fixed, "off", 640, 640) is None and choose_tile(fixed, 96, 40, 40) == 96
    free = _den(Conv(8), multiple=8)
    assert choose_tile(free, "auto", 512, 512) is None
    monkeypatch.setattr(mem, "available_bytes", lambda device: 1)  # what is free now does not decide ...
    assert choose_tile(free, "auto", 512, 512) is None
    monkeypatch.setattr(mem, "total_bytes", lambda device: 4_000_000)  # ... half the device's memory does
    tile = choose_tile(free, "auto", 512, 512, tile_batch=4)
    assert tile is not None and tile % 8 == 0 and mem.forward_bytes(free, 4, tile, tile) <= 2_000_000
    monkeypatch.setattr(mem, "total_bytes", lambda device: 1)  # nothing fits: the smallest usable tile
    assert choose_tile(free, "auto", 512, 512) == 16


def test_fp32_on_the_cpu_is_the_plain_forward_and_half_precision_runs(tiny_gray_prior):
    x = torch.randn(1, 1, 32, 32)
    ref = tiny_gray_prior.eps(x, 300)
    assert torch.equal(ExecutedDenoiser(tiny_gray_prior).eps(x, 300), ref)
    for precision in ("bf16", "fp16"):
        out = ExecutedDenoiser(tiny_gray_prior, precision=precision).eps(x, 300)
        assert out.dtype == torch.float32 and out.shape == ref.shape
        assert (out - ref).abs().max() < 0.1 and not torch.equal(out, ref)


def _gpu_check(tmp_path, *args) -> str:
    out = tmp_path / "gpu.md"
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert out.with_suffix(".json").is_file()
    return out.read_text()


def test_the_gpu_check_runs_end_to_end_in_its_smoke_mode(tmp_path):
    table = _gpu_check(tmp_path)
    for needle in (
        "dig2dig-3 | adm-tiny | 24x16 | fp32 | 16 |",  # the ADM tiled at its trained size ...
        "dig2dig-3 | adm-tiny | 24x16 | fp32 | None |",  # ... and not
        "ddfm-3 | embedded",
        "ccf-3 | adm-tiny",
        "dig2dig-3 | embedded | 24x16 | bf16 |",
        "dig2dig-3 | adm-tiny | 24x16 | fp16 |",
        "max_batch 2 | embedded",
        "tiled | embedded | 48x32 |  | 32 |",
        "tiled | adm-tiny | 48x32 |  | 16 |",
    ):
        assert needle in table, needle
    assert "`python benchmarks/gpu_check.py --smoke`" in table


def test_the_gpu_check_measures_another_prior(tmp_path, tiny_gray_prior_path):
    table = _gpu_check(tmp_path, "--only", "4k", "--prior", str(tiny_gray_prior_path))
    assert f"`python benchmarks/gpu_check.py --smoke --only 4k --prior {tiny_gray_prior_path}`" in table
    rows = [line for line in table.splitlines() if line.startswith("| dig2dig")]
    assert len(rows) == 2 and "| adm-tiny | 48x32 |" in rows[0] and "| tiny_gray | 48x32 |  | 32 |" in rows[1], rows


def test_compile_builds_one_static_graph_per_shape(tiny_gray_prior, monkeypatch):
    """Dynamic shapes broke the DIG refresh's half-resolution forward (Inductor: 'Invalid ranges')."""
    import dig2dig.prior.execution as ex

    asked = []

    def fake_compile(net, **kw):
        asked.append(kw)
        return net

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(ex, "_COMPILED", {})
    run = ExecutedDenoiser(tiny_gray_prior, compile=True)
    assert asked == [{"dynamic": False}] and not run.exact


@pytest.mark.slow
def test_a_compiled_prior_fuses_like_the_eager_one(tiny_gray_prior):
    """End to end through Inductor (minutes on a CPU): full- and half-resolution forwards, two shapes."""
    a, b = smooth_image(48, 64, 1), smooth_image(48, 64, 2)
    eager = dig2dig.fuse([a, b], steps=2, prior=tiny_gray_prior)
    compiled = dig2dig.fuse([a, b], steps=2, prior=tiny_gray_prior, compile=True)
    assert compiled.config["prior_run"]["compiled"] and np.abs(compiled.image - eager.image).max() < 1e-4
