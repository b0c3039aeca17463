"""End-to-end behaviour of fuse()/fuse_batch(): sizes, colour, determinism, batching."""

import numpy as np
import pytest

import dig2dig
from dig2dig import color
from dig2dig.io import read_image, write_image

from .conftest import smooth_image


def test_odd_size_comes_back_exactly(tiny_prior):
    a, b = smooth_image(37, 53, 1), smooth_image(37, 53, 2)
    r = dig2dig.fuse([a, b], steps=3, prior=tiny_prior, task="mff")
    assert r.image.shape == (37, 53) and r.luminance.shape == (37, 53)
    assert r.image.dtype == np.float32 and 0 <= r.image.min() and r.image.max() <= 1
    assert r.config["padded_size"] == [40, 56]


def test_gray_in_gray_out_and_colour_in_colour_out(tiny_prior):
    gray, rgb = smooth_image(24, 32, 1), smooth_image(24, 32, 2, color=True)
    r = dig2dig.fuse([gray, smooth_image(24, 32, 3)], steps=2, prior=tiny_prior)
    assert r.image.ndim == 2
    r = dig2dig.fuse([gray, rgb], names=["ir.png", "vis.png"], steps=2, prior=tiny_prior)
    assert r.task == "vif" and r.image.shape == (24, 32, 3)
    # VIF: chroma comes from the visible image, luminance from the fusion
    _, cb, cr = color.rgb_to_ycbcr(rgb)
    y2, cb2, cr2 = color.rgb_to_ycbcr(r.image)
    inside = (r.image > 0.02).all(-1) & (r.image < 0.98).all(-1)
    assert np.abs(cb2 - cb)[inside].max() < 2e-3 and np.abs(cr2 - cr)[inside].max() < 2e-3
    np.testing.assert_allclose(y2[inside], r.luminance[inside], atol=2e-3)


def test_gray_stored_as_three_equal_channels_counts_as_gray(tiny_prior):
    g = smooth_image(16, 16, 4)
    r = dig2dig.fuse([np.repeat(g[..., None], 3, -1), smooth_image(16, 16, 5)], steps=2, prior=tiny_prior)
    assert r.image.ndim == 2


def test_colour_round_trip():
    rgb = smooth_image(20, 30, 7, color=True)
    y, cb, cr = color.rgb_to_ycbcr(rgb)
    np.testing.assert_allclose(color.ycbcr_to_rgb(y, cb, cr), rgb, atol=1e-6)
    np.testing.assert_allclose(color.compose(y, (cb, cr)), rgb, atol=1e-6)
    g = smooth_image(20, 30, 8)
    assert color.is_gray(np.repeat(g[..., None], 3, -1)) and not color.is_gray(rgb)


def test_saturation_chroma_prefers_the_saturated_source():
    a = np.full((8, 8, 3), 0.5, np.float32)
    b = a.copy()
    b[..., 0] = 0.9  # strongly red
    cb, cr = color.fuse_chroma([a + np.float32([0.01, 0, 0]), b], "saturation")
    _, _, cr_b = color.rgb_to_ycbcr(b)
    assert np.abs(cr - cr_b).max() < 0.02


