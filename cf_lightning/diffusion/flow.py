"""Rectified-flow schedule as Wan2.1 uses it.

Conventions (shared by every module that touches noise levels):

- ``sigma`` in [0, 1] is the noise level: ``x_t = (1 - sigma) * x0 + sigma * eps``; ``sigma = 1`` is pure
  noise, ``sigma = 0`` clean data.
- The network predicts the velocity ``v = eps - x0`` (constant along the straight path), and is fed the
  timestep ``t = 1000 * sigma``.
- Latents are ``[B, C, F, H, W]``. A ``sigma`` of shape ``[B]`` is one noise level per sample; ``[B, F]`` is
  one per latent frame (diffusion forcing / chunk-wise students). Any other tensor shape may use ``[B]``.
- ``shift`` warps a uniform grid towards high noise, ``shift * s / (1 + (shift - 1) * s)``; Wan trains and
  samples with shift 5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(sigma: Tensor | float, shift: float) -> Tensor | float:
    """Warp noise levels towards 1 so that few-step schedules spend their steps where structure forms."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * sigma / (1 + (shift - 1) * sigma)


def timestep_from_sigma(sigma: Tensor | float) -> Tensor | float:
    """The network's timestep input: Wan embeds ``1000 * sigma``, not sigma itself."""
    return sigma * NUM_TRAIN_TIMESTEPS


def sigma_from_timestep(timestep: Tensor | float) -> Tensor | float:
    """Inverse of :func:`timestep_from_sigma`, for configs written in timesteps (e.g. 1000, 750, 500, 250)."""
    return timestep / NUM_TRAIN_TIMESTEPS


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # bf16/fp16 latents would round sigma (and 1 - sigma) to 8 or 11 bits; mix in at least float32.
    return torch.promote_types(dtype, torch.float32)


def _expand_sigma(sigma: Tensor | float, like: Tensor) -> Tensor:
    """Reshape ``sigma`` so it broadcasts against ``like``; per-frame sigmas land on the frame axis (dim 2).

    Returned in at least float32 on ``like``'s device, so callers mix in full precision and cast back.
    """
    dtype = _compute_dtype(like.dtype)
    sigma = torch.as_tensor(sigma, dtype=dtype, device=like.device)
    if sigma.ndim == 0:
        return sigma
    batch = like.shape[0]
    if sigma.ndim == 1:
        if sigma.shape[0] != batch:
            raise ValueError(f"sigma of shape {tuple(sigma.shape)} does not match batch {batch} of x "
                             f"with shape {tuple(like.shape)}")
        return sigma.view(batch, *([1] * (like.ndim - 1)))
    if sigma.ndim == 2:
        if like.ndim != 5:
            raise ValueError(f"per-frame sigma of shape {tuple(sigma.shape)} needs latents [B, C, F, H, W], "
                             f"got x with shape {tuple(like.shape)}")
        if tuple(sigma.shape) != (batch, like.shape[2]):
            raise ValueError(f"per-frame sigma of shape {tuple(sigma.shape)} must be [B, F] = "
                             f"[{batch}, {like.shape[2]}] for x with shape {tuple(like.shape)}")
        return sigma.view(batch, 1, like.shape[2], 1, 1)
    raise ValueError(f"sigma must be a scalar, [B] or [B, F]; got shape {tuple(sigma.shape)}")


def expand_frame_mask(mask: Tensor, like: Tensor) -> Tensor:
    """Turn a ``[B, F]`` boolean latent-frame mask into one that broadcasts against ``[B, C, F, H, W]``."""
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if like.ndim != 5 or tuple(mask.shape) != (like.shape[0], like.shape[2]):
        raise ValueError(f"mask of shape {tuple(mask.shape)} must be [B, F] for latents [B, C, F, H, W]; "
                         f"got latents of shape {tuple(like.shape)}")
    return mask.to(like.device).view(like.shape[0], 1, like.shape[2], 1, 1)


def add_noise(x0: Tensor, eps: Tensor, sigma: Tensor | float) -> Tensor:
    """``x_t = (1 - sigma) * x0 + sigma * eps``: the straight path the velocity target is constant on."""
    if x0.shape != eps.shape:
        raise ValueError(f"x0 shape {tuple(x0.shape)} and eps shape {tuple(eps.shape)} differ")
    s = _expand_sigma(sigma, x0)
    return ((1 - s) * x0 + s * eps).to(x0.dtype)


def velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    """The flow-matching regression target ``eps - x0``."""
    return eps - x0


