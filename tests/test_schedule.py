import numpy as np
import pytest

from dig2dig.schedule import alphas_cumprod, make_grid, power_grid, space_timesteps, uniform_grid

from .conftest import FIXTURES, need


@pytest.mark.parametrize(
    "case,steps",
    [("ddfm/ddfm_case1.npz", 10), ("ddfm/ddfm_case2.npz", 20), ("ddfm/ddfm_case3.npz", 10), ("ccf/ccf_case1.npz", 10)],
)
def test_uniform_grid_equals_reference_respacing(case, steps):
    z = np.load(need(FIXTURES / case))
    assert uniform_grid(steps) == list(z["step_t_orig"])
    assert sorted(uniform_grid(steps)) == list(z["timestep_map"])
    np.testing.assert_allclose(alphas_cumprod()[z["timestep_map"]], z["alphas_cumprod"], rtol=1e-12)


def test_space_timesteps_sections_and_ddim_stride():
    assert space_timesteps(300, [10, 15, 20])[:3] == [0, 11, 22]
    assert len(space_timesteps(300, [10, 15, 20])) == 45
    assert space_timesteps(1000, "ddim10") == list(range(0, 1000, 100))
    with pytest.raises(ValueError):
        space_timesteps(10, [20])


def test_alphas_cumprod_linear_schedule():
    ab = alphas_cumprod()
    assert ab.dtype == np.float64 and ab.shape == (1000,)
    assert ab[0] == pytest.approx(1 - 1e-4)
    assert np.all(np.diff(ab) < 0)


@pytest.mark.parametrize("n", [1, 2, 15, 25, 50, 1000])
def test_power_grid_is_distinct_descending_and_spans(n):
    g = power_grid(n, 2.0)
    assert len(g) == n and len(set(g)) == n
    assert all(a > b for a, b in zip(g, g[1:]))
    assert g[0] == 999
    if n > 1:
        assert g[-1] == 0


def test_power_grid_takes_big_steps_at_high_noise():
    g = power_grid(25, 2.0)
    gaps = -np.diff(g)
    assert gaps[0] > 5 * gaps[-1]


def test_make_grid_forms():
    assert make_grid(10) == uniform_grid(10)
    assert make_grid("uniform:10") == uniform_grid(10)
    assert make_grid("power:25:3") == power_grid(25, 3)
    assert make_grid("0,500,999") == [999, 500, 0]
    assert make_grid([999, 10]) == [999, 10]
    for bad in ("zero", [1000], [5, 5], [], "power:0"):
        with pytest.raises(ValueError):
            make_grid(bad)


def test_ddim_advance_hook_merges_steps_onto_later_grid_points(tiny_gray_prior):
    import torch

    from dig2dig.sampler import ddim

    grid = [999, 800, 600, 400, 200, 0]
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    seen = []
    from dig2dig.sampler import Rectifier

    class Merge(Rectifier):  # no change to x̂0; merges steps as ``rule`` says
        def __init__(self, rule):
            self.rule = rule

        def __call__(self, x0_hat, step, state):
            return x0_hat, state

        def advance(self, step, state):
            return self.rule(step)

    out = ddim(
        tiny_gray_prior,
        x,
        grid,
        Merge(lambda step: 2 if step.index == 1 else 1),
        callback=lambda o: seen.append((o.step.t, o.step.t_prev, o.next_index)),
    )
    assert seen == [(999, 800, 1), (800, 400, 3), (400, 200, 4), (200, 0, 5), (0, -1, 6)]
    # merging every step from the start is the same as sampling on the thinned grid
    thin = ddim(tiny_gray_prior, x, grid[::2])
    merged = ddim(tiny_gray_prior, x, grid, Merge(lambda step: 2))
    torch.testing.assert_close(merged.x0, thin.x0, atol=0, rtol=0)
    assert out.x0.shape == x.shape and out.steps_taken == 5
    with pytest.raises(ValueError, match="advance"):
        ddim(tiny_gray_prior, x, grid, Merge(lambda step: 0))
