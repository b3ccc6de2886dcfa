"""LongLive-RAG (arXiv 2606.02553), training-free: history as a searchable memory.

The paper's rule: at each new block, a query embedding of the latest latents retrieves the top-K
relevant historical latents, which join the local window as attention context, so the generator
conditions on non-local history rather than only on a drifting recent window. Its learned embedding
(trained with a Window Temporal Delta loss) is replaced here by the model's own frame summaries
(mean keys of one layer), which makes the policy training-free.

Our reading of what the paper leaves open:

- the searchable history is an ``archive`` of un-attended frames in storage (bounded by ``archive``;
  the oldest archived frame is dropped when full), so its K/V are ready to attend, no re-encoding;
- the query embedding is the mean summary of the chunk just committed (the latest latents; the
  next chunk does not exist yet when its context is chosen), and relevance is cosine similarity;
- local redundancy (the problem the paper's delta loss targets) is handled without training: a
  candidate whose summary is within ``redundancy`` cosine of one already retrieved is skipped, so K
  retrievals cover K different moments rather than K copies of one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from memory_policies.base import ARCHIVE, MemoryState, PositionMode, SummaryReduce, SummarySpec
from memory_policies.registry import register_policy
from memory_policies.windowed import WindowedPolicy


@register_policy("longlive_rag")
class LongLiveRAG(WindowedPolicy):
    """Sink + ``retrieved`` frames from an ``archive`` by similarity to the latest chunk + ``recent`` window.

    Args:
        sink: first frames kept forever.
        retrieved: archived frames attended per chunk (top-K).
        recent: recent frames visible, the query chunk included.
        archive: frames held in storage for retrieval (not attended unless retrieved).
        redundancy: skip a candidate this similar (cosine) to one already retrieved.
        summary / summary_layer: the frame embedding (see :class:`SummarySpec`).
    """

    def __init__(self, sink: int = 2, retrieved: int = 4, recent: int = 4, archive: int = 48,
                 redundancy: float = 0.99, summary: SummaryReduce = "mean_key", summary_layer: int | None = 0,
                 position_mode: PositionMode = "bounded", rope_length: int = 21) -> None:
        super().__init__(sink=sink, recent=recent, position_mode=position_mode, rope_length=rope_length)
        if retrieved < 0 or recent < 1 or archive < retrieved:
            raise ValueError(
                f"need retrieved >= 0, recent >= 1, archive >= retrieved; got retrieved={retrieved}, "
                f"recent={recent}, archive={archive}"
            )
        if not -1.0 <= redundancy <= 1.0:
            raise ValueError(f"redundancy is a cosine similarity in [-1, 1], got {redundancy}")
        self.retrieved = retrieved
        self.archive = archive
        self.redundancy = redundancy
        self.summary: SummaryReduce = summary
        self.summary_layer = summary_layer

    def region_size(self) -> int:
        return self.retrieved

    def storage(self, chunk_frames: int) -> int:
        return self.sink + self.archive + max(self.recent - chunk_frames, 0)

    def needs_summaries(self) -> bool:
        return True

    def summary_spec(self) -> SummarySpec:
        return SummarySpec(self.summary, self.summary_layer)

    def ablation_hparams(self) -> dict[str, object]:
        return {
            **super().ablation_hparams(),
            "memory/retrieved": self.retrieved,
            "memory/archive": self.archive,
            "memory/redundancy": self.redundancy,
        }

    def _update_regions(
        self, state: MemoryState, new_frames: list[int], summaries: torch.Tensor | None
    ) -> None:
        assert summaries is not None  # commit() enforces needs_summaries()
        bank: dict[int, torch.Tensor] = state.extra.setdefault("summaries", {})  # type: ignore[assignment]
        sink = set(state.regions["sink"])
        bank.update({f: s.detach().float().flatten() for f, s in zip(new_frames, summaries) if f not in sink})
        self._slide_window(state, new_frames)
        fast = set(state.regions["fast"])
        archive = state.regions[ARCHIVE]
        archive.extend(f for f in new_frames if f not in fast and f not in sink)
        archive.extend(f for f in sorted(bank) if f not in fast and f not in archive and f < new_frames[0])
        archive.sort()
        del archive[: max(0, len(archive) - self.archive)]
        for frame in [f for f in bank if f not in fast and f not in archive]:
            del bank[frame]
        query = summaries.float().flatten(1).mean(0)
        state.regions["slow"] = sorted(self._retrieve(query, archive, bank))

    def _retrieve(self, query: torch.Tensor, archive: list[int], bank: dict[int, torch.Tensor]) -> list[int]:
        if not archive or self.retrieved == 0:
            return []
        unit = F.normalize(torch.stack([bank[f] for f in archive]), dim=-1)
        scores = (unit @ F.normalize(query, dim=0)).tolist()
        pairwise = (unit @ unit.T).tolist()  # one host transfer, then plain Python
        chosen: list[int] = []
        for index in sorted(range(len(archive)), key=lambda i: (-scores[i], -archive[i])):
            if len(chosen) == self.retrieved:
                break
            if all(pairwise[index][other] <= self.redundancy for other in chosen):
                chosen.append(index)
        return [archive[i] for i in chosen]
