"""Attention sink plus the most recent frames (Self-Forcing, LongLive)."""

from __future__ import annotations

import torch

from memory_policies.base import MemoryPolicy, MemoryState, PositionMode, check_recent_window, recent_frames
from memory_policies.registry import register_policy


@register_policy("sliding_window")
class SlidingWindow(MemoryPolicy):
    """``sink`` first frames, never evicted, plus a rolling ``window`` of recent frames.

    ``window`` counts the query chunk itself (as the paper's fast window does), so the memory keeps
    ``window - chunk_frames`` recent frames and one query chunk attends to ``sink + window`` frames.
    """

    def __init__(self, sink: int = 3, window: int = 18, position_mode: PositionMode = "bounded",
                 rope_length: int = 21) -> None:
        super().__init__(sink=sink, position_mode=position_mode, rope_length=rope_length)
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window

    def budget(self, chunk_frames: int) -> int:
        return self.sink + max(self.window - chunk_frames, 0)

    def validate(self, chunk_frames: int) -> None:
        check_recent_window("window", self.window, chunk_frames)
        super().validate(chunk_frames)

    def ablation_hparams(self) -> dict[str, object]:
        return {**super().ablation_hparams(), "memory/window": self.window}

    def _update_regions(
        self, state: MemoryState, new_frames: list[int], summaries: torch.Tensor | None
    ) -> None:
        state.regions["fast"] = recent_frames(new_frames, self.window - state.chunk_frames)
