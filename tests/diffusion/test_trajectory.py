"""Teacher ODE trajectories: states taken exactly at the requested levels, CFG against the null text."""

import pytest
import torch

from cf_lightning.diffusion import (
    denoising_sigmas,
    euler_sample,
    guided,
    guided_velocity,
    null_text,
    ode_trajectory,
    sampling_sigmas,
)


def test_states_sit_exactly_at_the_levels_of_a_constant_field():
    """With a constant velocity c, Euler is exact: the state at sigma s is noise + (s - 1) c."""
    noise = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    levels = denoising_sigmas(4, 5.0)
    x0, states = ode_trajectory(lambda x, s: c.expand_as(x), noise, levels, ode_steps=7, shift=5.0)
    assert states.shape == (2, 4, 3)
    for i, s in enumerate(levels.tolist()):
        torch.testing.assert_close(states[:, i], noise + (s - 1) * c)
    torch.testing.assert_close(x0, noise - c)
    assert torch.equal(states[:, 0], noise), "level 1 is the noise itself"


def test_matches_one_euler_run_over_the_merged_grid():
    """Stopping at each level changes nothing: the endpoint is a plain Euler run over the merged grid."""
    def velocity(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return torch.sin(3 * x) * s.view(-1, 1)

    noise = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    levels = denoising_sigmas(3, 3.0)
    x0, states = ode_trajectory(velocity, noise, levels, ode_steps=5, shift=3.0)
    grid = sorted(set(sampling_sigmas(5, 3.0).tolist()) | set(levels.tolist()), reverse=True)
    assert torch.equal(x0, euler_sample(velocity, noise, grid))
    for i, s in enumerate(levels.tolist()):
        upto = grid[: grid.index(s) + 1]
        expected = noise if len(upto) == 1 else euler_sample(velocity, noise, upto)
        assert torch.equal(states[:, i], expected)


@pytest.mark.parametrize("levels", [[], [0.5, 0.0], [1.5]])
def test_levels_outside_zero_one_are_refused(levels):
    with pytest.raises(ValueError, match=r"levels must be a non-empty list of sigmas in \(0, 1\]"):
        ode_trajectory(lambda x, s: x, torch.zeros(1, 2), levels)


def test_guided_velocity_extrapolates_from_the_null_text():
    calls = []

    def model(x, t, context, context_mask=None, frame_cond=None):
        calls.append((context.clone(), context_mask, frame_cond))
        return x * 0 + context.sum()

    context, mask, cond = torch.ones(1, 2, 3), torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 4, 2)
    v = guided_velocity(model, context, mask, cond, guidance_scale=3.0)(torch.zeros(1, 4), torch.ones(1))
    assert torch.equal(v, torch.full((1, 4), 18.0)), "0 + 3 * (6 - 0)"
    assert torch.equal(calls[1][0], torch.zeros(1, 2, 3)) and calls[1][1] is mask and calls[1][2] is cond


def test_guidance_scale_one_is_the_conditional_prediction_without_an_unconditional_forward():
    texts = []

    def score(x, sigma, text, text_mask):
        texts.append(text)
        return x + text.sum()

    context = torch.ones(1, 2, 3)
    v = guided(score, context, 1.0)(torch.zeros(1, 4), torch.ones(1))
    assert torch.equal(v, torch.full((1, 4), 6.0)) and len(texts) == 1 and texts[0] is context
    guided(score, context, 2.0)(torch.zeros(1, 4), torch.ones(1))
    assert torch.equal(texts[-1], null_text(context)) and not texts[-1].any()
