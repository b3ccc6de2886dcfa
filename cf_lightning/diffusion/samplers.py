"""Samplers over a generic ``velocity_fn(x_t, sigma) -> v``.

Every sampler takes the model as a plain callable, so the same code drives a teacher, a student, a
guided pair (see :func:`cfg_velocity`) or an analytic field in tests. ``sigma`` is handed to the
callable as a float32 tensor of shape ``[B]``; it is the caller's business to turn it into the model's
timestep (``1000 * sigma``). Samplers do not touch grad mode: training code decides what carries a graph.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Literal

import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor], Tensor]
# (x_t, sigma [B], text context [B, L, D], its mask [B, L] or None) -> velocity
TextScoreFn = Callable[[Tensor, Tensor, Tensor, "Tensor | None"], Tensor]
GuidanceForm = Literal["uncond", "cond"]
GUIDANCE_FORMS: tuple[str, ...] = ("uncond", "cond")


def _schedule(sigmas: Sequence[float] | Tensor, min_len: int) -> list[float]:
    values = torch.as_tensor(sigmas, dtype=torch.float64).flatten().tolist()
    if len(values) < min_len:
        raise ValueError(f"need at least {min_len} sigmas, got {values}")
    if any(not 0.0 <= s <= 1.0 for s in values):
        raise ValueError(f"sigmas must lie in [0, 1], got {values}")
    if any(b >= a for a, b in pairwise(values)):
        raise ValueError(f"sigmas must be strictly decreasing, got {values}")
    return values


def _sigma_batch(sigma: float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)


def cfg_velocity(cond_v: Tensor, uncond_v: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: extrapolate from the unconditional towards the conditional velocity.

    ``scale = 1`` is the conditional prediction, ``0`` the unconditional one. Guidance is linear in the
    prediction, so applying it to velocities or to x0 estimates at the same ``x_t`` is equivalent.
    """
    if cond_v.shape != uncond_v.shape:
        raise ValueError(f"cond_v shape {tuple(cond_v.shape)} and uncond_v shape {tuple(uncond_v.shape)} differ")
    if scale == 1.0:  # exactly the conditional prediction, not one rounded through the difference
        return cond_v
    return uncond_v + scale * (cond_v - uncond_v)


def null_text(context: Tensor) -> Tensor:
    """The unconditional text: zero embeddings of the same shape. Training drops text to it
    (``cfg_dropout``) and guidance extrapolates from it, so both must use this one definition."""
    return torch.zeros_like(context)


def guidance_weight(scale: float, form: GuidanceForm = "uncond") -> float:
    """The weight ``w`` of ``uncond + w * (cond - uncond)`` for a guidance ``scale`` written in ``form``.

    ``uncond``: the scale is ``w`` itself (Wan's own sampler, our recipes). ``cond``: the Context
    Forcing / Self-Forcing reference code's ``cond + g * (cond - uncond)``, which is ``w = g + 1``: its
    guidance 4.0 is Wan's 5.0.
    """
    if form not in GUIDANCE_FORMS:
        raise ValueError(f"unknown guidance form {form!r}; allowed: {', '.join(GUIDANCE_FORMS)}")
    return scale if form == "uncond" else scale + 1.0


def negative_text(negative: Tensor, context: Tensor) -> Tensor:
    """The negative prompt's embedding ``[n, D]`` (valid tokens only) for every row of ``context``."""
    if negative.ndim != 2 or negative.shape[-1] != context.shape[-1]:
        raise ValueError(f"negative prompt embedding must be [tokens, {context.shape[-1]}], got {tuple(negative.shape)}")
    return negative.to(device=context.device, dtype=context.dtype).expand(context.shape[0], -1, -1)


def guided(score: TextScoreFn, context: Tensor, scale: float, context_mask: Tensor | None = None, *,
           form: GuidanceForm = "uncond", negative: Tensor | None = None) -> VelocityFn:
    """Classifier-free-guided velocity of ``score`` for one text ``context`` (and its mask).

    The unconditional branch is :func:`null_text` under the same mask, or, with ``negative`` (a
    negative prompt's embedding ``[n, D]``, as Wan and the reference code use), that prompt unmasked.
    ``scale`` is read in ``form`` (:func:`guidance_weight`). At weight 1 the result is the conditional
    prediction, so the unconditional forward is skipped.
    """
    weight = guidance_weight(scale, form)

    def velocity(x: Tensor, sigma: Tensor) -> Tensor:
        cond_v = score(x, sigma, context, context_mask)
        if weight == 1.0:
            return cond_v
        if negative is None:
            uncond_v = score(x, sigma, null_text(context), context_mask)
        else:
            uncond_v = score(x, sigma, negative_text(negative, context), None)
        return cfg_velocity(cond_v, uncond_v, weight)

    return velocity


def euler_sample(velocity_fn: VelocityFn, noise: Tensor, sigmas: Sequence[float] | Tensor) -> Tensor:
    """First-order ODE integration along ``sigmas`` (e.g. :func:`~cf_lightning.diffusion.flow.sampling_sigmas`).

    Returns the state at ``sigmas[-1]``; with a schedule ending in 0 that is the sample. In the flow
    parameterisation an Euler step equals a DDIM / first-order DPM-Solver++ step.
    """
    schedule = _schedule(sigmas, min_len=2)
    x = noise
    for s, s_next in pairwise(schedule):
        v = velocity_fn(x, _sigma_batch(s, x))
        x = (x + (s_next - s) * v).to(noise.dtype)
    return x
