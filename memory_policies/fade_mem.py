"""FadeMem (arXiv 2606.10671): distance-aware consolidation, dense near and sparse far, in one bounded cache.

The paper's rule: new history enters as fine-grained entries; older adjacent entries are merged
progressively under a power-law temporal allocation, so an entry's temporal extent grows with its
distance from the present (fine details decorrelate fast, scene structure and identity last).

Our reading of what the paper leaves open:

- unit: a latent frame; a merged entry holds the mean of its frames' keys and values (weights by
  member count) and is read at the position of its member nearest the members' centre;
- allocation: merging adjacent entries ``a`` and ``b`` costs ``(span_a + span_b) / age^alpha``, with
  ``span`` the number of frames an entry stands for and ``age`` how many frames ago its newest
  member was; whenever the consolidated memory holds more than ``entries`` entries, the cheapest
  adjacent pair merges. At equilibrium an entry at age ``d`` spans about ``d^alpha`` frames, which is
  the power law (``alpha = 1``: spans proportional to distance, ``0``: equal spans);
- the recent window is never merged and the sink is never merged (the paper's cache has no sink;
  ``sink=0`` gives its single-cache form).
"""

from __future__ import annotations

import torch

from memory_policies.base import MemoryState
from memory_policies.merging import members, merge
from memory_policies.registry import register_policy
from memory_policies.windowed import WindowedPolicy


@register_policy("fade_mem")
class FadeMem(WindowedPolicy):
    """Sink + ``entries`` consolidated entries (power-law spans) + fine-grained ``recent`` window.

    Args:
        sink: first frames kept forever.
        entries: consolidated entries older than the recent window.
        recent: recent frames visible, the query chunk included (>= 2 chunks, so every frame is stored once
            as a fine-grained entry before it can merge).
        alpha: power-law exponent of the temporal allocation (spans grow like ``age^alpha``).
    """

    def __init__(self, sink: int = 2, entries: int = 4, recent: int = 4, alpha: float = 1.0,
                 rope_length: int = 21) -> None:
        super().__init__(sink=sink, recent=recent, rope_length=rope_length)
        if entries < 1 or recent < 1 or alpha < 0:
            raise ValueError(
                f"need entries >= 1, recent >= 1, alpha >= 0; got entries={entries}, recent={recent}, "
                f"alpha={alpha}"
            )
        self.entries = entries
        self.alpha = alpha

    def region_size(self) -> int:
        return self.entries

    def merges_entries(self) -> bool:
        return True

    @property
    def fixed_positions(self) -> bool:
        return False  # merged keys combine un-rotated keys, rotated at every read

    def validate(self, chunk_frames: int) -> None:
        if self.recent < 2 * chunk_frames:
            raise ValueError(
                f"recent={self.recent} must be >= 2 * chunk_frames={2 * chunk_frames}: it counts the query "
                "chunk, and every frame must pass through it to be stored before it can merge"
            )
        super().validate(chunk_frames)

    def ablation_hparams(self) -> dict[str, object]:
        return {**super().ablation_hparams(), "memory/entries": self.entries, "memory/alpha": self.alpha}

    def _update_regions(
        self, state: MemoryState, new_frames: list[int], summaries: torch.Tensor | None
    ) -> None:
        sink = set(state.regions["sink"])
        leaving = [f for f in state.regions["fast"] if f not in sink]
        self._slide_window(state, new_frames)
        fast = set(state.regions["fast"])
        slow = state.regions["slow"]
        slow.extend(f for f in leaving if f not in fast and f not in slow)
        now = new_frames[-1] + 1
        while len(slow) > self.entries:
            def cost(i: int) -> float:
                span = len(members(state, slow[i])) + len(members(state, slow[i + 1]))
                age = now - max(members(state, slow[i + 1]))
                return span / age**self.alpha

            cheapest = min(range(len(slow) - 1), key=lambda i: (cost(i), i))
            merge(state, [slow[cheapest], slow[cheapest + 1]])
