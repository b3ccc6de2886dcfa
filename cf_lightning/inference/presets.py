"""Named inference settings: how each family of causal Wan2.1 students is run at inference.

A preset fixes what the student was distilled for: frames per chunk, the few-step schedule
(``denoising_steps`` evenly spaced timesteps from 1000, warped by ``shift``, as the references'
``warp_denoising_step: true`` does), and the memory policy (sink, window, slow memory, positions).
``ours`` is not a table entry: it reads these values from the run's own saved hyper-parameters.

Sources (read from the reference repositories' configs and attention code):

* ``self_forcing``: guandeh17/Self-Forcing ``configs/self_forcing_dmd_lookahead.yaml`` (and
  ``self_forcing_dmd_5step.yaml``, the same with a fifth step) ``denoising_step_list: [1000, 750,
  500, 250]``, ``timestep_shift: 5.0``, ``num_frame_per_block: 3``; the causal model's KV cache holds
  ``32760 = 21 x 1560`` tokens (21 latent frames, the chunk included) with no sink, rolled once full, and
  keys rotated at their absolute frame index: a 21-frame window with absolute positions.
* ``longlive``: NVlabs/LongLive ``configs/longlive_inference.yaml`` (commit 9266de9):
  ``num_frame_per_block: 6``, the same four steps and shift 5, ``local_attn_size: 12`` frames of KV
  cache, chunk included, of which ``sink_size: 3`` are the first frames (``global_sink: true``);
  absolute positions. Our window counts the query chunk, so 12 cached frames = sink 3 + window 9.
* ``context_forcing``: TIGER-AI-Lab/Context-Forcing ``configs/context_dmd_inference.yaml``: the same
  steps and shift, ``num_frame_per_block: 3``, ``sink_size: 3``, ``local_attn_size: 6``,
  ``cache_size: 21`` (so 12 context frames), ``rope_length: 21`` with positions bounded to it,
  ``keyframe_sample: sim`` (a chunk is admitted when the cosine similarity of its mean key to the last
  admitted one is below ``sim_threshold`` 0.95, checked every chunk) and ``num_new_context_tokens: 1``
  (one frame admitted per chunk). The reference decides admission in each layer on that layer's keys;
  ``slow_fast`` decides once per chunk for all layers (docs/parity.md lists the differences).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cf_lightning.diffusion import denoising_sigmas
from memory_policies import MemoryPolicy, SlidingWindow, SlowFast

OURS = "ours"


@dataclass(frozen=True)
class InferencePreset:
    """Chunking, few-step schedule and memory policy of one family of causal students."""

    name: str
    chunk_frames: int
    denoising_steps: int
    shift: float
    make_memory: Callable[[], MemoryPolicy]
    source: str

    def sigmas(self) -> torch.Tensor:
        return denoising_sigmas(self.denoising_steps, self.shift)

    def memory(self) -> MemoryPolicy:
        """A fresh policy (policies carry no per-video state, but callers may configure their copy)."""
        return self.make_memory()


PRESETS: dict[str, InferencePreset] = {
    "self_forcing": InferencePreset(
        "self_forcing", chunk_frames=3, denoising_steps=4, shift=5.0,
        make_memory=lambda: SlidingWindow(sink=0, window=21, position_mode="absolute", rope_length=1024),
        source="guandeh17/Self-Forcing configs/self_forcing_dmd_lookahead.yaml + causal_model.py KV cache"),
    "longlive": InferencePreset(
        "longlive", chunk_frames=6, denoising_steps=4, shift=5.0,
        make_memory=lambda: SlidingWindow(sink=3, window=9, position_mode="absolute", rope_length=1024),
        source="NVlabs/LongLive configs/longlive_inference.yaml"),
    "context_forcing": InferencePreset(
        "context_forcing", chunk_frames=3, denoising_steps=4, shift=5.0,
        make_memory=lambda: SlowFast(sink=3, slow=12, fast=6, threshold=0.95, admission="surprisal", interval=1,
                                     compare_to="last_admitted", position_mode="bounded", rope_length=21),
        source="TIGER-AI-Lab/Context-Forcing configs/context_dmd_inference.yaml + wan/modules/causal_model.py"),
}


def preset_names() -> list[str]:
    return [*PRESETS, OURS]


def get_preset(name: str) -> InferencePreset:
    """A table preset by name; ``ours`` is resolved from a checkpoint (see ``load_generator``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(preset_names())}")
    return PRESETS[name]
