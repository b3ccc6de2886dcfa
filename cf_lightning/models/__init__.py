"""Networks (pure torch): the Wan2.1 DiT with its streaming memory, RoPE and attention backends."""

from cf_lightning.models.config import CONFIGS, WanConfig
from cf_lightning.models.kv_memory import KVMemory, MemoryRead
from cf_lightning.models.masks import latent_summaries, teacher_forcing_mask
from cf_lightning.models.wan import WanModel, build_wan

__all__ = ["CONFIGS", "KVMemory", "MemoryRead", "WanConfig", "WanModel", "build_wan", "latent_summaries",
           "teacher_forcing_mask"]

from cf_lightning.models.checkpoint import (
    WanCheckpoint,
    config_from_diffusers,
    config_to_diffusers,
    diffusers_to_wan_state_dict,
    load_wan,
    read_checkpoint,
    save_wan,
    wan_from_state_dict,
    wan_to_diffusers_state_dict,
)

__all__ += [
    "WanCheckpoint",
    "config_from_diffusers",
    "config_to_diffusers",
    "diffusers_to_wan_state_dict",
    "load_wan",
    "read_checkpoint",
    "save_wan",
    "wan_from_state_dict",
    "wan_to_diffusers_state_dict",
]
