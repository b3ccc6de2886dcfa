"""Frame-level masks for full-sequence training that match what streaming sees."""

from __future__ import annotations

import torch

from memory_policies import MemoryPolicy


def latent_summaries(clean: torch.Tensor) -> torch.Tensor:
    """``[B, F, C * h * w]``: each clean latent frame flattened, the per-frame summary a surprisal policy
    reads when it decides from data latents (teacher forcing, a teacher's data context), since the
    model's keys that streaming uses do not exist before the forward."""
    return clean.detach().float().cpu().transpose(1, 2).flatten(2)


def teacher_forcing_mask(policy: MemoryPolicy, num_frames: int, chunk_frames: int,
                         summaries: torch.Tensor | None = None) -> torch.Tensor:
    """``[2N, 2N]`` mask for the sequence ``[clean frames | noisy frames]`` (both at positions 0..N-1).

    Clean frames follow the policy's block-causal mask (what the refresh passes saw); noisy chunk c
    sees the clean memory chunk c would read when streaming, plus itself; nothing sees noisy frames
    of other chunks. One forward then equals denoising every chunk after a clean history.
    """
    return teacher_forcing_layout(policy.frame_mask(num_frames, chunk_frames, summaries), chunk_frames)


def teacher_forcing_layout(clean: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """The ``[2N, 2N]`` teacher-forcing mask around a policy's ``[N, N]`` frame mask ``clean`` (rendered
    with whatever the policy needed: summaries, attention statistics, an informed state)."""
    num_frames = clean.shape[-1]
    own_chunk = torch.block_diag(*[torch.ones(chunk_frames, chunk_frames, dtype=torch.bool)]
                                 * (num_frames // chunk_frames))
    top = torch.cat([clean, torch.zeros_like(clean)], dim=1)
    bottom = torch.cat([clean & ~own_chunk, own_chunk], dim=1)
    return torch.cat([top, bottom], dim=0)
