"""Dig2DIG: DIG weights and the weighted N-source guidance."""

import numpy as np
import pytest
import torch

import dig2dig
from dig2dig.guidance.dig import DIGGuidance, softmax_weights
from dig2dig.options import DDFMOptions, DIGOptions
from dig2dig.prior import embedded_available, load_prior
from dig2dig.sampler import Step
from dig2dig.schedule import power_grid

from .conftest import smooth_image

needs_prior = pytest.mark.skipif(not embedded_available(), reason="needs the embedded prior (a denoiser that works)")


def _structured(h=64, w=64, seed=0):
    rng = np.random.default_rng(seed)
    img = smooth_image(h, w, seed) * 0.6 + 0.2
    img[h // 4 : h // 2, w // 4 : 3 * w // 4] += 0.3 * (rng.random((h // 4, w // 2)) > 0.5)  # a textured patch
    return np.clip(img, 0, 1).astype(np.float32)


def _run_refreshes(sources, den, interval=2, steps=6, refreshes=2, **kw):
    """The first refreshes (steps 0, S, …): the state then holds that refresh's DIG weights."""
    grid = power_grid(steps, 2.0)
    g = DIGGuidance(
        [torch.from_numpy(s)[None, None] * 2 - 1 for s in sources],
        den,
        grid,
        DIGOptions.create({"interval": interval, **kw}),
        noise_seeds=[0],
    )
    state = g.initial_state(None)
    for k in range(0, refreshes * interval, interval):
        step = Step(k, len(grid), grid[k], grid[k + 1], 0.0, 0.0, None, None)
        state = g.refresh(state, step)
    return g, state


def test_softmax_weights_partition_of_unity_and_order():
    dig = torch.randn(3, 2, 1, 8, 8)
    w = softmax_weights(dig, 1.0, dig.abs().mean(dim=(0, 2, 3, 4), keepdim=True))
    torch.testing.assert_close(w.sum(0), torch.ones(2, 1, 8, 8))
    assert bool(((dig[0] > dig[1]) == (w[0] > w[1])).all())


@needs_prior
@pytest.mark.parametrize("preset", ["default", "soft"])
def test_weights_partition_of_unity_and_swap_symmetry(preset):
    den = load_prior(None)
    a, b = _structured(seed=1), _structured(seed=2)
    _, s_ab = _run_refreshes([a, b], den, preset=preset)
    _, s_ba = _run_refreshes([b, a], den, preset=preset)
    torch.testing.assert_close(s_ab.weights.sum(0), torch.ones_like(s_ab.weights[0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(s_ab.weights[0], s_ba.weights[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(s_ab.weights[1], s_ba.weights[0], atol=1e-5, rtol=0)
    w = s_ab.weights.float()
    if preset == "soft":  # limit 1: two-source weights stay within 0.12 … 0.88
        assert 0.11 < float(w.min()) and float(w.max()) < 0.89
    else:  # the default selects: most pixels go (almost) wholly to one source, smoothly in between
        assert float((w.max(0).values > 0.9).float().mean()) > 0.5
    assert float(w.std()) > 0.02  # never uniform


@needs_prior
@pytest.mark.parametrize("blend", ["pyramid", "pixel"])
@pytest.mark.parametrize("other", ["constant", "noise"])
def test_structure_outweighs_constant_or_noise_where_it_has_structure(other, blend):
    """Mid-gray with a checkerboard patch against a flat (or noise) source of the same brightness:
    once the refresh interval reaches the noise levels where the checkerboard emerges (t 360 → 40),
    the structured source takes most of the weight inside its patch."""
    den = load_prior(None)
    yy, xx = np.mgrid[0:64, 0:64]
    patch = np.zeros((64, 64), bool)
    patch[16:48, 16:48] = True
    a = np.full((64, 64), 0.5, np.float32)
    a[patch] += 0.3 * np.where((yy // 8 + xx // 8) % 2 == 0, 1, -1)[patch]
    rng = np.random.default_rng(1)
    b = (
        np.full_like(a, 0.5)
        if other == "constant"
        else np.clip(0.5 + 0.15 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
    )
    # smoothing far below the patch size: the gain is local
    _, state = _run_refreshes([a, b], den, refreshes=3, smooth=4, blend=blend)
    w = state.weights[:, 0, 0].float().numpy()
    assert w[0][patch].mean() > 0.8 > w[1][patch].mean()
    if blend == "pixel" or other == "noise":  # the pyramid's weights say where each source's detail comes from:
        # against a constant source, a's detail (the patch's, spread over the coarse bands) is all there is
        assert w[0][patch].mean() > w[0][~patch].mean()


@needs_prior
def test_three_sources_and_determinism():
    srcs = [_structured(40, 56, seed=k) for k in range(3)]
    r1 = dig2dig.fuse(srcs, method="dig2dig", steps=6, interval=2, seed=4, task="mef")
    r2 = dig2dig.fuse(srcs, method="dig2dig", steps=6, interval=2, seed=4, task="mef")
    assert r1.image.shape == (40, 56)
    np.testing.assert_array_equal(r1.image, r2.image)
    ws = [r["weights"] for r in r1.guidance["refreshes"] if "weights" in r]
    assert ws and ws[0].shape == (3, 40, 56)
    np.testing.assert_allclose(ws[-1].sum(0), 1.0, atol=2e-3)  # stored as float16


def test_equal_weights_reduce_to_the_release_ddfm_rule(tiny_gray_prior):
    """With equal weights and two sources the mixing is DDFM's F = (D·I + C·V)/(C + D)."""
    from dig2dig.guidance.ddfm import DDFMGuidance

    a, b = smooth_image(16, 16, 1), smooth_image(16, 16, 2)
    ta, tb = (torch.from_numpy(x)[None, None] * 2 - 1 for x in (a, b))
    f = torch.zeros_like(ta)
    dig = DIGGuidance([ta, tb], tiny_gray_prior, [999, 0], DIGOptions(weights="equal", blend="pixel"), noise_seeds=[0])
    ddfm = DDFMGuidance(ta, tb, DDFMOptions(mapping="release", rho=1e-12))
    fd, _ = dig.fuse_luma(f, dig.initial_state(f))
    fr, _ = ddfm.fuse_luma(f, ddfm.initial_state(f))
    # DDFM caps D at 2C and regularises (r + 1e-6)² instead of r² + 1e-6: compare where the cap
    # is inactive and the residuals are not tiny
    r_i, r_v = (f - tb).abs(), (f - ta).abs()  # release slots: I = texture (b), V = intensity (a)
    inactive = (r_v > 0.5 * r_i + 1e-3) & (r_i > 0.05) & (r_v > 0.05)
    torch.testing.assert_close(fd[inactive], fr[inactive], atol=1e-4, rtol=0)


def test_bad_options_are_errors(tiny_gray_prior):
    a = torch.zeros(1, 1, 16, 16)
    for kw, msg in (
        ({"distance": "cos"}, "distance"),
        ({"interval": 0}, "interval"),
        ({"temperature": 0}, "temperature"),
        ({"weights": "x"}, "weights"),
        ({"mixing": "x"}, "mixing"),
        ({"dig_scale": 2}, "dig_scale"),
        ({"window": "x"}, "window"),
        ({"accelerate": 1.0}, "accelerate"),
        ({"accelerate": -1}, "accelerate"),
    ):
        with pytest.raises(ValueError, match=msg):
            DIGGuidance([a, a], tiny_gray_prior, [999, 0], DIGOptions.create(kw))
    with pytest.raises(ValueError, match="two or more"):
        DIGGuidance([a], tiny_gray_prior, [999, 0])


def test_each_refresh_is_one_batched_forward(tiny_gray_prior):
    den = tiny_gray_prior
    srcs = [smooth_image(16, 24, k) for k in range(3)]
    r = dig2dig.fuse(srcs, method="dig2dig", steps=7, interval=3, prior=den, task="mff")
    refreshes = len(r.guidance["refreshes"])
    assert refreshes == 3  # steps 0, 3, 6
    assert r.timings["prior_calls"] == 7 + refreshes
    assert r.timings["prior_forwards"] == 7 + 3 * refreshes  # three sources per refresh


def test_forward_window_weights_from_the_first_step_in_one_forward_per_refresh(tiny_gray_prior):
    den = tiny_gray_prior
    srcs = [smooth_image(16, 24, k) for k in range(3)]
    r = dig2dig.fuse(srcs, method="dig2dig", steps=7, interval=3, prior=den, task="mff", window="forward")
    recs = r.guidance["refreshes"]
    assert [x["step"] for x in recs] == [0, 3, 6]
    grid = r.config["grid"]
    # refresh k weighs the stretch it starts: t_k -> t_{k+S} (the last one has nothing ahead of it)
    assert [(x["t_from"], x.get("t_to")) for x in recs[:2]] == [(grid[0], grid[3]), (grid[3], grid[6])]
    assert "weights" in recs[0] and "weights" not in recs[2]
    # step 0 needs two levels, step 3 reuses the level step 0 looked ahead to, step 6 (the last) none
    assert r.timings["prior_calls"] == 7 + 2
    assert r.timings["prior_forwards"] == 7 + 3 * (2 + 1)


def test_acceleration_merges_low_gain_steps_and_keeps_batches_exact(tiny_gray_prior):
    den = tiny_gray_prior
    pairs = [[smooth_image(16, 24, 2 * k), smooth_image(16, 24, 2 * k + 1)] for k in range(2)]
    kw = dict(method="dig2dig", steps=12, interval=4, prior=den, task="mff", window="forward")
    plain = dig2dig.fuse(pairs[0], seed=1, **kw)
    fast = dig2dig.fuse(pairs[0], seed=1, accelerate=0.99, **kw)  # every window after the largest merges
    assert plain.config["steps_taken"] == 12
    strides = [x.get("stride") for x in fast.guidance["refreshes"] if "stride" in x]
    assert strides[0] == 1 and 2 in strides[1:]
    assert fast.config["steps_taken"] < 12 and fast.image.shape == (16, 24)
    assert fast.timings["prior_forwards"] < plain.timings["prior_forwards"]
    assert not np.array_equal(fast.image, plain.image)
    # merged steps are decided per image, so a batch still equals its items one by one
    batch = dig2dig.fuse_batch(pairs, seeds=[1, 2], accelerate=0.99, **kw)
    for k, p in enumerate(pairs):
        np.testing.assert_array_equal(batch[k].image, dig2dig.fuse(p, seed=[1, 2][k], accelerate=0.99, **kw).image)


@needs_prior
def test_default_carries_both_sources_inside_a_bright_flat_region():
    """A bright, flat disk ("bone") in one source and texture inside it in the other: the default (the pyramid
    blend) keeps the texture at its full contrast *and* the disk's brightness; the per-pixel selection of
    dig2dig 0.2 hands the disk to one source, and the plain average halves the texture."""
    yy, xx = np.mgrid[0:64, 0:64]
    disk = (yy - 32) ** 2 + (xx - 32) ** 2 < 22**2
    inner = (yy - 32) ** 2 + (xx - 32) ** 2 < 16**2
    bright = np.where(disk, 0.9, 0.05).astype(np.float32)
    tex = ((yy // 4 + xx // 4) % 2).astype(np.float32)
    textured = np.where(disk, 0.25 + 0.35 * tex, 0.05).astype(np.float32)

    def both_kept(**opts) -> bool:
        y = dig2dig.fuse([bright, textured], task="mif", seed=0, **opts).luminance[inner]
        texture = np.corrcoef(y, tex[inner])[0, 1] > 0.9 and y.std() > 0.9 * textured[inner].std()
        return bool(texture and y.mean() > textured[inner].mean() + 0.15)

    assert both_kept()
    assert not both_kept(preset="select") and not both_kept(method="average")


def test_pyramid_options_and_task_records(tiny_gray_prior):
    from dig2dig.tasks import TASK_RECORDS, task_record

    a, b = (torch.from_numpy(smooth_image(24, 40, k))[None, None] * 2 - 1 for k in (1, 2))
    for task, record in TASK_RECORDS.items():
        g = DIGGuidance([a, b], tiny_gray_prior, [999, 0], task=task, noise_seeds=[0])
        assert g.pyramid and g.base == record.dig_base
    assert DIGGuidance([a, b], tiny_gray_prior, [999, 0], DIGOptions(base="select"), task="mif").base == "select"
    with pytest.raises(ValueError, match="unknown task"):
        task_record("xray")
    with pytest.raises(ValueError, match="distance='ssim'"):
        DIGGuidance([a, b], tiny_gray_prior, [999, 0], DIGOptions.create({"distance": "ssim"}))
    assert not DIGGuidance([a, b], tiny_gray_prior, [999, 0], DIGOptions(distance="ssim", blend="pixel")).pyramid
    for preset in ("paper", "soft", "select"):  # the per-pixel rules of earlier releases, one option away
        assert not DIGGuidance([a, b], tiny_gray_prior, [999, 0], DIGOptions.create({"preset": preset})).pyramid
    # one EM step of the pyramid blend before any refresh: the sources' mean detail on a consensus base, between
    # the sources up to the pyramid's ringing
    g = DIGGuidance([a, b], tiny_gray_prior, [999, 0], task="mif", noise_seeds=[0])
    f, _ = g.fuse_luma(torch.zeros_like(a), g.initial_state())
    assert f.shape == a.shape and torch.isfinite(f).all()
    inside = (f >= torch.minimum(a, b) - 0.05) & (f <= torch.maximum(a, b) + 0.05)
    assert float(inside.float().mean()) > 0.9


@pytest.mark.parametrize("shape", [(1, 1, 37, 53), (2, 1, 64, 64), (3, 1, 9, 200)])
def test_laplacian_pyramid_collapses_exactly(shape):
    from dig2dig.functional import collapse, gaussian_pyramid_top, laplacian_pyramid, pyramid_levels

    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    levels = pyramid_levels(*shape[-2:])
    assert 1 <= levels <= 5 and pyramid_levels(480, 640) == 5 and pyramid_levels(16, 16) == 1
    bands, top = laplacian_pyramid(x, levels)
    assert len(bands) == levels and bands[0].shape == x.shape
    assert [b.shape[-2] for b in bands[1:]] == [-(-bands[k].shape[-2] // 2) for k in range(levels - 1)]
    torch.testing.assert_close(collapse(bands, top), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(gaussian_pyramid_top(x, levels), top)
    flat = torch.full(shape, 0.3)  # a flat image has no detail and a flat top
    fb, ft = laplacian_pyramid(flat, levels)
    assert max(float(b.abs().max()) for b in fb) < 1e-6 and torch.allclose(
        ft, flat[..., : ft.shape[-2], : ft.shape[-1]]
    )
