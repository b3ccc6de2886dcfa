"""Position handling for long rollouts with sinks: Infinity-RoPE (arXiv 2511.20649) and Rolling Sink
(arXiv 2602.07775). Both keep a sink and a recent window, as a Self-Forcing cache does, and change where
(and, for Rolling Sink, what) the sink is, so a model trained on short clips keeps seeing a cache that
looks like one from inside its training horizon.

**Infinity-RoPE**, *Block-Relativistic RoPE*: temporal positions form a moving reference frame. The
newest block is rotated to the top of the base model's horizon and every earlier block is rotated back
by its true distance, so relative geometry is kept and no absolute index ever leaves the trained range;
frames too old for the horizon (the global sink, in a long video) are pinned at its bottom. Our reading:

- from the first chunk on, the query's last frame sits at ``rope_length - 1`` and each kept frame at
  ``rope_length - 1 - (its distance to that frame)``, so positions are relative from the start (the
  ``bounded`` mode of this library instead reads frames at their own indices until the video is longer
  than the range);
- a frame whose relative position would fall below the range, or onto the frame before it, moves up
  just enough to stay distinct and ordered: sink frames beyond the horizon read at ``0, 1, ...``;
- the paper's KV Flush (keep only the sink and the last frame when the prompt changes) and RoPE Cut
  (a jump in temporal coordinates for a scripted scene cut) react to prompt switches and cut commands,
  which this library's rollouts do not have: not implemented.

**Rolling Sink**, training-free cache maintenance beyond the training horizon, in two parts named by
the paper: *Sliding Indices* (the time indices of the cached blocks slide with the rollout instead of
the sink staying at the first indices) and *Sliding Semantics* (the semantic content of the cached sink
blocks is rolled periodically). The summaries we could read name these two parts without their
details, so this is our reading:

- Sliding Indices: sink, recent window and query read as one contiguous run of positions ending at the
  anchor (as Deep Forcing's re-aligned sink), so the sink always looks like the moment before the window;
- Sliding Semantics: the sink is ``sink`` consecutive frames of a *sink pool*, the first ``pool`` frames
  of the video (the part generated inside the training horizon, held in storage); every ``roll_every``
  chunks the attended sink shifts cyclically by ``sink`` frames through that pool, like ``numpy.roll``,
  so the anchor's content keeps changing the way an endless video's past would, yet never leaves the
  frames the model generated within its horizon (``roll_every: 0`` disables the roll: Sliding Indices
  only). A reading we did not implement: a sink that trails the window at a fixed lag.
"""

from __future__ import annotations

import torch

from memory_policies.base import ARCHIVE, MemoryState
from memory_policies.registry import register_policy
from memory_policies.windowed import WindowedPolicy


class _SinkWindow(WindowedPolicy):
    """Sink plus a ``recent`` window (the query chunk included), no region of its own; positions move
    every chunk."""

    def __init__(self, sink: int, recent: int, rope_length: int) -> None:
        super().__init__(sink=sink, recent=recent, rope_length=rope_length)
        if recent < 1:
            raise ValueError(f"recent must be >= 1, got {recent}")

    @property
    def fixed_positions(self) -> bool:
        return False  # relative positions move with the present

    def _update_regions(
        self, state: MemoryState, new_frames: list[int], summaries: torch.Tensor | None
    ) -> None:
        self._slide_window(state, new_frames)


@register_policy("infinity_rope")
class InfinityRoPE(_SinkWindow):
    """Sink + ``recent`` window read at Block-Relativistic positions: the query at the top of the range,
    every kept frame at its true distance behind it, frames beyond the horizon pinned at the bottom.

    Args:
        sink: first frames kept forever (the paper's global sink).
        recent: recent frames visible, the query chunk included.
        rope_length: the trained temporal range; the query's last frame reads at ``rope_length - 1``.
    """

    def __init__(self, sink: int = 1, recent: int = 20, rope_length: int = 21) -> None:
        super().__init__(sink=sink, recent=recent, rope_length=rope_length)

    def positions(self, state: MemoryState, frames: list[int], query: list[int]) -> list[int]:
        top = self.rope_length - 1
        out: list[int] = []
        for frame in frames + query:
            out.append(max(top - (query[-1] - frame), out[-1] + 1 if out else 0))
        return out


@register_policy("rolling_sink")
class RollingSink(_SinkWindow):
    """A rolling sink from the first ``pool`` frames + ``recent`` window, all at sliding (contiguous) indices.

    Args:
        sink: sink frames attended per chunk.
        recent: recent frames visible, the query chunk included.
        pool: the first frames of the video the sink rolls through (a multiple of ``sink``; held in storage).
        roll_every: chunks between two shifts of the sink by ``sink`` frames (0: the sink never rolls).
        rope_length: the trained temporal range; the run of positions ends at its top.
    """

    def __init__(self, sink: int = 3, recent: int = 18, pool: int = 12, roll_every: int = 4,
                 rope_length: int = 21) -> None:
        super().__init__(sink=sink, recent=recent, rope_length=rope_length)
        if pool < sink or roll_every < 0 or (sink and pool % sink):
            raise ValueError(f"need pool >= sink, pool a multiple of sink (the sink rolls by whole sinks) "
                             f"and roll_every >= 0; got pool={pool}, sink={sink}, roll_every={roll_every}")
        self.pool = pool
        self.roll_every = roll_every

    def storage(self, chunk_frames: int) -> int:
        return self.pool + max(self.recent - chunk_frames, 0)

    def ablation_hparams(self) -> dict[str, object]:
        return {**super().ablation_hparams(), "memory/pool": self.pool, "memory/roll_every": self.roll_every}

    def _update_regions(
        self, state: MemoryState, new_frames: list[int], summaries: torch.Tensor | None
    ) -> None:
        super()._update_regions(state, new_frames, summaries)
        available = min(self.pool, new_frames[-1] + 1)
        state.regions[ARCHIVE] = list(range(available))
        if self.sink == 0 or available < self.pool or self.roll_every == 0:
            return  # the pool is still filling (the sink holds the first frames) or the sink does not roll
        start = (state.chunks_committed + 1) // self.roll_every * self.sink % self.pool
        state.regions["sink"] = list(range(start, start + self.sink))

    def positions(self, state: MemoryState, frames: list[int], query: list[int]) -> list[int]:
        """Sliding Indices: sink, window and query in one contiguous run ending at the anchor."""
        everything = frames + query
        anchor = min(query[-1], self.rope_length - 1)
        return list(range(anchor - len(everything) + 1, anchor + 1))
