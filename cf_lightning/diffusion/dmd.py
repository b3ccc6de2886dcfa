"""Distribution Matching Distillation (DMD) loss, as Self-Forcing and Context Forcing apply it."""

from __future__ import annotations

import torch
from torch import Tensor

from cf_lightning.diffusion.flow import expand_frame_mask


def dmd_loss(
    x: Tensor,
    real_x0: Tensor,
    fake_x0: Tensor,
    mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DMD surrogate loss whose gradient with respect to ``x`` is the normalised score difference.

    ``x`` is the generator's output (with graph); ``real_x0`` / ``fake_x0`` are the x0 estimates of the
    real score (teacher, usually with CFG) and the fake score (critic) at a re-noised copy of ``x``. The
    gradient ``(fake_x0 - real_x0) / mean|x - real_x0|`` is normalised per sample so its scale does not
    depend on how far the sample is from the data, and everything runs in float64 because the
    difference of two nearly equal predictions loses most of its bits in bf16/fp32. The loss is
    ``0.5 * mean((x - stopgrad(x - grad))^2)``, so ``d loss / d x = grad / N`` over the ``N`` selected
    elements.

    ``mask`` (``[B, F]`` bool over latent frames) selects the frames that get a gradient, e.g. the target
    part of a [clean context | target] sequence; the normaliser and the mean use those frames only, and
    the other frames get exactly zero gradient. A sample whose normaliser is 0 (``x == real_x0`` on all
    its selected elements) gets zero gradient instead of a division by zero.

    Returns the float64 loss and detached float64 diagnostics: ``grad_norm`` (L2 norm of the gradient
    field), ``normaliser_mean`` and ``real_fake_gap`` (mean ``|fake_x0 - real_x0|``).
    """
    if not (x.shape == real_x0.shape == fake_x0.shape):
        raise ValueError(f"shapes differ: x {tuple(x.shape)}, real_x0 {tuple(real_x0.shape)}, "
                         f"fake_x0 {tuple(fake_x0.shape)}")
    if x.ndim < 2:
        raise ValueError(f"x must have a batch dimension and data, got shape {tuple(x.shape)}")
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    reduce_dims = tuple(range(1, x.ndim))
    with torch.no_grad():
        x_ref = x.detach().double()
        real = real_x0.detach().double()
        fake = fake_x0.detach().double()
        if mask is None:
            m = torch.ones((), dtype=torch.bool, device=x.device)
            per_sample = torch.full((x.shape[0],), x[0].numel(), dtype=torch.float64, device=x.device)
        else:
            m = expand_frame_mask(mask, x)
            per_sample = m.sum(dim=reduce_dims).double() * (x.shape[1] * x.shape[3] * x.shape[4])
        abs_err = torch.where(m, (x_ref - real).abs(), zero)
        normaliser = abs_err.sum(dim=reduce_dims) / per_sample.clamp_min(1)
        normaliser = normaliser.view(-1, *([1] * (x.ndim - 1)))
        diff = torch.where(m, fake - real, zero)
        safe = torch.where(normaliser > 0, normaliser, torch.ones_like(normaliser))
        grad = torch.where(normaliser > 0, diff / safe, zero)
        target = x_ref - grad
        count = per_sample.sum().clamp_min(1)
    residual = torch.where(m, x.double() - target, zero)
    loss = 0.5 * residual.square().sum() / count
    diagnostics = {
        "grad_norm": grad.norm(),
        "normaliser_mean": normaliser.mean(),
        "real_fake_gap": diff.abs().sum() / count,
    }
    return loss, diagnostics