def x0_from_velocity(x_t: Tensor, v: Tensor, sigma: Tensor | float) -> Tensor:
    """Clean estimate from a velocity prediction: DMD and few-step students work in x0 space."""
    s = _expand_sigma(sigma, x_t)
    return (x_t - s * v).to(x_t.dtype)


def eps_from_velocity(x_t: Tensor, v: Tensor, sigma: Tensor | float) -> Tensor:
    """Noise endpoint of a velocity prediction (ERFT banks the error of this estimate)."""
    s = _expand_sigma(sigma, x_t)
    return (x_t + (1 - s) * v).to(x_t.dtype)


def velocity_from_x0(x_t: Tensor, x0: Tensor, sigma: Tensor | float) -> Tensor:
    """Velocity that leads from ``x_t`` to ``x0``, for models or critics that predict x0.

    Divides by sigma, so sigma must be > 0 (not checked: that would sync the device).
    """
    s = _expand_sigma(sigma, x_t)
    return ((x_t - x0) / s).to(x_t.dtype)


def sample_sigmas(
    batch: int,
    generator: torch.Generator | None = None,
    shift: float = 5.0,
    min_sigma: float = 0.02,
    max_sigma: float = 0.98,
    per_frame: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Training / score noise levels: uniform, then shifted, then clamped (Self-Forcing's DMD timesteps).

    The clamp keeps DMD away from the ends where the real and fake scores carry no signal. Returns float32
    of shape ``[batch]`` or ``[batch, per_frame]``, on the generator's device when one is given.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if per_frame is not None and per_frame < 1:
        raise ValueError(f"per_frame must be None or >= 1, got {per_frame}")
    if not 0.0 <= min_sigma <= max_sigma <= 1.0:
        raise ValueError(f"need 0 <= min_sigma <= max_sigma <= 1, got min_sigma={min_sigma}, "
                         f"max_sigma={max_sigma}")
    shape = (batch,) if per_frame is None else (batch, per_frame)
    if generator is not None:
        device = generator.device
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    return shift_sigma(u, shift).clamp(min_sigma, max_sigma)


def warp_timesteps(timesteps: Sequence[float] | Tensor, shift: float = 5.0) -> Tensor:
    """Sigmas of a timestep list given on the unshifted 0..1000 grid, as Self-Forcing's
    ``warp_denoising_step`` does: [1000, 750, 500, 250] with shift 5 -> [1, 0.9375, 0.8333, 0.625]."""
    t = torch.as_tensor(timesteps, dtype=torch.float64)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence, got shape {tuple(t.shape)}")
    if bool(((t < 0) | (t > NUM_TRAIN_TIMESTEPS)).any()):
        raise ValueError(f"timesteps must lie in [0, {NUM_TRAIN_TIMESTEPS}], got {t.tolist()}")
    return shift_sigma(sigma_from_timestep(t), shift).to(torch.float32)


def denoising_sigmas(steps: int = 4, shift: float = 5.0) -> Tensor:
    """The few-step student's noise levels (no trailing 0: the last step outputs its x0 estimate).

    ``steps`` evenly spaced timesteps from 1000 down, warped by ``shift``; 4 steps give the paper's
    1000, 750, 500, 250.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return warp_timesteps([NUM_TRAIN_TIMESTEPS * (1 - i / steps) for i in range(steps)], shift)


def sampling_sigmas(steps: int = 50, shift: float = 5.0) -> Tensor:
    """A many-step ODE schedule from 1 to 0 (``steps + 1`` entries, last one exactly 0), as Wan samples."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return shift_sigma(grid, shift).to(torch.float32)


def flow_matching_loss(pred_v: Tensor, x0: Tensor, eps: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error against ``eps - x0``, over the latent frames selected by ``mask`` only.

    ``mask`` (``[B, F]`` bool) marks the frames that count, e.g. the target of a context teacher. Unmasked
    positions are removed before squaring, so neither their values (even NaN) nor their gradients leak
    in. The mean is over all selected elements of the batch; an all-False mask gives 0.
    """
    if not (pred_v.shape == x0.shape == eps.shape):
        raise ValueError(f"shapes differ: pred_v {tuple(pred_v.shape)}, x0 {tuple(x0.shape)}, "
                         f"eps {tuple(eps.shape)}")
    diff = pred_v.float() - velocity_target(x0, eps).float()
    if mask is None:
        return diff.square().mean()
    m = expand_frame_mask(mask, pred_v)
    diff = torch.where(m, diff, torch.zeros((), dtype=diff.dtype, device=diff.device))
    per_frame = pred_v.shape[1] * pred_v.shape[3] * pred_v.shape[4]
    count = (m.sum() * per_frame).clamp_min(1)
    return diff.square().sum() / count
