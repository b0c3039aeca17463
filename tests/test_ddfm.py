"""DDFM against traces of the released implementation (MMIF-DDFM @589f5cb) with the tiny ADM."""

import numpy as np
import pytest
import torch

from dig2dig.guidance.ddfm import (
    DDFMGuidance,
    DifferenceOTF,
    em_initial,
    em_step,
    release_rgb_to_ycbcr,
    release_ycbcr_to_rgb,
)
from dig2dig.options import DDFMOptions
from dig2dig.prior import load_prior
from dig2dig.sampler import ddim
from dig2dig.schedule import uniform_grid

from .conftest import FIXTURES, kernel_tol, need

CASES = [("ddfm_case1", 10), ("ddfm_case2", 20), ("ddfm_case3", 10)]


def _case(name):
    return np.load(need(FIXTURES / "ddfm" / f"{name}.npz"))


def _t(a):
    return torch.from_numpy(np.asarray(a))


def _release_guidance(z):
    # the release feeds the visible image as I and the infrared one as V; our release mapping
    # takes (intensity = infrared, texture = visible) and swaps them into those slots itself
    return DDFMGuidance(intensity=_t(z["V_slot"]), texture=_t(z["I_slot"]), opts=DDFMOptions(mapping="release"))


@pytest.mark.parametrize("name,steps", CASES)
def test_em_alone_chained_over_all_steps(name, steps):
    z = _case(name)
    I, V = _t(z["I_slot"]), _t(z["V_slot"])
    otf = DifferenceOTF(I.shape[-2], I.shape[-1], I.device)
    state = em_initial(I)
    for k in range(steps):
        X, state = em_step(_t(z["em_f_pre"][k]), I, V, state, otf, 0.5, 0.001)
        np.testing.assert_allclose((I - X).numpy(), z["em_F"][k], atol=1e-5, err_msg=f"em_F step {k}")
        assert state.tau_a.item() == pytest.approx(float(z["em_tau_a"][k]), rel=1e-5)
        assert state.tau_b.item() == pytest.approx(float(z["em_tau_b"][k]), rel=1e-5)
        if k < 2:
            for key in "CDH":
                ref = z[f"em_{key}_step{k}"]
                got = getattr(state, key).numpy()
                if key == "H":
                    np.testing.assert_allclose(got, ref, atol=1e-5)
                else:  # C, D ∝ 1/|residual| reach 1e6: compare relatively
                    np.testing.assert_allclose(got, ref, rtol=1e-4)
            np.testing.assert_allclose(state.F1.numpy(), z[f"em_F1_step{k}"], atol=1e-7)
            np.testing.assert_allclose(state.F2.numpy(), z[f"em_F2_step{k}"], atol=1e-7)


@pytest.mark.parametrize("name,steps", CASES)
def test_release_colour_round_trip(name, steps):
    z = _case(name)
    for k in range(steps):
        ycc = release_rgb_to_ycbcr(_t(z["x0_pre_em"][k]))
        np.testing.assert_allclose(ycc[:, :1].numpy(), z["em_f_pre"][k], atol=1e-6)
        rgb = release_ycbcr_to_rgb(torch.cat([_t(z["em_F"][k]), ycc[:, 1:]], 1))
        np.testing.assert_allclose(rgb.numpy(), z["x0_post_em"][k], atol=1e-5)


@pytest.mark.parametrize("name,steps", CASES)
def test_x0_and_ddim_step_teacher_forced(name, steps):
    z = _case(name)
    den = load_prior(need(FIXTURES / "adm" / "tiny_adm.pt"), spec=FIXTURES / "adm" / "tiny_adm_config.json")
    grid = uniform_grid(steps)
    forced = iter(z["x0_post_em"])
    outs = []
    # feed the recorded x_t and rectified x0 at every step; compare x̂0 and the next x_t
    for k, t in enumerate(grid):
        x0 = den.x0_from_eps(_t(z["x_t"][k]), _t(z["eps_model"][k]), t)
        np.testing.assert_allclose(x0.numpy(), z["x0_pre_em"][k], atol=1e-5)

    def rectify(x0_hat, step, state):
        return _t(next(forced)), state

    class Replay:  # a prior that answers with the recorded eps
        alphas_cumprod = den.alphas_cumprod

        def eps(self, x, t):
            k = grid.index(t)
            np.testing.assert_allclose(x.numpy(), z["x_t"][k], atol=1e-5)
            return _t(z["eps_model"][k])

    ddim(Replay(), _t(z["x_T"]), grid, rectify, callback=lambda o: outs.append(o.x_prev.numpy()))
    np.testing.assert_allclose(np.stack(outs[:-1]), z["x_t"][1:], atol=1e-5)
    np.testing.assert_allclose(outs[-1], z["x0_final"], atol=1e-5)


