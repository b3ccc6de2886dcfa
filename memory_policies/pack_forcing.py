"""PackForcing (arXiv 2603.25730) without its learned compressor: sink, packed mid, recent; top-k mid.

The paper's rule: three partitions of history. *Sink* frames (the first ones) and *recent* frames stay
at full resolution; everything in between becomes *mid* memory, compressed about 32x in tokens by a
learned dual-branch network, of which a dynamic top-k selection by query-key affinity joins the
attention context each block; a temporal RoPE adjustment closes the position gaps that dropped
entries leave.

Our reading, with no learned compressor:

- compression packs ``pack`` adjacent frames into one mid entry holding their mean keys and values
  (a ``pack``-fold temporal reduction; tokens per entry stay those of one frame), done once all its
  frames have left the recent window and sit in storage;
- with ``pool > 1`` a mid entry is also compressed in tokens, parameter-free: each ``pool x pool``
  window of the token grid is averaged into one token (``pool=2``: 4x fewer tokens; with ``pack=2``,
  8x in all against the paper's learned 32x), which keeps the row, hence the spatial RoPE position,
  of the window's centre cell (``pooled_rows``); the entry keeps its frame's temporal position.
  Averaging keys and values needs no training and preserves what a mean of tokens preserves (the
  coarse layout), which a tiny learned compressor would have to be trained for (not done here);
- the mid store is bounded (``mid`` entries; the oldest entry is dropped when full) and is held in
  the ``archive`` region, stored but not attended;
- query-key affinity is the cosine similarity between an entry's summary (the mean of its frames'
  mean keys) and the mean summary of the chunk just committed; the top ``selected`` entries are
  attended by the next chunk;
- the RoPE adjustment is this library's bounded position mode: attended entries pack contiguously,
  so a dropped entry never leaves a gap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memory_policies.base import ARCHIVE, MemoryState, SummaryReduce, SummarySpec, pooled_rows
from memory_policies.merging import merge
from memory_policies.registry import register_policy
from memory_policies.windowed import WindowedPolicy


@register_policy("pack_forcing")
class PackForcing(WindowedPolicy):
    """Sink + top-``selected`` of ``mid`` packed entries (``pack`` frames each) + ``recent`` window.

    Args:
        sink: first frames kept forever, full resolution.
        selected: mid entries attended per chunk (dynamic top-k).
        recent: recent frames visible, the query chunk included.
        mid: packed entries held in storage.
        pack: adjacent frames merged into one mid entry (1: no packing).
        pool: spatial pooling factor of a mid entry's tokens (1: a frame's tokens; 2: a quarter of them).
        summary / summary_layer: what affinity compares (see :class:`SummarySpec`).
    """

    def __init__(
        self,
        sink: int = 2,
        selected: int = 4,
        recent: int = 4,
        mid: int = 16,
        pack: int = 2,
        summary: SummaryReduce = "mean_key",
        summary_layer: int | None = 0,
        rope_length: int = 21,
        pool: int = 1,
    ) -> None:
        super().__init__(sink=sink, recent=recent, rope_length=rope_length)
        if selected < 0 or recent < 1 or mid < selected or pack < 1 or pool < 1:
            raise ValueError(
                f"need selected >= 0, recent >= 1, mid >= selected, pack >= 1, pool >= 1; got "
                f"selected={selected}, recent={recent}, mid={mid}, pack={pack}, pool={pool}"
            )
        self.selected = selected
        self.mid = mid
        self.pack = pack
        self.pool = pool
        self.summary: SummaryReduce = summary
        self.summary_layer = summary_layer

    def region_size(self) -> int:
        return self.selected

    def storage(self, chunk_frames: int) -> int:
        # packed entries, plus up to pack - 1 + chunk_frames frames waiting to be packed
        return self.sink + self.mid + self.pack - 1 + chunk_frames + max(self.recent - chunk_frames, 0)

    def needs_summaries(self) -> bool:
        return True

    def summary_spec(self) -> SummarySpec:
        return SummarySpec(self.summary, self.summary_layer)

    def merges_entries(self) -> bool:
        return self.pack > 1 or self.pool > 1

    def keeps_sub_frames(self) -> bool:
        return self.pool > 1

    def token_budget(self, chunk_frames: int, grid: tuple[int, int]) -> int:
        whole = self.sink + max(self.recent - chunk_frames, 0)
        return whole * grid[0] * grid[1] + self.selected * len(pooled_rows(grid, self.pool))

    @property
    def fixed_positions(self) -> bool:
        return False  # bounded positions move with the memory's contents

    def ablation_hparams(self) -> dict[str, object]:
        return {**super().ablation_hparams(), "memory/selected": self.selected, "memory/mid": self.mid,
                "memory/pack": self.pack, "memory/pool": self.pool}

    def _update_regions(
        self, state: MemoryState, new_frames: list[int], summaries: torch.Tensor | None
    ) -> None:
        assert summaries is not None  # commit() enforces needs_summaries()
        bank: dict[int, torch.Tensor] = state.extra.setdefault("summaries", {})  # type: ignore[assignment]
        waiting: list[int] = state.extra.setdefault("waiting", [])  # type: ignore[assignment]
        sink = set(state.regions["sink"])
        bank.update({f: s.detach().float().flatten() for f, s in zip(new_frames, summaries) if f not in sink})
        previous_fast = [f for f in state.regions["fast"] if f not in sink]
        self._slide_window(state, new_frames)
        fast = set(state.regions["fast"])
        archive = state.regions[ARCHIVE]
        # Frames out of the recent window wait in storage until `pack` adjacent ones were all stored
        # before this commit (a merge combines stored entries only); then they become one mid entry.
        out = [f for f in previous_fast if f not in fast] + [
            f for f in new_frames if f not in fast and f not in sink
        ]
        waiting.extend(out)
        archive.extend(out)
        while len(waiting) >= self.pack and not set(waiting[: self.pack]) & set(new_frames):
            group = waiting[: self.pack]
            del waiting[: self.pack]
            if self.merges_entries():
                summary = torch.stack([bank.pop(f) for f in group]).mean(0)
                bank[merge(state, group, pool=self.pool)] = summary
        packed = [f for f in sorted(archive) if f not in waiting]
        while len(packed) > self.mid:
            oldest = packed.pop(0)
            archive.remove(oldest)
            bank.pop(oldest, None)
            state.members.pop(oldest, None)
        archive.sort()
        query = summaries.float().flatten(1).mean(0)
        state.regions["slow"] = sorted(self._select(query, packed, bank))

    def _select(self, query: torch.Tensor, packed: list[int], bank: dict[int, torch.Tensor]) -> list[int]:
        if not packed or self.selected == 0:
            return []
        scores = F.cosine_similarity(torch.stack([bank[f] for f in packed]), query[None], dim=-1).tolist()
        ranked = sorted(range(len(packed)), key=lambda i: (-scores[i], -packed[i]))
        return [packed[i] for i in ranked[: self.selected]]
