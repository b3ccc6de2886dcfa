"""Keyframes spread uniformly over the whole history, plus a recent window."""

from __future__ import annotations

import torch

from memory_policies.base import MemoryPolicy, MemoryState, PositionMode, check_recent_window, recent_frames
from memory_policies.registry import register_policy


@register_policy("keyframe")
class Keyframe(MemoryPolicy):
    """Up to ``keyframes`` frames evenly spaced over everything seen so far + a recent ``window``.

    Bounded memory cannot re-sample frames it already dropped, so keyframes live on a grid of
    stride ``s`` (frames with ``index % s == 0``); when the grid overflows, ``s`` doubles and every
    other keyframe is dropped. Coverage stays uniform over the whole history at any length.
    ``window`` counts the query chunk, as in :class:`SlidingWindow`.
    """

    def __init__(
        self,
        sink: int = 0,
        keyframes: int = 12,
        window: int = 6,
        position_mode: PositionMode = "bounded",
        rope_length: int = 21,
    ) -> None:
        super().__init__(sink=sink, position_mode=position_mode, rope_length=rope_length)
        if keyframes < 0 or window < 1:
            raise ValueError(
                f"keyframes must be >= 0 and window >= 1, got keyframes={keyframes}, window={window}"
            )
        self.keyframes = keyframes
        self.window = window

    def budget(self, chunk_frames: int) -> int:
        return self.sink + self.keyframes + max(self.window - chunk_frames, 0)

    def validate(self, chunk_frames: int) -> None:
        check_recent_window("window", self.window, chunk_frames)
        super().validate(chunk_frames)

    def ablation_hparams(self) -> dict[str, object]:
        return {
            **super().ablation_hparams(),
            "memory/keyframes": self.keyframes,
            "memory/window": self.window,
        }

    def _update_regions(
        self, state: MemoryState, new_frames: list[int], summaries: torch.Tensor | None
    ) -> None:
        state.regions["fast"] = recent_frames(new_frames, self.window - state.chunk_frames)
        if self.keyframes == 0:
            return
        stride = int(state.extra.get("stride", 1))
        slow = state.regions["slow"]
        sink = set(state.regions["sink"])
        slow.extend(f for f in new_frames if f % stride == 0 and f not in sink)
        while len(slow) > self.keyframes:
            stride *= 2
            slow[:] = [f for f in slow if f % stride == 0]
        state.extra["stride"] = stride