def test_same_seed_same_bytes_and_other_seed_differs(tiny_prior, tmp_path):
    a, b = smooth_image(24, 40, 1), smooth_image(24, 40, 2, color=True)
    outs = []
    for i, seed in enumerate((5, 5, 6)):
        r = dig2dig.fuse([a, b], steps=4, seed=seed, prior=tiny_prior)
        outs.append(r.save(tmp_path / f"o{i}.png").read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


def test_batch_equals_items_one_by_one(tiny_prior):
    pairs = [
        [smooth_image(24, 40, 1), smooth_image(24, 40, 2)],
        [smooth_image(24, 40, 3), smooth_image(24, 40, 4)],
        [smooth_image(16, 16, 5), smooth_image(16, 16, 6)],
    ]
    batch = dig2dig.fuse_batch(pairs, steps=4, seeds=[11, 12, 13], prior=tiny_prior, task="vif")
    stacked = dig2dig.fuse_batch(pairs, steps=4, seeds=[11, 12, 13], prior=tiny_prior, task="vif", max_batch=3)
    for pair, seed, rb, rs in zip(pairs, (11, 12, 13), batch, stacked):
        r1 = dig2dig.fuse(pair, steps=4, seed=seed, prior=tiny_prior, task="vif")
        np.testing.assert_array_equal(rb.image, r1.image)  # the default: the same bytes as alone
        np.testing.assert_allclose(rs.luminance, r1.luminance, atol=1e-5)  # stacked through the network
        assert rb.seed == rs.seed == seed
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        dig2dig.fuse_batch(pairs, steps=4, prior=tiny_prior, max_batch=0)


def test_history_and_timings(tiny_prior):
    r = dig2dig.fuse([smooth_image(16, 24, 1), smooth_image(16, 24, 2)], steps=3, prior=tiny_prior, history=True)
    assert [h["t"] for h in r.history] == r.config["grid"] and len(r.history) == 3
    assert r.history[0]["x0"].shape == (16, 24)
    for key in ("prior_forward_s", "outside_prior_s", "sample_total_s", "per_step_s"):
        assert r.timings[key] >= 0
    refreshes = len(r.guidance["refreshes"])  # one batched forward of both sources each (at half size)
    assert r.timings["prior_calls"] == 3 + refreshes and r.timings["prior_forwards"] == 3 + 2 * refreshes
    assert r.timings["sample_total_s"] == pytest.approx(r.timings["prior_forward_s"] + r.timings["outside_prior_s"])


def test_one_channel_prior_and_release_mapping(tiny_gray_prior, tiny_prior):
    pair = [smooth_image(16, 24, 1), smooth_image(16, 24, 2)]
    r = dig2dig.fuse(pair, method="ddfm", steps=3, prior=tiny_gray_prior, mapping="release")
    assert r.image.shape == (16, 24)
    r = dig2dig.fuse(pair, method="ddfm", steps=3, prior=tiny_prior, mapping="release")
    assert r.config["options"]["mapping"] == "release"


def test_resize_option(tiny_prior):
    a, b = smooth_image(24, 32, 1), smooth_image(12, 16, 2)
    with pytest.raises(dig2dig.errors.SizeMismatchError, match=r"32x24.*16x12"):
        dig2dig.fuse([a, b], steps=2, prior=tiny_prior)
    r = dig2dig.fuse([a, b], steps=2, prior=tiny_prior, resize=True)
    assert r.image.shape == (24, 32) and r.config["notes"]


def test_task_detection_from_names_and_roles(tiny_prior):
    from dig2dig.tasks import resolve_task

    g, c = smooth_image(16, 16, 1), smooth_image(16, 16, 2, color=True)
    info = resolve_task("auto", [c, g], ["x/vis.png", "x/ir.png"])
    assert info.name == "vif" and info.order == (1, 0) and info.roles == ("infrared", "visible")
    assert resolve_task("auto", [g, g], ["a/mri.png", "a/ct.png"]).order == (1, 0)
    assert resolve_task("auto", [c, c], ["under.jpg", "over.jpg"]).name == "mef"
    assert resolve_task("auto", [c, c], ["a.jpg", "b.jpg"]).name == "mff"
    assert resolve_task("auto", [c, g], ["one.png", "two.png"]).name == "vif"
    assert resolve_task("vif", [c, g], ["one.png", "two.png"]).order == (1, 0)  # gray = infrared
    # MIF roles are named as a radiologist would: CT is anatomical, PET and SPECT functional
    assert resolve_task("auto", [g, g], ["a/mri.png", "a/ct.png"]).roles == ("CT", "MRI")
    assert resolve_task("auto", [c, g], ["p/pet.png", "p/mri.png"]).roles == ("PET", "MRI")
    assert resolve_task("auto", [g, c], ["p/mri.png", "p/spect.png"]).roles == ("SPECT", "MRI")
    unnamed = resolve_task("mif", [g, c], ["one.png", "two.png"])  # gray MRI beside a colour-coded scan
    assert unnamed.order == (1, 0) and unnamed.roles == ("PET/SPECT", "MRI")
    assert resolve_task("mif", [g, g], ["one.png", "two.png"]).roles == ("CT/PET/SPECT", "MRI")
    with pytest.raises(ValueError, match="unknown task"):
        resolve_task("fusion", [c, g], ["a", "b"])


def test_file_round_trip_8_and_16_bit(tmp_path):
    img = smooth_image(20, 30, 3, color=True)
    for depth, ext in ((8, ".png"), (16, ".png"), (16, ".tif"), (8, ".bmp"), (8, ".jpg")):
        p = write_image(tmp_path / f"x{depth}{ext}", img, depth)
        back = read_image(p)
        assert back.bit_depth == depth and back.data.shape == img.shape
        tol = 0.05 if ext == ".jpg" else (0.6 / 255 if depth == 8 else 1e-4)
        assert np.abs(back.data - img).max() <= tol, (depth, ext)
    assert not list(tmp_path.glob("*.part"))


def test_sixteen_bit_sources_give_sixteen_bit_output(tmp_path):
    a = write_image(tmp_path / "ir.png", smooth_image(24, 40, 1), 16)
    b = write_image(tmp_path / "vis.png", smooth_image(24, 40, 2), 8)
    r = dig2dig.fuse([a, b], method="average")
    assert read_image(r.save(tmp_path / "f.png")).bit_depth == 16
    assert read_image(r.save(tmp_path / "f.tif")).bit_depth == 16
    assert read_image(r.save(tmp_path / "f.jpg")).bit_depth == 8  # JPEG has no 16-bit: falls back to 8
    assert read_image(r.save(tmp_path / "f8.png", 8)).bit_depth == 8


def test_rgba_alpha_is_dropped_with_a_warning(tmp_path):
    import cv2

    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 2], rgba[..., 3] = 200, 128  # BGRA: red, half transparent
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    with pytest.warns(UserWarning, match="alpha"):
        img = read_image(tmp_path / "a.png")
    assert img.data.shape == (10, 10, 3) and img.data[0, 0, 0] == pytest.approx(200 / 255)


