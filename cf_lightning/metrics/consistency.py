"""Streaming frame-consistency and drift metrics for long videos.

``reference="first"`` is the paper's DINOv2 / CLIP-F metric (cosine of each frame to the first frame);
``reference="previous"`` is the cosine to the previous frame, which alone says almost nothing about
memory. VBench's subject (DINO) and background (CLIP) consistency are neither: they average, for every
frame, the similarity to the previous frame and to the first frame (each clipped at 0); see
:mod:`cf_lightning.metrics.longvideo`, which reports them and the paper's scores per timestamp.
The variant is a required argument so it is always named. Videos may arrive in chunks: the
first/previous frame features are carried across ``update`` calls as plain attributes (rank-local
stream position, never synced) until :meth:`end_video` or ``reset()``.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from cf_lightning.metrics.features import FeatureExtractor
from cf_lightning.metrics.windows import TimeWindows

Reference = Literal["first", "previous"]
FrameScore = Callable[[torch.Tensor], torch.Tensor]

_RANGE_SLACK = 0.1  # values this far (as a fraction of the range) outside value_range mean a wrong range


def _check_reference(reference: str) -> None:
    if reference not in ("first", "previous"):
        raise ValueError(f"reference must be 'first' or 'previous', got {reference!r}")


def to_unit_range(video: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    """Map ``video`` from ``value_range`` to [0, 1], clamping small overshoot (decoders overshoot).

    Raises when values lie far outside the declared range: a [-1, 1] video declared as [0, 1] would
    otherwise be silently clamped and score as a different video.
    """
    low, high = value_range
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    x = (video.float() - low) / (high - low)
    if x.numel() and (x.min() < -_RANGE_SLACK or x.max() > 1 + _RANGE_SLACK):
        raise ValueError(f"video values span [{video.min().item():.3g}, {video.max().item():.3g}], far outside "
                         f"value_range={value_range}; pass the range the video is in, e.g. (-1.0, 1.0)")
    return x.clamp(0, 1)


def _check_video(video: torch.Tensor, who: str) -> None:
    if video.ndim != 5 or video.shape[1] != 3 or video.shape[2] == 0:
        raise ValueError(f"{who} expects video [B, 3, T, H, W] with T >= 1, got shape {tuple(video.shape)}")


class _FeatureStream:
    """Unit features of each video's first and latest frame, carried across chunked updates."""

    def __init__(self, extractor: FeatureExtractor, reference: Reference) -> None:
        self.extractor = extractor
        self.reference = reference
        self.reset()

    def reset(self) -> None:
        self.frames_seen = 0
        self.first: torch.Tensor | None = None
        self.previous: torch.Tensor | None = None

    def _features(self, frames: torch.Tensor) -> torch.Tensor:
        """``[B, 3, n, H, W]`` -> unit float64 features ``[B, n, D]``."""
        batch, _, n, height, width = frames.shape
        flat = frames.transpose(1, 2).reshape(batch * n, 3, height, width)
        with torch.no_grad():
            features = self.extractor(flat)
        if features.ndim != 2 or features.shape[0] != batch * n:
            raise ValueError(f"extractor must return [N, D] features for N={batch * n} frames, got "
                             f"{tuple(features.shape)}")
        return F.normalize(features.detach().double(), dim=-1).view(batch, n, -1)

    def scores(self, video: torch.Tensor, wanted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine of each wanted frame of a chunk to its reference frame.

        ``video``: the next ``T`` frames ``[B, 3, T, H, W]`` in [0, 1]; ``wanted``: ``[T]`` bool.
        Returns ``(scores [B, T] float64, scored [T] bool)``; the first frame of a video is never scored.
        Only the frames needed are passed to the extractor (a 60 s video at 16 fps scored at 10 s
        windows needs ~100 of its 960 frames). The cosine is ``1 - |a - b|^2 / 2`` of unit vectors,
        which is exactly 1.0 for identical features.
        """
        batch, _, length = video.shape[:3]
        if self.previous is not None and self.previous.shape[0] != batch:
            raise ValueError(f"batch size changed from {self.previous.shape[0]} to {batch} inside a video; "
                             "call end_video() between videos")
        scored = wanted.clone()
        if self.frames_seen == 0:
            scored[0] = False
        need = scored.clone()
        if self.reference == "first":
            need[0] |= self.frames_seen == 0
        else:
            need[:-1] |= scored[1:]
            need[-1] = True  # the reference of the next chunk's first frame
        start = self.frames_seen
        self.frames_seen += length
        values = torch.full((batch, length), float("nan"), dtype=torch.float64, device=video.device)
        if not need.any():
            return values, scored
        index = need.nonzero().squeeze(1)
        features = self._features(video[:, :, index])
        local = features.new_zeros(batch, length, features.shape[-1])
        local[:, index] = features
        if self.reference == "first":
            if start == 0:
                self.first = local[:, 0]
            reference = self.first[:, None]
        else:
            before = self.previous if self.previous is not None else torch.zeros_like(local[:, 0])
            reference = torch.cat([before[:, None], local[:, :-1]], dim=1)
        self.previous = local[:, -1]
        cosine = 1.0 - (local - reference).pow(2).sum(-1) / 2.0
        return torch.where(scored, cosine, values), scored


class _StreamingMetric(Metric):
    """A metric whose ``update`` calls continue the same videos until :meth:`end_video`.

    ``Metric.forward`` computes a per-batch value by resetting the state around a private ``update``,
    which would also drop the stream position; here ``forward`` is plain ``update`` instead.
    """

    is_differentiable = False
    full_state_update = False

    @abstractmethod
    def end_video(self) -> None:
        """Forget the stream position: the next ``update`` starts new videos."""

    def forward(self, *args: Any, **kwargs: Any) -> None:
        self.update(*args, **kwargs)

    def reset(self) -> None:
        super().reset()
        self.end_video()


class FrameConsistency(_StreamingMetric):
    """Mean cosine similarity of frame features to the first (paper) or previous frame.

    ``update(video)`` takes the next frames ``[B, 3, T, H, W]`` of the same ``B`` videos, in
    ``value_range``; call :meth:`end_video` before the next videos. Without ``windows`` every frame
    but the first counts and ``compute()`` is one number; with ``windows`` (e.g.
    :meth:`TimeWindows.paper`: 0.5 s around 10, 20, ..., 60 s at 16 fps) only window frames count and
    ``compute()`` gives one mean per timestamp ``[K]``, never pooled across timestamps (a model that
    forgets shows a falling curve, which a pooled mean would hide). Identical frames give 1.0.
    """

    higher_is_better = True

    def __init__(self, extractor: FeatureExtractor, reference: Reference, windows: TimeWindows | None = None,
                 value_range: tuple[float, float] = (0.0, 1.0), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_reference(reference)
        self.reference = reference
        self.windows = windows
        self.value_range = value_range
        self._stream = _FeatureStream(extractor, reference)
        slots = 1 if windows is None else len(windows.timestamps)
        self.add_state("cosine_sum", torch.zeros(slots, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(slots, dtype=torch.long), dist_reduce_fx="sum")

    def _slot(self, start: int, length: int, device: torch.device) -> torch.Tensor:
        """Timestamp slot of each frame of the chunk, -1 for frames outside every window."""
        if self.windows is None:
            return torch.zeros(length, dtype=torch.long, device=device)
        slot = torch.full((length,), -1, dtype=torch.long, device=device)
        end = start + length
        for k, timestamp in enumerate(self.windows.timestamps):
            frames = self.windows.window(timestamp, end)
            lo, hi = max(frames.start, start), frames.stop
            if hi > lo:
                slot[lo - start:hi - start] = k
        return slot

    def update(self, video: torch.Tensor) -> None:
        _check_video(video, "FrameConsistency")
        video = to_unit_range(video.detach(), self.value_range)
        slot = self._slot(self._stream.frames_seen, video.shape[2], video.device)
        values, scored = self._stream.scores(video, slot >= 0)
        index = slot[scored].repeat(video.shape[0])
        self.cosine_sum.index_add_(0, index, values[:, scored].flatten())
        self.count.index_add_(0, index, torch.ones_like(index))

    def end_video(self) -> None:
        self._stream.reset()

    def compute(self) -> torch.Tensor:
        """Mean cosine over the scored frames: a scalar, or ``[K]`` per timestamp with ``windows``
        (NaN where nothing was scored yet)."""
        means = self.cosine_sum / self.count
        return means[0] if self.windows is None else means


class QualityDrift(_StreamingMetric):
    """A per-frame score averaged over each video's first window minus its last window.

    The score is either ``score_fn(frames [N, 3, H, W] in [0, 1]) -> [N]`` (a quality statistic such
    as :func:`~cf_lightning.metrics.laplacian_sharpness`), or, with ``extractor``, the cosine of each
    frame's features to the first / previous frame (the first frame itself is not scored). Windows are
    the first and last ``window_frames`` scored frames of each video, so a positive ``drift`` means a
    higher-is-better score degraded over the video (FramePack / Rolling Forcing convention).

    ``update(video, end_of_video=True)``: the whole video, or, streaming, the next chunk with
    ``end_of_video=False`` on every chunk but the last. Windows are buffered per video and enter the
    synced state only when the video ends, so ``compute()`` refuses while a video is unfinished.
    """

    higher_is_better = False

    def __init__(self, window_frames: int, *, extractor: FeatureExtractor | None = None,
                 score_fn: FrameScore | None = None, reference: Reference = "first",
                 value_range: tuple[float, float] = (0.0, 1.0), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if (extractor is None) == (score_fn is None):
            raise ValueError("QualityDrift needs exactly one of extractor or score_fn")
        if window_frames < 1:
            raise ValueError(f"window_frames must be >= 1, got {window_frames}")
        _check_reference(reference)
        self.window_frames = window_frames
        self.score_fn = score_fn
        self.value_range = value_range
        self._stream = _FeatureStream(extractor, reference) if extractor is not None else None
        for name in ("first", "last"):
            self.add_state(f"{name}_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{name}_count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.end_video()

    def _frame_scores(self, video: torch.Tensor) -> torch.Tensor:
        """Scores of the scored frames of a chunk, ``[B, n]`` float64."""
        batch, _, length, height, width = video.shape
        if self._stream is not None:
            wanted = torch.ones(length, dtype=torch.bool, device=video.device)
            values, scored = self._stream.scores(video, wanted)
            return values[:, scored]
        with torch.no_grad():
            scores = self.score_fn(video.transpose(1, 2).reshape(batch * length, 3, height, width))
        if scores.shape != (batch * length,):
            raise ValueError(f"score_fn must return one score per frame, shape {(batch * length,)}, got "
                             f"{tuple(scores.shape)}")
        return scores.detach().double().view(batch, length)

    def update(self, video: torch.Tensor, end_of_video: bool = True) -> None:
        _check_video(video, "QualityDrift")
        if self._head is not None and self._head.shape[0] != video.shape[0]:
            raise ValueError(f"batch size changed from {self._head.shape[0]} to {video.shape[0]} inside a "
                             "video; pass end_of_video=True on the last chunk of each video")
        scores = self._frame_scores(to_unit_range(video.detach(), self.value_range))
        head = scores if self._head is None else torch.cat([self._head, scores], dim=1)
        self._head = head[:, :self.window_frames]
        self._tail = (scores if self._tail is None else torch.cat([self._tail, scores], 1))[:, -self.window_frames:]
        self._scored += scores.shape[1]
        if not end_of_video:
            return
        scored, head, tail = self._scored, self._head, self._tail
        self.end_video()
        if scored < self.window_frames:
            raise ValueError(f"a video ended after {scored} scored frames, fewer than "
                             f"window_frames={self.window_frames}")
        self.first_sum += head.sum()
        self.first_count += head.numel()
        self.last_sum += tail.sum()
        self.last_count += tail.numel()

    def end_video(self) -> None:
        """Drop the unfinished video's buffered windows (finished videos are already in the state)."""
        self._scored = 0
        self._head: torch.Tensor | None = None
        self._tail: torch.Tensor | None = None
        if self._stream is not None:
            self._stream.reset()

    def compute(self) -> dict[str, torch.Tensor]:
        """``first`` and ``last`` window means and ``drift = first - last``."""
        if self._head is not None:
            raise RuntimeError("a video is still streaming: pass end_of_video=True with its last chunk "
                               "(or call end_video() to drop it) before compute()")
        first = self.first_sum / self.first_count
        last = self.last_sum / self.last_count
        return {"first": first, "last": last, "drift": first - last}
