import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cf_lightning.diffusion import (
    add_noise,
    denoising_sigmas,
    eps_from_velocity,
    flow_matching_loss,
    sample_sigmas,
    sampling_sigmas,
    shift_sigma,
    timestep_from_sigma,
    velocity_from_x0,
    warp_timesteps,
    x0_from_velocity,
)


def latents(seed: int, shape=(2, 4, 5, 3, 3), dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@settings(max_examples=50, deadline=None)
@given(s=st.floats(0.0, 1.0), shift=st.floats(0.2, 10.0))
def test_shift_keeps_endpoints_and_order(s: float, shift: float) -> None:
    out = shift_sigma(s, shift)
    assert 0.0 <= out <= 1.0 + 1e-12
    assert shift_sigma(0.0, shift) == 0.0
    assert shift_sigma(1.0, shift) == pytest.approx(1.0)
    if shift > 1:
        assert out >= s - 1e-12
    elif shift < 1:
        assert out <= s + 1e-12
    assert shift_sigma(s, 1.0) == pytest.approx(s)


def test_shift_rejects_non_positive() -> None:
    with pytest.raises(ValueError, match="shift must be > 0, got 0"):
        shift_sigma(0.5, 0.0)


def test_student_schedule_is_the_papers_warped_1000_750_500_250() -> None:
    expected = torch.tensor([1.0, 0.9375, 5.0 / 6.0, 0.625])
    torch.testing.assert_close(denoising_sigmas(4, 5.0), expected)
    torch.testing.assert_close(warp_timesteps([1000, 750, 500, 250], 5.0), expected)
    torch.testing.assert_close(
        timestep_from_sigma(denoising_sigmas(4, 1.0)), torch.tensor([1000.0, 750, 500, 250])
    )


def test_sampling_schedule_runs_from_one_to_zero() -> None:
    sigmas = sampling_sigmas(30, 5.0)
    assert sigmas.shape == (31,)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())


def test_schedule_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        denoising_sigmas(0)
    with pytest.raises(ValueError, match="timesteps must lie in"):
        warp_timesteps([1200, 500])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), sigma=st.floats(0.01, 1.0))
def test_parameterisations_round_trip(seed: int, sigma: float) -> None:
    x0 = latents(seed).double()
    eps = latents(seed + 1).double()
    s = torch.full((2,), sigma, dtype=torch.float64)
    x_t = add_noise(x0, eps, s)
    torch.testing.assert_close(x_t, (1 - sigma) * x0 + sigma * eps)
    v = eps - x0
    torch.testing.assert_close(x0_from_velocity(x_t, v, s), x0)
    torch.testing.assert_close(eps_from_velocity(x_t, v, s), eps)
    torch.testing.assert_close(velocity_from_x0(x_t, x0, s), v)


def test_per_frame_sigma_lands_on_the_frame_axis() -> None:
    x0, eps = latents(0), latents(1)
    sigma = torch.rand(2, 5, generator=torch.Generator().manual_seed(2))
    x_t = add_noise(x0, eps, sigma)
    for b in range(2):
        for f in range(5):
            s = float(sigma[b, f])
            torch.testing.assert_close(x_t[b, :, f], (1 - s) * x0[b, :, f] + s * eps[b, :, f])


