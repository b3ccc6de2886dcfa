"""Per-timestamp long-video scores, as the Context Forcing paper and VBench report them.

For each timestamp window (see :class:`~cf_lightning.metrics.windows.TimeWindows`) of one video:

- ``dino_first`` / ``clipf_first``: mean cosine of the window's frames to the first frame, with
  structural (DINOv2) / appearance (CLIP image) features: the paper's Table 1 DINOv2 and CLIP-F.
- ``dino_prev`` / ``clipf_prev``: cosine between the mean feature of this window and of the previous
  one (the opening window ``[0, width)`` before the first timestamp): how much changed since the last
  reported time, which a cut between two timestamps shows at the later one.
- ``clip_t``: mean cosine of the window's CLIP image embeddings to the prompt's CLIP text embedding.
- ``subject`` / ``background``: VBench subject (DINO) and background (CLIP) consistency: for every
  frame ``i >= 1`` the mean of ``max(0, cos(f_i, f_{i-1}))`` and ``max(0, cos(f_i, f_0))``.
- ``flicker``: VBench temporal flickering, ``1 - mean |x_i - x_{i-1}|`` over adjacent frames with
  pixels in [0, 1]; 1 means no frame-to-frame change.
- ``quality``: mean per-frame quality score (default: :func:`laplacian_sharpness`, a weight-free
  stand-in for an imaging-quality model).

and per video ``quality_drift``: quality of the opening window minus that of the last window
(positive = the video degraded). Only the frames the windows need are ever featurised, so a 60 s
video costs ~100 feature passes, and callers can decode only those (:func:`needed_frames`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from cf_lightning.metrics.consistency import to_unit_range
from cf_lightning.metrics.features import FeatureExtractor, laplacian_sharpness
from cf_lightning.metrics.windows import TimeWindows

FrameScore = Callable[[torch.Tensor], torch.Tensor]

SERIES = ("dino_first", "dino_prev", "clipf_first", "clipf_prev", "clip_t", "subject", "background", "flicker",
          "quality")
HIGHER_IS_BETTER = dict.fromkeys(SERIES, True)
_NEEDS = {"dino_first": "structure", "dino_prev": "structure", "subject": "structure",
          "clipf_first": "appearance", "clipf_prev": "appearance", "background": "appearance",
          "clip_t": "text", "flicker": None, "quality": None}


@runtime_checkable
class TextExtractor(Protocol):
    """Maps prompts to one embedding each ``[N, D]``, in the space of a matching image extractor."""

    def __call__(self, texts: list[str]) -> torch.Tensor: ...


@dataclass
class Extractors:
    """The feature networks the scores use; a missing one leaves its scores out.

    ``structure`` plays DINOv2 (``dino_*``, ``subject``), ``appearance`` CLIP's image tower (``clipf_*``,
    ``background``), ``text`` CLIP's text tower (``clip_t``, needs ``appearance`` from the same CLIP).
    """

    structure: FeatureExtractor | None = None
    appearance: FeatureExtractor | None = None
    text: TextExtractor | None = None
    quality: FrameScore = field(default=laplacian_sharpness)

    def __post_init__(self) -> None:
        if self.text is not None and self.appearance is None:
            raise ValueError("a text extractor (CLIP-T) needs the image extractor of the same CLIP as appearance")

    def series(self) -> list[str]:
        """The per-timestamp series these extractors can score, in :data:`SERIES` order."""
        return [name for name in SERIES if _NEEDS[name] is None or getattr(self, _NEEDS[name]) is not None]


def needed_frames(windows: TimeWindows, num_frames: int) -> list[int]:
    """Sorted frame indices the scores read: frame 0, the opening window, every window and each
    window frame's predecessor (VBench's previous-frame terms and flicker)."""
    wanted = {0, *windows.opening(num_frames)}
    for window in windows.windows(num_frames):
        wanted.update(window)
        wanted.update(i - 1 for i in window if i > 0)
    return sorted(wanted)


def _unit(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.detach().double(), dim=-1)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of unit vectors as ``1 - |a - b|^2 / 2``: exactly 1.0 for identical features."""
    return 1.0 - (a - b).pow(2).sum(-1) / 2.0


@dataclass
class VideoScores:
    """One video's per-timestamp series ``{name: [K]}`` and its ``quality_drift``."""

    series: dict[str, torch.Tensor]
    quality_drift: float


