"""Keep every frame: the upper bound of what memory can give, and the reference in tests."""

from __future__ import annotations

import torch

from memory_policies.base import MemoryPolicy, MemoryState, PositionMode
from memory_policies.registry import register_policy


@register_policy("full")
class Full(MemoryPolicy):
    """All history in the ``fast`` region; unbounded, so only absolute positions make sense."""

    def __init__(self, position_mode: PositionMode = "absolute", rope_length: int = 1024) -> None:
        super().__init__(sink=0, position_mode=position_mode, rope_length=rope_length)

    def budget(self, chunk_frames: int) -> int | None:
        return None

    def _update_regions(
        self, state: MemoryState, new_frames: list[int], summaries: torch.Tensor | None
    ) -> None:
        state.regions["fast"].extend(new_frames)
