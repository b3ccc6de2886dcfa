"""The shape most published bounded memories share: a sink, one region of the policy's own, a recent window.

Deep Forcing, FadeMem, PackForcing, LongLive-RAG, the oracle, Infinity-RoPE and Rolling Sink differ in
what their one region holds (compressed frames or tokens, consolidated entries, selected or retrieved
entries, Belady's choices; none) and in how positions are read, not in the window: every one of them
slides a ``recent`` window that counts the query chunk, and attends to ``sink + region + recent -
chunk`` frames at most. :class:`WindowedPolicy` holds that part once.
"""

from __future__ import annotations

from memory_policies.base import (
    MemoryPolicy,
    MemoryState,
    PositionMode,
    check_recent_window,
    recent_frames,
)


class WindowedPolicy(MemoryPolicy):
    """Sink + a region sized by :meth:`region_size` + a ``recent`` window (the query chunk included).

    Subclasses check their own arguments (``recent >= 1`` among them, in their own error messages),
    report their region's size and call :meth:`_slide_window` from ``_update_regions``.
    """

    def __init__(self, sink: int, recent: int, position_mode: PositionMode = "bounded",
                 rope_length: int = 21) -> None:
        super().__init__(sink=sink, position_mode=position_mode, rope_length=rope_length)
        self.recent = recent

    def region_size(self) -> int:
        """Most frames (slots) the policy's own region attends to."""
        return 0

    def budget(self, chunk_frames: int) -> int:
        return self.sink + self.region_size() + max(self.recent - chunk_frames, 0)

    def validate(self, chunk_frames: int) -> None:
        check_recent_window("recent", self.recent, chunk_frames)
        super().validate(chunk_frames)

    def ablation_hparams(self) -> dict[str, object]:
        return {**super().ablation_hparams(), "memory/recent": self.recent}

    def _slide_window(self, state: MemoryState, new_frames: list[int]) -> None:
        """The recent window after ``new_frames``: the ``recent - chunk_frames`` newest frames."""
        state.regions["fast"] = recent_frames(new_frames, self.recent - state.chunk_frames)
