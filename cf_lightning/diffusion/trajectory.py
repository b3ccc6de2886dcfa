"""Teacher ODE trajectories for ODE-regression student init (CausVid), in pure torch.

A few-step student initialised by ODE regression learns the teacher's deterministic noise-to-sample map:
from the teacher's state at each of the student's denoising levels it regresses the trajectory's
endpoint. ``cf-data trajectories`` stores these pairs as shards and ``StudentModule`` can also make
them on the fly; both call :func:`ode_trajectory`, so the same noise gives the same pairs either way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from torch import Tensor

from cf_lightning.diffusion.flow import sampling_sigmas, timestep_from_sigma
from cf_lightning.diffusion.samplers import VelocityFn, euler_sample, guided


def guided_velocity(model: Callable[..., Tensor], context: Tensor, context_mask: Tensor | None,
                    frame_cond: Tensor | None, guidance_scale: float, negative: Tensor | None = None) -> VelocityFn:
    """``model``'s classifier-free-guided velocity for one batch of conditions (:func:`guided`: the
    unconditional branch is the null text with the same mask and frame condition, or the ``negative``
    prompt's embedding ``[n, D]``)."""
    def score(x: Tensor, sigma: Tensor, text: Tensor, text_mask: Tensor | None) -> Tensor:
        return model(x, timestep_from_sigma(sigma), text, context_mask=text_mask, frame_cond=frame_cond)

    return guided(score, context, guidance_scale, context_mask, negative=negative)


def ode_trajectory(velocity_fn: VelocityFn, noise: Tensor, levels: Sequence[float] | Tensor, ode_steps: int = 20,
                   shift: float = 5.0) -> tuple[Tensor, Tensor]:
    """Integrate ``velocity_fn`` from ``noise`` (sigma 1) to 0 and keep its states at ``levels``.

    The Euler grid is ``sampling_sigmas(ode_steps, shift)`` with every level inserted, so each state is
    taken exactly at its level instead of interpolated. Returns the endpoint ``[B, ...]`` and the states
    ``[B, S, ...]`` in the order of ``levels`` (each in (0, 1]; a level of 1 is the noise itself).
    """
    wanted = torch.as_tensor(levels, dtype=torch.float32).flatten().tolist()
    if not wanted or any(not 0.0 < s <= 1.0 for s in wanted):
        raise ValueError(f"levels must be a non-empty list of sigmas in (0, 1], got {wanted}")
    grid = sorted(set(sampling_sigmas(ode_steps, shift).tolist()) | set(wanted), reverse=True)
    states: dict[float, Tensor] = {}
    x = noise
    for current, following in pairwise(grid):
        states[current] = x
        x = euler_sample(velocity_fn, x, [current, following])
    return x, torch.stack([states[s] for s in wanted], dim=1)
