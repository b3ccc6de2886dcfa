"""Text-to-long-video inference: load a generator, build conditions, stream, decode, write."""

from cf_lightning.inference.conditions import (
    Conditions,
    PromptSegment,
    encode_prompts,
    parse_policy,
    read_prompt_switches,
    text_conditions,
    world_conditions,
)
from cf_lightning.inference.loading import LoadedGenerator, load_generator
from cf_lightning.inference.outputs import VideoOutput, WrittenVideo
from cf_lightning.inference.pipeline import (
    ChunkEvent,
    GenerationInterrupted,
    Observer,
    generate_video,
    recache,
    stream_chunks,
)
from cf_lightning.inference.presets import OURS, PRESETS, InferencePreset, get_preset, preset_names

__all__ = [
    "OURS",
    "PRESETS",
    "ChunkEvent",
    "Conditions",
    "GenerationInterrupted",
    "InferencePreset",
    "LoadedGenerator",
    "Observer",
    "PromptSegment",
    "VideoOutput",
    "WrittenVideo",
    "encode_prompts",
    "generate_video",
    "get_preset",
    "load_generator",
    "parse_policy",
    "preset_names",
    "read_prompt_switches",
    "recache",
    "stream_chunks",
    "text_conditions",
    "world_conditions",
]
