"""Revisit error per gap and the effective context length it implies.

In the revisit world a view comes back after a known gap. A model that remembers the first visit
reproduces it; a memoryless model paints something plausible but unrelated. Error per gap bucket, set
against a memoryless control measured on the same videos, gives the *measured* context length, to be
reported beside the nominal span of the memory policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any, Literal

import torch
from torchmetrics import Metric

Criterion = Literal["midpoint"] | float

_PAIR_CHUNK_ELEMENTS = 1 << 22  # bounds the temporary difference tensor to 4 M elements


def _criterion_value(criterion: Criterion) -> float:
    if criterion == "midpoint":
        return 0.5
    if isinstance(criterion, str) or not 0.0 < float(criterion) < 1.0:
        raise ValueError(f"criterion must be 'midpoint' or a float in (0, 1), got {criterion!r}")
    return float(criterion)


def _check_edges(edges: Sequence[int]) -> list[int]:
    edges = [int(e) for e in edges]
    if len(edges) < 2 or edges[0] < 0 or any(b <= a for a, b in pairwise(edges)):
        raise ValueError(f"bucket_edges must be >= 2 strictly increasing gaps starting at >= 0, got {edges}")
    return edges


def recall_scores(errors: torch.Tensor, controls: torch.Tensor) -> torch.Tensor:
    """``1 - error / control`` per bucket: 1 = perfect recall, 0 = no better than memoryless.

    NaN where a bucket has no data or its control is zero (a video that never changes cannot show
    memory, even though its revisit error is zero).
    """
    scores = 1.0 - errors / controls
    return torch.where(controls > 0, scores, torch.full_like(scores, float("nan")))


def effective_context(errors: torch.Tensor, controls: torch.Tensor, edges: Sequence[int],
                      criterion: Criterion = "midpoint") -> int:
    """Largest bucket upper edge such that every bucket up to it recalls above ``criterion``.

    A bucket passes when ``error < (1 - c) * control``, i.e. its recall score exceeds ``c``;
    ``"midpoint"`` is ``c = 0.5`` (error below halfway between the memoryless control and perfect 0),
    ``0.9`` is a stricter criterion (recall 90 %). The scan stops at the first bucket that
    fails or has no data (NaN), so a context is never claimed across an unmeasured gap. Returns 0 when
    the first bucket already fails.
    """
    edges = _check_edges(edges)
    if errors.shape != (len(edges) - 1,) or controls.shape != errors.shape:
        raise ValueError(f"errors {tuple(errors.shape)} and controls {tuple(controls.shape)} must both have "
                         f"one value per bucket ({len(edges) - 1} for edges {edges})")
    threshold = _criterion_value(criterion)
    context = 0
    for score, upper in zip(recall_scores(errors, controls).tolist(), edges[1:]):
        if not score > threshold:  # NaN fails too
            break
        context = upper
    return context


def recall_auc(errors: torch.Tensor, controls: torch.Tensor, edges: Sequence[int]) -> float:
    """Area under the recall-score curve over the gap axis, normalised to [0, 1].

    Bucket scores are clipped to [0, 1] and weighted by bucket width; buckets without data count 0.
    Unlike :func:`effective_context` it does not jump when one bucket crosses the criterion.
    """
    edges = _check_edges(edges)
    widths = torch.tensor(edges[1:], dtype=torch.float64) - torch.tensor(edges[:-1], dtype=torch.float64)
    scores = recall_scores(errors.double().cpu(), controls.double().cpu()).nan_to_num(0.0).clamp(0.0, 1.0)
    return float((scores * widths).sum() / widths.sum())


def view_ids(first_visit: torch.Tensor) -> torch.Tensor:
    """Canonical view id of every frame ``[..., F]``: the frame of its first visit (itself on a first
    view), so two frames show the same view exactly when their ids are equal."""
    index = torch.arange(first_visit.shape[-1], device=first_visit.device)
    return torch.where(first_visit >= 0, first_visit, index)


def return_frames(first_visit: torch.Tensor) -> torch.Tensor:
    """Boolean ``[..., F]``: the frame *returns* to a view seen before, i.e. shows an earlier view and
    differs from the frame before (frames that merely continue a view are not returns)."""
    views = view_ids(first_visit)
    changed = torch.ones_like(first_visit, dtype=torch.bool)
    changed[..., 1:] = views[..., 1:] != views[..., :-1]
    return changed & (first_visit >= 0)


def _pair_mse(video: torch.Tensor, target: torch.Tensor, batch: torch.Tensor, first: torch.Tensor,
              second: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between ``video[b, :, i]`` and ``target[b, :, j]`` for each index triple.

    Differences are taken directly (not via a Gram matrix) so identical frames give exactly 0, and in
    chunks so long videos of large frames never materialise all pairs at once.
    """
    per_frame = video.shape[1] * video.shape[3] * video.shape[4]
    step = max(1, _PAIR_CHUNK_ELEMENTS // per_frame)
    out = []
    for s in range(0, batch.numel(), step):
        b, i, j = batch[s:s + step], first[s:s + step], second[s:s + step]
        diff = (video[b, :, i] - target[b, :, j]).flatten(1)  # advanced indices first: [P, C*H*W]
        out.append(diff.pow(2).sum(1, dtype=torch.float64) / per_frame)
    return torch.cat(out) if out else video.new_zeros(0, dtype=torch.float64)


class RevisitError(Metric):
    """Revisit error and memoryless control per gap bucket, with the effective context length.

    ``update(video, reference, first_visit)``: ``video`` and the optional ground truth ``reference``
    are ``[B, C, F, H, W]`` (pixels or latents, any fixed scale); ``first_visit[b, f]`` is the earliest
    frame showing exactly the same view as frame ``f``, or -1 on a first visit.

    Revisit error of frame ``f`` (gap ``f - first_visit``): mean squared difference between
    ``video[f]`` and the model's own first visit ``video[first_visit]`` (self-consistency, the
    synthetic twin of the paper's first-frame DINO metric) or, with ``reference``, the ground truth
    ``reference[f]``.

    Memoryless control at gap ``g``: the same error between frame ``i`` and frame ``i - g`` (of
    ``video``, or of ``reference`` when given) over every pair whose two frames show *different* views
    (views are identified through ``first_visit``). It is what a model without memory would score at
    that gap, measured on the model's own output, so a model that paints everything one colour or drags
    an old scene into a new one gets a control near 0 and cannot pass as "perfect memory". At small gaps
    these pairs straddle scene changes: the agreement of a scene change with the frame before it.
    Cost is O(B * F * max_gap * C * H * W); evaluate on latents or small frames.

    States are per gap ``0..max_gap`` (sum-reducible; buckets are formed in :meth:`compute`); revisits
    beyond ``max_gap`` are counted in ``beyond_max_gap`` and not scored. Buckets are
    ``(edges[k], edges[k + 1]]``, e.g. ``[0, 8, 16, 32, 96]`` for gaps 1-8 / 9-16 / 17-32 / 33-96.
    Use >= 200 revisits per bucket: with fewer the midpoint criterion flips on single buckets.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, max_gap: int, bucket_edges: Sequence[int], criterion: Criterion = "midpoint",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_gap < 1:
            raise ValueError(f"max_gap must be >= 1, got {max_gap}")
        self.bucket_edges = _check_edges(bucket_edges)
        if self.bucket_edges[-1] > max_gap:
            raise ValueError(f"the last bucket edge {self.bucket_edges[-1]} exceeds max_gap={max_gap}")
        _criterion_value(criterion)
        self.max_gap = max_gap
        self.criterion = criterion
        for name, dtype in (("error_sum", torch.float64), ("error_count", torch.long),
                            ("control_sum", torch.float64), ("control_count", torch.long)):
            self.add_state(name, torch.zeros(max_gap + 1, dtype=dtype), dist_reduce_fx="sum")
        self.add_state("beyond_max_gap", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _checked_first_visit(self, video: torch.Tensor, reference: torch.Tensor | None,
                             first_visit: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5:
            raise ValueError(f"video must be [B, C, F, H, W], got shape {tuple(video.shape)}")
        if reference is not None and reference.shape != video.shape:
            raise ValueError(f"reference shape {tuple(reference.shape)} must equal video shape "
                             f"{tuple(video.shape)}")
        batch, frames = video.shape[0], video.shape[2]
        if first_visit.shape != (batch, frames):
            raise ValueError(f"first_visit must be [B, F] = {(batch, frames)} to match video, got "
                             f"{tuple(first_visit.shape)}")
        if first_visit.is_floating_point() or first_visit.dtype == torch.bool:
            raise TypeError(f"first_visit must be an integer tensor, got {first_visit.dtype}")
        fv = first_visit.to(device=video.device, dtype=torch.long)
        index = torch.arange(frames, device=video.device)
        bad = (fv < -1) | (fv >= index)
        if bad.any():
            b, f = bad.nonzero()[0].tolist()
            raise ValueError(f"first_visit[{b}, {f}] = {fv[b, f].item()} must be -1 or an earlier frame "
                             f"index in [0, {f - 1}]")
        chained = (fv >= 0) & (fv.gather(1, fv.clamp_min(0)) >= 0)
        if chained.any():
            b, f = chained.nonzero()[0].tolist()
            g = fv[b, f].item()
            raise ValueError(f"first_visit[{b}, {f}] = {g}, but frame {g} is itself a revisit of frame "
                             f"{fv[b, g].item()}; first_visit must name the earliest frame of the view")
        return fv

    def update(self, video: torch.Tensor, reference: torch.Tensor | None, first_visit: torch.Tensor) -> None:
        fv = self._checked_first_visit(video, reference, first_visit)
        video = video.detach()
        video = video if video.dtype in (torch.float32, torch.float64) else video.float()
        target = video if reference is None else reference.detach().to(device=video.device, dtype=video.dtype)
        frames = video.shape[2]

        batch, frame = (fv >= 0).nonzero(as_tuple=True)
        first = fv[batch, frame]
        gap = frame - first
        kept = gap <= self.max_gap
        self.beyond_max_gap += (~kept).sum()
        batch, frame, first, gap = batch[kept], frame[kept], first[kept], gap[kept]
        partner = first if reference is None else frame
        error = _pair_mse(video, target, batch, frame, partner)
        self.error_sum.index_add_(0, gap, error)
        self.error_count.index_add_(0, gap, torch.ones_like(gap))

        view = view_ids(fv)
        pairs = []
        for g in range(1, min(self.max_gap, frames - 1) + 1):
            b, j = (view[:, g:] != view[:, :-g]).nonzero(as_tuple=True)
            pairs.append((b, j + g, j, torch.full_like(j, g)))
        if pairs:
            batch, later, earlier, gap = (torch.cat(parts) for parts in zip(*pairs))
            self.control_sum.index_add_(0, gap, _pair_mse(video, target, batch, later, earlier))
            self.control_count.index_add_(0, gap, torch.ones_like(gap))

    def _bucketed(self, per_gap: torch.Tensor) -> torch.Tensor:
        edges = self.bucket_edges
        return torch.stack([per_gap[lo + 1:hi + 1].sum() for lo, hi in pairwise(edges)])

    def compute(self) -> dict[str, torch.Tensor]:
        """Per-bucket ``error``, ``control``, ``score`` (see :func:`recall_scores`), ``count``,
        ``control_count``; ``effective_context`` (frames, at ``criterion``), ``auc``; the per-gap curves
        ``gap_error`` / ``gap_control`` (index = gap, NaN where empty) and ``beyond_max_gap``."""
        count = self._bucketed(self.error_count)
        control_count = self._bucketed(self.control_count)
        error = self._bucketed(self.error_sum) / count
        control = self._bucketed(self.control_sum) / control_count
        return {
            "error": error,
            "control": control,
            "score": recall_scores(error, control),
            "count": count,
            "control_count": control_count,
            "effective_context": torch.tensor(
                float(effective_context(error, control, self.bucket_edges, self.criterion))),
            "auc": torch.tensor(recall_auc(error, control, self.bucket_edges)),
            "gap_error": self.error_sum / self.error_count,
            "gap_control": self.control_sum / self.control_count,
            "beyond_max_gap": self.beyond_max_gap,
        }
