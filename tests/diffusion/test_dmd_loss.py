import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cf_lightning.diffusion import dmd_loss

SHAPE = (3, 2, 4, 3, 3)


def triple(seed: int, shape=SHAPE):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=g) for _ in range(3))


def expected_grad(x, real, fake, mask=None):
    """Independent float64 reference: per-sample normaliser over the selected elements."""
    x, real, fake = x.double(), real.double(), fake.double()
    m = torch.ones_like(x, dtype=torch.bool) if mask is None else mask[:, None, :, None, None].expand_as(x)
    grads = torch.zeros_like(x)
    for b in range(x.shape[0]):
        norm = (x[b] - real[b]).abs()[m[b]].mean()
        grads[b] = torch.where(m[b], (fake[b] - real[b]) / norm, 0.0)
    return grads, int(m.sum())


def test_equal_scores_give_exactly_zero_gradient() -> None:
    x, real, _ = triple(0)
    x.requires_grad_(True)
    loss, info = dmd_loss(x, real, real.clone())
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert float(info["grad_norm"]) == 0.0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_gradient_is_the_normalised_score_difference(seed: int) -> None:
    x, real, fake = triple(seed)
    x.requires_grad_(True)
    loss, info = dmd_loss(x, real, fake)
    assert loss.dtype == torch.float64
    loss.backward()
    grad, count = expected_grad(x.detach(), real, fake)
    torch.testing.assert_close(x.grad.double(), grad / count, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(loss, 0.5 * grad.square().sum() / count)
    torch.testing.assert_close(info["grad_norm"], grad.norm())


def test_descent_moves_x_towards_the_real_score() -> None:
    x, real, fake = triple(1)
    x.requires_grad_(True)
    dmd_loss(x, real, fake)[0].backward()
    step = -x.grad
    for b in range(x.shape[0]):
        cos = torch.nn.functional.cosine_similarity(step[b].flatten(), (real - fake)[b].flatten(), dim=0)
        assert float(cos) == pytest.approx(1.0, abs=1e-5)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 100.0))
def test_gradient_does_not_depend_on_the_error_scale(seed: int, scale: float) -> None:
    # Scaling every x0 estimate's distance from x by c leaves the normalised gradient unchanged.
    x, real, fake = triple(seed)
    x1 = x.clone().requires_grad_(True)
    dmd_loss(x1, real, fake)[0].backward()
    x2 = x.clone().double().requires_grad_(True)
    dmd_loss(x2, x.double() + scale * (real.double() - x.double()),
             x.double() + scale * (fake.double() - x.double()))[0].backward()
    torch.testing.assert_close(x2.grad, x1.grad.double(), rtol=1e-4, atol=1e-10)


def test_masked_frames_get_zero_gradient_and_do_not_enter_the_normaliser() -> None:
    x, real, fake = triple(2)
    mask = torch.tensor([[False, False, True, True], [False, True, True, True], [True, True, True, True]])
    x1 = x.clone().requires_grad_(True)
    loss, _ = dmd_loss(x1, real, fake, mask)
    loss.backward()
    grad, count = expected_grad(x, real, fake, mask)
    torch.testing.assert_close(x1.grad.double(), grad / count, rtol=1e-5, atol=1e-9)
    assert torch.equal(x1.grad[0, :, :2], torch.zeros_like(x1.grad[0, :, :2]))
    assert torch.equal(x1.grad[1, :, :1], torch.zeros_like(x1.grad[1, :, :1]))

    # Rewriting the context frames (x, real and fake alike) changes nothing.
    x2, real2, fake2 = x.clone(), real.clone(), fake.clone()
    for t in (x2, real2, fake2):
        t[0, :, :2] = torch.randn(t[0, :, :2].shape) * 50
        t[1, :, 0] = float("nan")
    x2.requires_grad_(True)
    loss2, _ = dmd_loss(x2, real2, fake2, mask)
    loss2.backward()
    torch.testing.assert_close(loss2, loss)
    torch.testing.assert_close(x2.grad, x1.grad)


def test_zero_normaliser_gives_zero_gradient_not_nan() -> None:
    x, _, fake = triple(3)
    x.requires_grad_(True)
    loss, info = dmd_loss(x, x.detach().clone(), fake)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert all(bool(torch.isfinite(v)) for v in info.values())


def test_shape_errors_are_named() -> None:
    x, real, fake = triple(4)
    with pytest.raises(ValueError, match=r"real_x0 \(3, 2, 4, 3, 2\)"):
        dmd_loss(x, real[..., :2], fake)
    with pytest.raises(ValueError, match=r"mask of shape \(3, 3\)"):
        dmd_loss(x, real, fake, torch.ones(3, 3, dtype=torch.bool))