def score_video(frames: torch.Tensor, index: Sequence[int], num_frames: int, windows: TimeWindows,
                extractors: Extractors, prompt: str | None = None) -> VideoScores:
    """Score one video given its frames ``frames[j]`` = frame ``index[j]`` (``[N, 3, H, W]`` in [0, 1]).

    ``index`` must cover :func:`needed_frames`; ``num_frames`` is the whole video's length.
    """
    if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[0] != len(index):
        raise ValueError(f"frames must be [N, 3, H, W] with N = len(index) = {len(index)}, got {tuple(frames.shape)}")
    position = {int(i): j for j, i in enumerate(index)}
    missing = sorted(set(needed_frames(windows, num_frames)) - set(position))
    if missing:
        raise ValueError(f"frames {missing[:8]} are needed by the windows but were not given")
    frames = frames.float().clamp(0, 1)
    opening, spans = windows.opening(num_frames), windows.windows(num_frames)

    def rows(frame_ids: Sequence[int]) -> torch.Tensor:
        """Positions in ``frames`` of the given video frame indices."""
        return torch.tensor([position[i] for i in frame_ids], dtype=torch.long)

    series: dict[str, list[float]] = {name: [] for name in extractors.series()}
    features = {}
    for role in ("structure", "appearance"):
        extractor = getattr(extractors, role)
        if extractor is not None:
            with torch.no_grad():
                features[role] = _unit(extractor(frames))
    text = None
    if extractors.text is not None:
        if prompt is None:
            raise ValueError("CLIP-T needs the video's prompt; pass prompt= (or leave the text extractor out)")
        with torch.no_grad():
            text = _unit(extractors.text([prompt]))[0]
    with torch.no_grad():
        quality = extractors.quality(frames).double()
    first = position[0]
    previous_window = opening
    for window in spans:
        now = rows(window)
        later = [i for i in window if i > 0]
        after, before = rows(later), rows([i - 1 for i in later])
        for role, prefix, vbench in (("structure", "dino", "subject"), ("appearance", "clipf", "background")):
            if role not in features:
                continue
            unit = features[role]
            series[f"{prefix}_first"].append(_cos(unit[now], unit[first]).mean().item())
            mean_now = F.normalize(unit[now].mean(0), dim=-1)
            mean_before = F.normalize(unit[rows(previous_window)].mean(0), dim=-1)
            series[f"{prefix}_prev"].append(_cos(mean_now, mean_before).item())
            to_previous = _cos(unit[after], unit[before]).clamp_min(0)
            to_first = _cos(unit[after], unit[first]).clamp_min(0)
            series[vbench].append(((to_previous + to_first) / 2).mean().item() if later else float("nan"))
        if text is not None:
            series["clip_t"].append(_cos(features["appearance"][now], text).mean().item())
        change = (frames[after] - frames[before]).abs().flatten(1).mean(1).double()
        series["flicker"].append((1.0 - change).mean().item() if later else float("nan"))
        series["quality"].append(quality[now].mean().item())
        previous_window = window
    drift = quality[rows(opening)].mean().item() - quality[rows(spans[-1])].mean().item()
    return VideoScores({k: torch.tensor(v, dtype=torch.float64) for k, v in series.items()}, drift)


def score_dense_video(video: torch.Tensor, windows: TimeWindows, extractors: Extractors,
                      prompt: str | None = None) -> VideoScores:
    """:func:`score_video` for a whole decoded video ``[3, T, H, W]`` in [0, 1]."""
    if video.ndim != 4 or video.shape[0] != 3:
        raise ValueError(f"video must be [3, T, H, W], got shape {tuple(video.shape)}")
    index = needed_frames(windows, video.shape[1])
    return score_video(video[:, index].transpose(0, 1), index, video.shape[1], windows, extractors, prompt)


class LongVideoMetrics(Metric):
    """Per-timestamp means over videos (distributed-safe): ``compute()`` gives ``{series: [K]}``, one
    value per timestamp, never pooled across timestamps, plus ``quality_drift`` (mean over videos).

    ``update(video [B, 3, T, H, W] in value_range, prompts)`` scores whole videos; ``update(scores)`` takes
    one video's :class:`VideoScores` computed elsewhere (e.g. from the few frames decoded out of an mp4).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, windows: TimeWindows, extractors: Extractors,
                 value_range: tuple[float, float] = (0.0, 1.0), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.windows = windows
        self.value_range = value_range
        self.extractors = extractors
        self.names = extractors.series()
        shape = (len(self.names), len(windows.timestamps))
        self.add_state("sums", torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("counts", torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("drift_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("videos", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, video: torch.Tensor | VideoScores, prompts: Sequence[str] | None = None) -> None:
        if isinstance(video, VideoScores):
            self._add(video)
            return
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"LongVideoMetrics expects video [B, 3, T, H, W] in [0, 1], got {tuple(video.shape)}")
        if prompts is not None and len(prompts) != video.shape[0]:
            raise ValueError(f"got {len(prompts)} prompts for {video.shape[0]} videos")
        video = to_unit_range(video.detach(), self.value_range)
        for b in range(video.shape[0]):
            self._add(score_dense_video(video[b], self.windows, self.extractors,
                                       None if prompts is None else prompts[b]))

    def _add(self, scores: VideoScores) -> None:
        for row, name in enumerate(self.names):
            values = scores.series[name].to(self.sums.device)
            seen = ~values.isnan()
            self.sums[row] += values.nan_to_num(0.0)
            self.counts[row] += seen.long()
        self.drift_sum += scores.quality_drift
        self.videos += 1

    def compute(self) -> dict[str, torch.Tensor]:
        means = self.sums / self.counts
        return {**{name: means[row] for row, name in enumerate(self.names)},
                "quality_drift": self.drift_sum / self.videos}
