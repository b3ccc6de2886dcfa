"""Samplers against a flow whose exact velocity and ODE endpoint are known in closed form.

Data x0 ~ N(mu, tau^2 I). Along x_s = (1 - s) x0 + s eps the optimal velocity E[eps - x0 | x_s] is
affine in x, and the probability-flow ODE maps the noise z (at s = 1) to mu + tau * z (at s = 0).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cf_lightning.diffusion import (
    cfg_velocity,
    euler_sample,
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
    euler_sample(velocity, noise(5).float(), schedule)
    assert len(seen) == 4
    for s, expected in zip(seen, schedule[:-1]):
        assert s.shape == (5,) and s.dtype == torch.float32
        assert torch.equal(s, expected.expand(5))


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
        euler_sample(velocity, noise(2), [1.5, 0.0])
    with pytest.raises(ValueError, match="at least 2 sigmas"):
        euler_sample(velocity, noise(2), [1.0])
    with pytest.raises(ValueError, match="differ"):
        cfg_velocity(noise(2), noise(3), 3.0)
