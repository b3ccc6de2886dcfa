"""Data: the revisit world, the latent shard format, and the LightningDataModules reading them.

The world generator and the shard format are pure torch/webdataset; the DataModules (the only
Lightning code here) are imported on first access so that ``import cf_lightning.data.revisit_world``
never pulls Lightning in.
"""

from typing import Any

from cf_lightning.data.revisit_world import (
    LatentTruth,
    RevisitVideo,
    RevisitWorldConfig,
    first_visit_from_views,
    generate_video,
    last_visit_from_views,
    latent_truth,
)
from cf_lightning.data.shards import ShardSkipWarning

__all__ = [
    "LatentTruth",
    "RevisitVideo",
    "RevisitWorldConfig",
    "RevisitWorldDataModule",
    "ShardDataModule",
    "ShardSkipWarning",
    "first_visit_from_views",
    "generate_video",
    "last_visit_from_views",
    "latent_truth",
]

_LAZY = {"RevisitWorldDataModule", "ShardDataModule"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from cf_lightning.data import datamodules

        return getattr(datamodules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
