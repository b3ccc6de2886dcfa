"""Long-video evaluation metrics (torchmetrics, distributed-safe): per-timestamp consistency, text
alignment, VBench-style subject / background consistency, flicker and quality drift; revisit error /
effective context; the evaluation time windows and the feature extractors the metrics use."""

from cf_lightning.metrics.consistency import FrameConsistency, QualityDrift, to_unit_range
from cf_lightning.metrics.features import (
    FeatureExtractor,
    HFImageExtractor,
    HFTextExtractor,
    PixelStatsExtractor,
    laplacian_sharpness,
)
from cf_lightning.metrics.longvideo import (
    Extractors,
    LongVideoMetrics,
    TextExtractor,
    VideoScores,
    needed_frames,
    score_dense_video,
    score_video,
)
from cf_lightning.metrics.revisit import (
    RevisitError,
    effective_context,
    recall_auc,
    recall_scores,
    return_frames,
    view_ids,
)
from cf_lightning.metrics.windows import TimeWindows

__all__ = [
    "Extractors",
    "FeatureExtractor",
    "FrameConsistency",
    "HFImageExtractor",
    "HFTextExtractor",
    "LongVideoMetrics",
    "PixelStatsExtractor",
    "QualityDrift",
    "RevisitError",
    "return_frames",
    "view_ids",
    "TextExtractor",
    "TimeWindows",
    "VideoScores",
    "effective_context",
    "laplacian_sharpness",
    "needed_frames",
    "recall_auc",
    "recall_scores",
    "score_dense_video",
    "score_video",
    "to_unit_range",
]