@pytest.mark.parametrize("method", ["average", "maxabs", "laplacian", "guided", "mertens"])
def test_classical_baselines_need_no_prior(method, monkeypatch, tmp_path):
    import dig2dig.prior.embedded as emb

    monkeypatch.setattr(emb, "EMBEDDED_DIR", tmp_path / "none")
    a, b = smooth_image(37, 53, 1), smooth_image(37, 53, 2)
    r = dig2dig.fuse([a, b], method=method)
    assert r.image.shape == (37, 53) and r.config["prior"] is None
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    if method in ("average", "maxabs"):
        assert np.all(r.luminance >= lo - 1e-6) and np.all(r.luminance <= hi + 1e-6)
    # three sources work too
    assert dig2dig.fuse([a, b, smooth_image(37, 53, 3)], method=method).image.shape == (37, 53)
    with pytest.raises(ValueError, match="takes no steps"):
        dig2dig.fuse([a, b], method=method, steps=10)


def test_mertens_keeps_the_well_exposed_detail():
    from dig2dig import baselines

    rng = np.random.default_rng(0)
    texture = (rng.random((64, 64)) > 0.5).astype(np.float32)
    under = np.full((64, 64), 0.05, np.float32)
    under[:, :32] += 0.25 * texture[:, :32]  # the left half's texture shows only in the dark frame
    over = np.full((64, 64), 1.0, np.float32)  # clipped on the left
    over[:, 32:] = 0.3 + 0.4 * texture[:, 32:]  # the right half's texture, well exposed
    f = baselines.mertens([under, over])
    assert f.shape == (64, 64) and f.dtype == np.float32 and 0 <= f.min() and f.max() <= 1
    # both halves keep their texture, and the clipped half is not white
    assert np.corrcoef(f[:, 2:30].ravel(), texture[:, 2:30].ravel())[0, 1] > 0.5
    assert np.corrcoef(f[:, 34:62].ravel(), texture[:, 34:62].ravel())[0, 1] > 0.5
    assert f[:, :32].mean() < 0.9
    with pytest.raises(ValueError, match="mertens option contrast"):
        dig2dig.fuse([under, over], method="mertens", contrast=-1)


def test_laplacian_and_guided_keep_the_sharper_source():
    from dig2dig import baselines

    rng = np.random.default_rng(0)
    sharp = smooth_image(64, 64, 1) * 0.5 + 0.5 * (rng.random((64, 64)) > 0.5)
    import cv2

    blurred = cv2.GaussianBlur(sharp.astype(np.float32), (9, 9), 3)
    for fn in (baselines.laplacian, baselines.guided):
        f = fn([blurred, sharp.astype(np.float32)])
        assert np.abs(f - sharp).mean() < np.abs(baselines.average([blurred, sharp]) - sharp).mean()


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"steps": True}, "steps=True: give a step count (a whole number, not bool)"),
        ({"steps": 2.0}, "steps=2.0: give a step count (a whole number, not float)"),
        ({"steps": np.float32(3)}, "not float32"),
        ({"method": "ddfm", "steps": False}, "not bool"),
    ],
)
def test_steps_of_the_wrong_type_are_named(tiny_prior, kw, message):
    a = smooth_image(16, 16, 1)
    with pytest.raises(ValueError) as e:
        dig2dig.fuse([a, a], prior=tiny_prior, **kw)
    assert message in str(e.value)


def test_an_empty_array_is_named():
    a = smooth_image(16, 16, 1)
    with pytest.raises(ValueError, match=r"source 2: an empty array of shape \(0, 0\)"):
        dig2dig.fuse([a, np.zeros((0, 0))], method="average")
