"""The per-frame condition's embedding, optionally on Fourier features of the condition.

A camera condition normalised to [-1, 1] that moves by a small step between neighbouring views (one
pan step) reaches the embedding MLP as two nearly equal inputs; a linear first layer then maps them to
nearly equal embeddings, so attention cannot tell the views apart by camera. Sines and cosines of the
condition at octave frequencies turn a small step into a large change of phase at the finest
frequency, while the low frequencies keep the coarse position unambiguous (NeRF-style positional
encoding).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def fourier_features(cond: torch.Tensor, frequencies: int) -> torch.Tensor:
    """``[..., k]`` -> ``[..., k * (1 + 2 * frequencies)]``: ``[c, sin(2^j pi c), cos(2^j pi c)]``, j < K.

    ``frequencies=0`` returns ``cond`` itself. Octave ``j`` has period ``2 / 2^j`` in condition units,
    so the finest period is ``2^(2 - K)``: :func:`frequencies_to_resolve` picks ``K`` from a step size.
    """
    if frequencies < 0:
        raise ValueError(f"frequencies must be >= 0 (0 = the raw condition), got {frequencies}")
    if not frequencies:
        return cond
    scales = math.pi * 2.0 ** torch.arange(frequencies, dtype=cond.dtype, device=cond.device)
    angles = (cond[..., None, :] * scales[:, None]).flatten(-2)  # [..., K * k], octave-major
    return torch.cat([cond, angles.sin(), angles.cos()], dim=-1)


def frequencies_to_resolve(step: float, max_steps_per_period: float = 4.0) -> int:
    """The fewest octaves whose finest period is at most ``max_steps_per_period`` steps of ``step``.

    ``step`` is the smallest move of the condition to tell apart (a pan step of the camera, in the
    normalised units the model sees). With the default the finest period lands between 2 and 4 steps:
    neighbouring positions differ by 90-180 degrees of its phase (well separated) and, above 2 steps,
    a step never aliases to the same phase. The coarser octaves resolve the position over the whole
    range (octave 0 spans [-1, 1] once).
    """
    if not 0.0 < step <= 2.0:
        raise ValueError(f"step must be in (0, 2], the range of a condition normalised to [-1, 1]; "
                         f"got {step}")
    if max_steps_per_period <= 2.0:
        raise ValueError(f"max_steps_per_period must exceed 2 (a shorter period aliases a step), "
                         f"got {max_steps_per_period}")
    return max(0, math.ceil(2.0 - math.log2(max_steps_per_period * step)))


class FrameCondEmbedding(nn.Sequential):
    """Linear -> SiLU -> Linear on the (optionally Fourier-encoded) per-frame condition.

    A ``Sequential`` so that its parameters keep the names ``frame_cond_embedding.0/2.*`` whatever the
    encoding: checkpoints without it load unchanged, and with ``frequencies=0`` the module computes
    exactly what the plain MLP did.
    """

    def __init__(self, cond_dim: int, frequencies: int, dim: int) -> None:
        super().__init__(nn.Linear(cond_dim * (1 + 2 * frequencies), dim), nn.SiLU(), nn.Linear(dim, dim))
        self.frequencies = frequencies

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return super().forward(fourier_features(cond, self.frequencies))
