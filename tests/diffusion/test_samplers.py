"""Samplers against a flow whose exact velocity and ODE endpoint are known in closed form.

Data x0 ~ N(mu, tau^2 I). Along x_s = (1 - s) x0 + s eps the optimal velocity E[eps - x0 | x_s] is
affine in x, and the probability-flow ODE maps the noise z (at s = 1) to mu + tau * z (at s = 0).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cf_lightning.diffusion import (
    ab2_sample,
    cfg_velocity,
    denoising_sigmas,
    euler_sample,
    few_step_sample,
    sampling_sigmas,
)

MU = torch.tensor([1.5, -0.5, 0.25], dtype=torch.float64)


def gaussian_velocity(tau: float):
    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.to(torch.float64).view(-1, 1)
        var = (1 - s) ** 2 * tau**2 + s**2
        return (s - (1 - s) * tau**2) / var * (x - (1 - s) * MU) - MU

    return velocity


def noise(batch: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rms_error(sampler, steps: int, shift: float, tau: float = 0.3) -> float:
    z = noise()
    out = sampler(gaussian_velocity(tau), z, sampling_sigmas(steps, shift).double())
    return float((out - (MU + tau * z)).square().mean().sqrt())


@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_euler_converges_to_the_exact_endpoint_at_first_order(shift: float) -> None:
    assert rms_error(euler_sample, 400, shift) < 0.01
    ratio = rms_error(euler_sample, 50, shift) / rms_error(euler_sample, 100, shift)
    assert 1.7 < ratio < 2.3


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
@pytest.mark.parametrize("steps", [8, 16, 32])
def test_ab2_beats_euler_at_equal_steps(shift: float, steps: int) -> None:
    assert rms_error(ab2_sample, steps, shift) < 0.8 * rms_error(euler_sample, steps, shift)


def test_ab2_is_second_order() -> None:
    ratio = rms_error(ab2_sample, 32, 1.0) / rms_error(ab2_sample, 64, 1.0)
    assert 3.3 < ratio < 4.8


def test_straight_paths_are_exact_for_euler() -> None:
    # A single data point: every path is a straight line, so even 3 Euler steps are exact.
    out = euler_sample(gaussian_velocity(0.0), noise(), sampling_sigmas(3, 5.0).double())
    torch.testing.assert_close(out, MU.expand_as(out))


def test_velocity_fn_sees_batched_float32_sigmas() -> None:
    seen = []

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.append(sigma)
        return torch.zeros_like(x)

    schedule = sampling_sigmas(4, 5.0)
    ab2_sample(velocity, noise(5).float(), schedule)
    assert len(seen) == 4
    for s, expected in zip(seen, schedule[:-1]):
        assert s.shape == (5,) and s.dtype == torch.float32
        assert torch.equal(s, expected.expand(5))


def test_few_step_sampler_renoises_the_x0_estimate_with_fresh_noise() -> None:
    target = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    inputs = []

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        inputs.append(x.clone())
        s = sigma.to(x.dtype).view(-1, 1)
        return (x - target) / s  # predicts x0 = target exactly

    sigmas = denoising_sigmas(4, 5.0)
    z = noise(4)
    out = few_step_sample(velocity, z, sigmas, torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, target.expand(4, 3))
    assert torch.equal(inputs[0], z)
    replay = torch.Generator().manual_seed(3)
    for i in range(1, 4):
        s = float(sigmas[i])
        eps = torch.randn(z.shape, generator=replay, dtype=z.dtype)
        torch.testing.assert_close(inputs[i], (1 - s) * target + s * eps)
        assert not torch.allclose(eps, z)


def test_few_step_sampler_is_deterministic_per_seed() -> None:
    velocity = gaussian_velocity(0.5)
    sigmas = denoising_sigmas(4, 5.0).double()
    a = few_step_sample(velocity, noise(8), sigmas, torch.Generator().manual_seed(1))
    b = few_step_sample(velocity, noise(8), sigmas, torch.Generator().manual_seed(1))
    c = few_step_sample(velocity, noise(8), sigmas, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@settings(max_examples=30, deadline=None)
@given(scale=st.floats(-2.0, 8.0), seed=st.integers(0, 1000))
def test_cfg_is_linear_between_uncond_and_cond(scale: float, seed: int) -> None:
    cond, uncond = noise(4, seed), noise(4, seed + 1)
    guided = cfg_velocity(cond, uncond, scale)
    torch.testing.assert_close(guided, uncond + scale * (cond - uncond))
    torch.testing.assert_close(cfg_velocity(cond, uncond, 1.0), cond)
    torch.testing.assert_close(cfg_velocity(cond, uncond, 0.0), uncond)


def test_schedules_are_validated() -> None:
    velocity = gaussian_velocity(0.3)
    with pytest.raises(ValueError, match="strictly decreasing"):
        euler_sample(velocity, noise(2), [1.0, 0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        ab2_sample(velocity, noise(2), [1.5, 0.0])
    with pytest.raises(ValueError, match="at least 2 sigmas"):
        euler_sample(velocity, noise(2), [1.0])
    with pytest.raises(ValueError, match="differ"):
        cfg_velocity(noise(2), noise(3), 3.0)