@pytest.mark.parametrize("name,steps", CASES)
def test_end_to_end_release_parity(name, steps):
    """From the fixture's x_T with the tiny ADM: per-step x̂0 before/after EM and the output.

    Our UNet's ε differs from the reference's by float32 rounding (~1e-6, the size of the
    reference's own 1-vs-2-thread difference).  At the first step x̂0 multiplies ε by
    sqrt(1/ᾱ - 1) = 157, so a handful of unclipped pixels there differ by up to ~1.5e-4 (the
    fixture README measures 1.2e-4 between two runs of the reference itself).  Every later step
    and the final output are held to 1e-4; at the first step at most 0.05 % of values may exceed
    1e-4 and none 3e-4.
    """
    z = _case(name)
    den = load_prior(need(FIXTURES / "adm" / "tiny_adm.pt"), spec=FIXTURES / "adm" / "tiny_adm_config.json")
    rec = {"pre": [], "post": []}
    out = ddim(
        den,
        _t(z["x_T"]),
        uniform_grid(steps),
        _release_guidance(z),
        callback=lambda o: (rec["pre"].append(o.x0_hat.numpy()), rec["post"].append(o.x0.numpy())),
    )
    for key, ref in (("pre", "x0_pre_em"), ("post", "x0_post_em")):
        d = np.abs(np.stack(rec[key]) - z[ref])
        assert d[1:].max() <= kernel_tol(1e-4), (key, d[1:].max())
        assert (d[0] > kernel_tol(1e-4)).mean() <= 5e-4 and d[0].max() <= kernel_tol(3e-4), (key, d[0].max())
    np.testing.assert_allclose(out.x0.numpy(), z["x0_final"], atol=1e-4)
    # the saved PNG: cv2 Y of the output, min-max to 0..255, floor(x + 0.499999999)
    rgb = out.x0[0].permute(1, 2, 0).numpy()
    y = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    u8 = np.floor((y - y.min()) / (y.max() - y.min()) * 255 + 0.499999999).astype(np.uint8)
    assert (u8 != z["saved_png_u8"]).sum() <= 6 and np.abs(u8.astype(int) - z["saved_png_u8"]).max() <= 1


def test_paper_mapping_moves_toward_the_sources_and_differs_from_release():
    z = _case("ddfm_case1")
    ir, vis = _t(z["V_slot"]), _t(z["I_slot"])
    f_pre = torch.zeros_like(ir)
    paper = DDFMGuidance(ir, vis, DDFMOptions(mapping="paper"))
    release = DDFMGuidance(ir, vis, DDFMOptions(mapping="release"))
    Fp, _ = paper.fuse_luma(f_pre, paper.initial_state(f_pre))
    Fr, _ = release.fuse_luma(f_pre, release.initial_state(f_pre))
    lo, hi = torch.minimum(ir, vis), torch.maximum(ir, vis)
    # both produce per-pixel blends of the two sources (up to the tiny TV term)
    assert bool(((Fp >= lo - 1e-3) & (Fp <= hi + 1e-3)).all())
    assert bool(((Fr >= lo - 1e-3) & (Fr <= hi + 1e-3)).all())
    # paper: the estimate is pulled toward the source it is closer to; the release swaps that
    closer_to_ir = (f_pre - ir).abs() < (f_pre - vis).abs()
    gap = (ir - vis).abs() > 0.2
    m = closer_to_ir & gap
    assert ((Fp - ir).abs()[m] < (Fp - vis).abs()[m]).float().mean() > 0.9
    assert ((Fr - ir).abs()[m] > (Fr - vis).abs()[m]).float().mean() > 0.9


def test_ddfm_rejects_bad_arguments():
    a = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match="mapping"):
        DDFMGuidance(a, a, DDFMOptions.create({"mapping": "nope"}))
    with pytest.raises(ValueError, match="same|one shape"):
        DDFMGuidance(a, torch.zeros(1, 1, 8, 9))
