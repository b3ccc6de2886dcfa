"""Pluggable memory policies for streaming video diffusion (pure torch, no Lightning)."""

from memory_policies.base import (
    ARCHIVE,
    POSITION_MODES,
    REGIONS,
    AttentionSpec,
    MemoryPolicy,
    MemoryState,
    MemoryView,
    Merge,
    PositionMode,
    SummarySpec,
)
from memory_policies.deep_forcing import DeepForcing
from memory_policies.fade_mem import FadeMem
from memory_policies.full import Full
from memory_policies.keyframe import Keyframe
from memory_policies.long_rollout import InfinityRoPE, RollingSink
from memory_policies.oracle import Oracle
from memory_policies.pack_forcing import PackForcing
from memory_policies.registry import (
    ENTRY_POINT_GROUP,
    available_policies,
    build_policy,
    canonical_name,
    get_policy_class,
    load_plugins,
    register_policy,
)
from memory_policies.retrieval import LongLiveRAG
from memory_policies.sliding_window import SlidingWindow
from memory_policies.slow_fast import SlowFast, calibrate_threshold

__all__ = [
    "ARCHIVE",
    "ENTRY_POINT_GROUP",
    "POSITION_MODES",
    "REGIONS",
    "AttentionSpec",
    "DeepForcing",
    "FadeMem",
    "Full",
    "InfinityRoPE",
    "Keyframe",
    "LongLiveRAG",
    "MemoryPolicy",
    "MemoryState",
    "MemoryView",
    "Merge",
    "Oracle",
    "PackForcing",
    "PositionMode",
    "RollingSink",
    "SlidingWindow",
    "SlowFast",
    "SummarySpec",
    "available_policies",
    "build_policy",
    "calibrate_threshold",
    "canonical_name",
    "get_policy_class",
    "load_plugins",
    "register_policy",
]
