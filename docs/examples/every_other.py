"""A complete custom memory policy: keep every other frame of a recent stretch of history."""

from __future__ import annotations

import torch

from memory_policies import MemoryPolicy, MemoryState, PositionMode, register_policy


@register_policy("every_other")
class EveryOther(MemoryPolicy):
    """Sink + every second frame among the last ``reach`` frames + always the latest frame.

    Twice the reach of a sliding window for the same budget, at half the temporal resolution.
    """

    def __init__(self, sink: int = 1, reach: int = 8, position_mode: PositionMode = "bounded",
                 rope_length: int = 16) -> None:
        super().__init__(sink=sink, position_mode=position_mode, rope_length=rope_length)
        self.reach = reach

    def budget(self, chunk_frames: int) -> int:
        return self.sink + self.reach // 2 + 1

    def _update_regions(
        self, state: MemoryState, new_frames: list[int], summaries: torch.Tensor | None
    ) -> None:
        latest = new_frames[-1]
        start = max(0, latest - self.reach + 1)
        state.regions["fast"] = [
            f for f in range(start, latest + 1) if (latest - f) % 2 == 0
        ][-(self.reach // 2 + 1) :]
