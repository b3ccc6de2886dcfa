"""What a video is conditioned on: prompts (one, or switches read from JSONL) and per-frame conditions.

Conditions are built by sources that know nothing of the rollout: :func:`text_conditions` (prompts
only, the text-to-video case) and :func:`world_conditions` (a revisit-world video's camera path and
prompt, for models trained with a per-frame condition). The rollout only sees :class:`Conditions`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from jsonargparse import ArgumentParser

from cf_lightning.codecs import LatentCodec
from cf_lightning.data.revisit_world import RevisitWorldConfig, generate_video, latent_truth
from cf_lightning.text import TextEncoder
from memory_policies import MemoryPolicy, load_plugins

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptSegment:
    prompt: str
    start_frame: int  # latent frame at which this prompt takes over


@dataclass
class Conditions:
    """Text embeddings per prompt segment and an optional per-frame condition for one video.

    Not frozen: Lightning moves a batch holding one to the module's device field by field."""

    segments: list[tuple[torch.Tensor, int]]  # (embedding [1, L, text_dim], start latent frame), first at 0
    frame_cond: torch.Tensor | None = None  # [1, F, k]; bounds the video to F latent frames
    prompts: tuple[str, ...] = ()

    @property
    def max_frames(self) -> int | None:
        return None if self.frame_cond is None else self.frame_cond.shape[1]


def read_prompt_switches(path: str | Path) -> list[PromptSegment]:
    """JSONL of ``{"prompt", "start_frame"}``; the first segment must start at frame 0."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"prompt file {source} does not exist")
    segments = []
    for number, line in enumerate(source.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            segments.append(PromptSegment(str(item["prompt"]), int(item["start_frame"])))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: expected {{\"prompt\": str, \"start_frame\": int}}, got {line!r} "
                             f"({error})") from None
    if not segments:
        raise ValueError(f"{path}: no prompts; expected one {{\"prompt\": str, \"start_frame\": int}} per line")
    starts = [s.start_frame for s in segments]
    if starts[0] != 0 or starts != sorted(set(starts)):
        raise ValueError(f"{path}: start frames must begin at 0 and increase strictly, got {starts}")
    return segments


def parse_policy(text: str) -> MemoryPolicy:
    """A policy from a short name or a JSON/YAML ``{class_path, init_args}``, exactly as recipes write it."""
    load_plugins()
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--memory", type=MemoryPolicy)
    return parser.instantiate_classes(parser.parse_args(["--memory", text])).memory


def encode_prompts(encoder: TextEncoder, prompts: list[str], text_dim: int) -> list[torch.Tensor]:
    """One ``[1, L, text_dim]`` embedding per prompt; empty prompts and a mismatched encoder are errors,
    a prompt longer than the encoder reads is truncated with a warning naming it."""
    if encoder.dim != text_dim:
        raise ValueError(f"text encoder {encoder.name!r} makes {encoder.dim}-dim embeddings, but the model's "
                         f"text_dim is {text_dim}; use the encoder the model was trained with (Wan2.1: UMT5-XXL, 4096)")
    embeddings = []
    for prompt in prompts:
        if not prompt.strip():
            raise ValueError("empty prompt: every prompt (and every line of a prompt file) needs text")
        length = encoder.num_tokens(prompt)
        if length > encoder.max_length:
            log.warning("prompt %r has %d tokens; truncated to the encoder's max_length=%d", prompt[:60] + "...",
                        length, encoder.max_length)
        embeddings.append(encoder.encode([prompt])[0])
    return embeddings


def text_conditions(encoder: TextEncoder, switches: list[PromptSegment], text_dim: int) -> Conditions:
    """Prompt-only conditions: text-to-video."""
    embeddings = encode_prompts(encoder, [s.prompt for s in switches], text_dim)
    return Conditions([(e, s.start_frame) for e, s in zip(embeddings, switches)],
                      prompts=tuple(s.prompt for s in switches))


def world_conditions(world: RevisitWorldConfig, seed: int, codec: LatentCodec, encoder: TextEncoder, text_dim: int,
                     switches: list[PromptSegment] | None = None) -> Conditions:
    """A revisit-world video's camera path (per latent frame) and prompt, unless ``switches`` replace it."""
    video = generate_video(world, seed)
    truth = latent_truth(video, codec.frame_groups(world.num_frames))
    conditions = text_conditions(encoder, switches or [PromptSegment(video.prompt, 0)], text_dim)
    return Conditions(conditions.segments, truth.camera[None].float(), conditions.prompts)
