"""3D rotary position embedding with explicit temporal positions.

Wan splits each head's channels into a temporal, a height and a width band. Temporal positions are
passed in rather than derived from token order, so a memory policy can place cached frames where it
wants (bounded positions, paper Eq. 8) and keys can be stored un-rotated and rotated on read.
"""

from __future__ import annotations

import torch


def rope_bands(head_dim: int) -> tuple[int, int, int]:
    """Rotary pair counts for (time, height, width), as in Wan2.1 and diffusers."""
    spatial = head_dim // 6
    return head_dim // 2 - 2 * spatial, spatial, spatial


def _inv_freq(pairs: int, theta: float, device: torch.device) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(pairs, device=device, dtype=torch.float64) * 2 / (2 * pairs))


def rope_angles(frame_positions: torch.Tensor, grid_hw: tuple[int, int], head_dim: int,
                theta: float = 10000.0) -> torch.Tensor:
    """Angles ``[B, F*h*w, head_dim/2]`` for tokens laid out frame-major over an ``h x w`` grid.

    ``frame_positions`` is ``[B, F]`` (or ``[F]``): the temporal position of each latent frame.
    """
    if frame_positions.ndim == 1:
        frame_positions = frame_positions[None]
    t_pairs, h_pairs, w_pairs = rope_bands(head_dim)
    h, w = grid_hw
    device = frame_positions.device
    pos = frame_positions.to(torch.float64)
    t_ang = pos[..., None] * _inv_freq(t_pairs, theta, device)  # [B, F, t]
    h_ang = torch.arange(h, device=device, dtype=torch.float64)[:, None] * _inv_freq(h_pairs, theta, device)
    w_ang = torch.arange(w, device=device, dtype=torch.float64)[:, None] * _inv_freq(w_pairs, theta, device)
    batch, frames = pos.shape
    angles = torch.cat(
        [
            t_ang[:, :, None, None, :].expand(batch, frames, h, w, t_pairs),
            h_ang[None, None, :, None, :].expand(batch, frames, h, w, h_pairs),
            w_ang[None, None, None, :, :].expand(batch, frames, h, w, w_pairs),
        ],
        dim=-1,
    )
    return angles.reshape(batch, frames * h * w, head_dim // 2)


def rope_cos_sin(angles: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin shaped ``[B, L, 1, head_dim/2]`` to broadcast over heads."""
    return angles.cos()[:, :, None].to(dtype), angles.sin()[:, :, None].to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, L, H, D]`` pairwise (channels 2i, 2i+1), in float32 for accuracy."""
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    cos, sin = cos.float(), sin.float()
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)
