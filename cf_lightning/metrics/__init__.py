"""Long-video evaluation metrics (torchmetrics, distributed-safe): revisit error / effective context,
first- and previous-frame consistency, quality drift, and the feature extractors they use."""

from cf_lightning.metrics.consistency import FrameConsistency, QualityDrift, to_unit_range
from cf_lightning.metrics.features import (
    FeatureExtractor,
    HFImageExtractor,
    PixelStatsExtractor,
    laplacian_sharpness,
)
from cf_lightning.metrics.revisit import RevisitError, effective_context, recall_auc, recall_scores

__all__ = [
    "FeatureExtractor",
    "FrameConsistency",
    "HFImageExtractor",
    "PixelStatsExtractor",
    "QualityDrift",
    "RevisitError",
    "effective_context",
    "laplacian_sharpness",
    "recall_auc",
    "recall_scores",
    "to_unit_range",
]
