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
    """Tables ``[B, L, 1, head_dim]`` for :func:`apply_rope`, broadcast over heads.

    Laid out per channel rather than per pair (``cos`` repeated for channels 2i and 2i+1, ``sin``
    negated on 2i) so that a rotation is two products and a sum over the whole head, a handful of
    tensor ops: at small sizes each op's fixed cost outweighs its arithmetic.
    """
    cos, sin = angles.cos(), angles.sin()
    cos_table = torch.stack([cos, cos], dim=-1).flatten(-2)
    sin_table = torch.stack([-sin, sin], dim=-1).flatten(-2)
    return cos_table[:, :, None].to(dtype), sin_table[:, :, None].to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, L, H, D]`` pairwise (channels 2i, 2i+1), in float32 for accuracy.

    ``cos``/``sin`` come from :func:`rope_cos_sin`. Channel 2i becomes ``x[2i] cos - x[2i+1] sin``
    and 2i+1 becomes ``x[2i+1] cos + x[2i] sin``: each output is one product of ``x``, one product of
    its pair-swapped copy and one sum, rounded exactly as the textbook per-pair form.
    """
    x32 = x.float()
    swapped = x32.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return (x32 * cos.float() + swapped * sin.float()).to(x.dtype)