def test_low_precision_latents_keep_their_dtype() -> None:
    x0, eps = latents(0, dtype=torch.bfloat16), latents(1, dtype=torch.bfloat16)
    out = add_noise(x0, eps, torch.tensor([0.3, 0.9]))
    assert out.dtype == torch.bfloat16
    reference = add_noise(x0.float(), eps.float(), torch.tensor([0.3, 0.9]))
    torch.testing.assert_close(out.float(), reference, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize(
    ("sigma", "like", "message"),
    [
        (torch.rand(3), latents(0), r"sigma of shape \(3,\) does not match batch 2"),
        (torch.rand(2, 4), latents(0), r"per-frame sigma of shape \(2, 4\) must be \[B, F\] = \[2, 5\]"),
        (torch.rand(2, 4), torch.zeros(2, 4), r"needs latents \[B, C, F, H, W\]"),
        (torch.rand(2, 5, 1), latents(0), r"scalar, \[B\] or \[B, F\]"),
    ],
)
def test_bad_sigma_shapes_are_named(sigma: torch.Tensor, like: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        add_noise(like, like, sigma)


def test_sample_sigmas_is_seeded_shifted_and_clamped() -> None:
    a = sample_sigmas(20000, torch.Generator().manual_seed(7), shift=5.0)
    b = sample_sigmas(20000, torch.Generator().manual_seed(7), shift=5.0)
    assert torch.equal(a, b)
    assert a.dtype == torch.float32
    assert float(a.min()) == pytest.approx(0.02) and float(a.max()) == pytest.approx(0.98)
    # shift 5 maps u > 1/6 above 0.5, and u > 0.98 / 1.08 onto the clamp at 0.98.
    assert float((a > 0.5).float().mean()) == pytest.approx(5 / 6, abs=0.015)
    assert float((a == a.max()).float().mean()) == pytest.approx(1 - 0.98 / 1.08, abs=0.01)
    per_frame = sample_sigmas(3, torch.Generator().manual_seed(0), per_frame=7)
    assert per_frame.shape == (3, 7)
    assert len(set(per_frame[0].tolist())) > 1


def test_sample_sigmas_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="min_sigma=0.9, max_sigma=0.1"):
        sample_sigmas(2, min_sigma=0.9, max_sigma=0.1)
    with pytest.raises(ValueError, match="per_frame must be None or >= 1, got 0"):
        sample_sigmas(2, per_frame=0)


def test_flow_matching_loss_without_mask_is_plain_mse() -> None:
    pred, x0, eps = latents(0), latents(1), latents(2)
    torch.testing.assert_close(flow_matching_loss(pred, x0, eps), F.mse_loss(pred, eps - x0))


def test_flow_matching_loss_ignores_unmasked_frames_exactly() -> None:
    x0, eps = latents(1), latents(2)
    pred = latents(0).requires_grad_(True)
    mask = torch.tensor([[False, False, True, True, True], [False, True, True, True, True]])
    loss = flow_matching_loss(pred, x0, eps, mask)
    selected = torch.cat([(pred - (eps - x0))[0, :, 2:].flatten(), (pred - (eps - x0))[1, :, 1:].flatten()])
    torch.testing.assert_close(loss, selected.square().mean())
    loss.backward()
    assert torch.equal(pred.grad[0, :, :2], torch.zeros_like(pred.grad[0, :, :2]))
    assert torch.equal(pred.grad[1, :, :1], torch.zeros_like(pred.grad[1, :, :1]))
    assert bool((pred.grad[0, :, 2:] != 0).any())

    # Garbage (even NaN) in the context positions changes neither the loss nor any gradient.
    poisoned = pred.detach().clone()
    poisoned[0, :, :2] = float("nan")
    poisoned[1, :, 0] = 1e30
    poisoned.requires_grad_(True)
    loss_poisoned = flow_matching_loss(poisoned, x0, eps, mask)
    loss_poisoned.backward()
    assert torch.equal(loss_poisoned, loss.detach())
    assert torch.equal(poisoned.grad, pred.grad)


def test_flow_matching_loss_with_empty_mask_is_zero() -> None:
    pred = latents(0).requires_grad_(True)
    loss = flow_matching_loss(pred, latents(1), latents(2), torch.zeros(2, 5, dtype=torch.bool))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_flow_matching_loss_mask_must_fit() -> None:
    with pytest.raises(ValueError, match=r"mask of shape \(2, 4\) must be \[B, F\]"):
        flow_matching_loss(latents(0), latents(1), latents(2), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        flow_matching_loss(latents(0), latents(1), latents(2), torch.ones(2, 5))
