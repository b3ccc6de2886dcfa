"""Revisit-world videos with known first visits, shared by the metric tests."""

from __future__ import annotations

import torch


def revisit_world(gaps: list[int], length: int = 2, frames: int = 24, size: int = 4,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One video per gap: fresh random views, then ``length`` frames that replay the views seen ``gap``
    frames earlier, at the end of the video. Returns ``(video [B, 3, F, H, W], first_visit [B, F])``
    with the revisit frames exact copies of their first visits (perfect memory)."""
    gen = torch.Generator().manual_seed(seed)
    video = torch.rand(len(gaps), 3, frames, size, size, generator=gen)
    first_visit = torch.full((len(gaps), frames), -1, dtype=torch.long)
    start = frames - length
    for b, gap in enumerate(gaps):
        if not length <= gap <= start:
            raise ValueError(
                f"gap {gap} must be in [{length}, {start}] so the replayed views are first visits"
            )
        source = torch.arange(start - gap, start - gap + length)
        video[b, :, start:] = video[b, :, source]
        first_visit[b, start:] = source
    return video, first_visit
