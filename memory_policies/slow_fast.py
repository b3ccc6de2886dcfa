"""Slow-Fast Memory (Context Forcing, arXiv 2602.06028, Sec. 3.3 / Eq. 7-8).

Three named regions: an attention ``sink`` (first frames, never evicted), a ``fast`` FIFO of the
most recent frames, and a ``slow`` memory of salient frames. Every ``interval`` chunks the chunk's
first frame is a candidate for slow memory; it is admitted when it is surprising (cosine similarity
of its summary to a reference below ``threshold``) or, for the ``uniform`` ablation, always. A
full slow memory evicts its oldest entry. Decisions are taken once per clean chunk, for all layers
at once, which keeps noisy denoising calls out of memory (unlike the reference code).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from memory_policies.base import (
    MemoryPolicy,
    MemoryState,
    PositionMode,
    SummaryReduce,
    SummarySpec,
    check_recent_window,
    recent_frames,
)
from memory_policies.registry import register_policy

Admission = Literal["surprisal", "uniform"]
Reference = Literal["previous", "last_admitted"]


@register_policy("slow_fast")
class SlowFast(MemoryPolicy):
    """Sink + slow (surprisal or uniform admission, FIFO) + fast window, bounded positions.

    Args:
        sink: first frames kept forever (paper: 3).
        slow: capacity of the salient-frame memory (paper: 12).
        fast: recent frames visible, the query chunk included (paper: 6).
        threshold: admit when cosine similarity < threshold (paper: 0.95 for Wan keys; calibrate
            per model with :func:`memory_policies.calibrate_threshold`).
        admission: ``surprisal`` (paper) or ``uniform`` (every ``interval`` chunks, the ablation).
        interval: consolidate every this many chunks (paper: 2).
        compare_to: ``previous`` frame (paper Eq. 7) or the ``last_admitted`` slow frame.
        summary / summary_layer: what the model hands as a frame summary (see :class:`SummarySpec`).
        position_mode: ``bounded`` keeps positions in ``[0, rope_length)`` (paper Eq. 8).
    """

    def __init__(self, sink: int = 3, slow: int = 12, fast: int = 6, threshold: float = 0.95,
                 admission: Admission = "surprisal", interval: int = 2, compare_to: Reference = "previous",
                 summary: SummaryReduce = "mean_key", summary_layer: int | None = None,
                 position_mode: PositionMode = "bounded", rope_length: int = 21) -> None:
        super().__init__(sink=sink, position_mode=position_mode, rope_length=rope_length)
        if slow < 0 or fast < 1 or interval < 1:
            raise ValueError(
                f"need slow >= 0, fast >= 1, interval >= 1; got slow={slow}, fast={fast}, interval={interval}"
            )
        if admission not in ("surprisal", "uniform"):
            raise ValueError(f"unknown admission {admission!r}; allowed: surprisal, uniform")
        if compare_to not in ("previous", "last_admitted"):
            raise ValueError(f"unknown compare_to {compare_to!r}; allowed: previous, last_admitted")
        if summary not in ("mean_key", "token_keys"):
            raise ValueError(f"unknown summary {summary!r}; allowed: mean_key, token_keys")
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
        self.slow = slow
        self.fast = fast
        self.threshold = threshold
        self.admission: Admission = admission
        self.interval = interval
        self.compare_to: Reference = compare_to
        self.summary: SummaryReduce = summary
        self.summary_layer = summary_layer

    def budget(self, chunk_frames: int) -> int:
        return self.sink + self.slow + max(self.fast - chunk_frames, 0)

    def needs_summaries(self) -> bool:
        return self.admission == "surprisal"

    def summary_spec(self) -> SummarySpec:
        return SummarySpec(self.summary, self.summary_layer)

    def validate(self, chunk_frames: int) -> None:
        check_recent_window("fast", self.fast, chunk_frames)
        super().validate(chunk_frames)

    def ablation_hparams(self) -> dict[str, object]:
        return {**super().ablation_hparams(), "memory/slow": self.slow, "memory/fast": self.fast,
                "memory/threshold": self.threshold, "memory/admission": self.admission,
                "memory/interval": self.interval, "memory/compare_to": self.compare_to,
                "memory/summary": self.summary}

    def _update_regions(
        self, state: MemoryState, new_frames: list[int], summaries: torch.Tensor | None
    ) -> None:
        state.regions["fast"] = recent_frames(new_frames, self.fast - state.chunk_frames)
        candidate = new_frames[0]
        consolidate = state.chunks_committed % self.interval == 0 and candidate not in state.regions["sink"]
        slow = state.regions["slow"]
        if consolidate and self.slow > 0 and self._admit(state, summaries):
            slow.append(candidate)
            if summaries is not None:
                state.extra["last_admitted"] = summaries[0].detach()
        # Capacity counts frames the fast window does not already hold, so a fresh admission costs
        # no slow slot until it ages out of the fast window; FIFO eviction from then on.
        fast = set(state.regions["fast"])
        while sum(f not in fast for f in slow) > self.slow:
            slow.pop(0)
        if summaries is not None:
            state.extra["previous"] = summaries[-1].detach()

    def _admit(self, state: MemoryState, summaries: torch.Tensor | None) -> bool:
        if self.admission == "uniform":
            return True
        assert summaries is not None  # commit() enforces needs_summaries()
        reference = state.extra.get(self.compare_to)
        if reference is None:  # nothing to compare with: the first candidate is always new
            return True
        return similarity(summaries[0], reference) < self.threshold  # type: ignore[arg-type]


def similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two frame summaries, computed in float32 for stable decisions."""
    return float(F.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0))


def calibrate_threshold(summaries: torch.Tensor, quantile: float = 0.1) -> tuple[float, torch.Tensor]:
    """Pick tau as a quantile of consecutive-frame similarity over ``[num_frames, dim]`` summaries.

    The paper's 0.95 holds for Wan keys only: on another model or world, same-scene similarities can
    sit anywhere. With ``quantile=q`` about a fraction ``q`` of frame boundaries count as surprising.
    Returns the threshold and the similarities (for a histogram).
    """
    if summaries.ndim != 2 or summaries.shape[0] < 2:
        raise ValueError(f"summaries must be [num_frames >= 2, dim], got {tuple(summaries.shape)}")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    sims = F.cosine_similarity(summaries[1:].float(), summaries[:-1].float(), dim=-1)
    return float(torch.quantile(sims, quantile)), sims
