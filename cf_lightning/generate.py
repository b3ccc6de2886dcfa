"""`cf-gen`: stream a long video from a trained student, with any memory policy and prompt switches.

    cf-gen --checkpoint runs/slowfast/version_0/checkpoints/last.ckpt --out out/ --frames 192 \
        --world_seed 7 [--memory '{"class_path": "sliding_window", "init_args": {"sink": 2, "window": 8}}'] \
        [--prompts switches.jsonl]

Conditions come from a revisit-world video (its camera path and prompt, ``--world_seed``); prompt-only
generation for real-data models (no per-frame condition) is not wired into this command yet.
``--prompts`` is JSONL with one
``{"prompt": ..., "start_frame": n}`` per line (latent frames); at every switch the memory is
re-cached: the clean refresh passes of the history are replayed under the new prompt, so no key or
value computed with the old prompt survives (one forward per history chunk, once per switch).
Writes ``video.mp4`` (decoded by the codec), ``latents.npy`` and ``memory_timeline.png`` (which frames
the memory held at every chunk, by region, with the world's revisits marked held or missed).

The world, codec and text encoder default to what the run trained on (its data module's settings,
saved in the checkpoint), so the latents are conditioned and decoded as in training; ``--world``
overrides fields of that world, ``--codec``/``--codec_options``/``--text_encoder`` replace them.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jsonargparse import ArgumentParser
from tqdm import tqdm

from cf_lightning.codecs import build_codec, unit_to_uint8
from cf_lightning.data.revisit_world import RevisitWorldConfig, generate_video, latent_truth
from cf_lightning.data.video_write import write_mp4
from cf_lightning.memory_timeline import TimelineRecorder, render_timeline, write_timeline
from cf_lightning.models import KVMemory, WanModel
from cf_lightning.modules import ContextForcingModule
from cf_lightning.rollout import randn, rollout
from cf_lightning.text import build_text_encoder
from memory_policies import MemoryPolicy, load_plugins


@dataclass(frozen=True)
class PromptSegment:
    prompt: str
    start_frame: int


def read_prompt_switches(path: str | Path) -> list[PromptSegment]:
    """JSONL of ``{"prompt", "start_frame"}``; the first segment must start at frame 0."""
    segments = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            segments.append(PromptSegment(str(item["prompt"]), int(item["start_frame"])))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: expected {{\"prompt\": str, \"start_frame\": int}}, got {line!r} "
                             f"({error})") from None
    starts = [s.start_frame for s in segments]
    if not segments or starts[0] != 0 or starts != sorted(set(starts)):
        raise ValueError(f"{path}: start frames must begin at 0 and increase strictly, got {starts}")
    return segments


def parse_policy(text: str) -> MemoryPolicy:
    """A policy from a short name or a JSON/YAML ``{class_path, init_args}``, exactly as recipes write it."""
    load_plugins()
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--memory", type=MemoryPolicy)
    return parser.instantiate_classes(parser.parse_args(["--memory", text])).memory


@torch.inference_mode()
def recache(model: WanModel, memory: KVMemory, history: torch.Tensor, context: torch.Tensor,
            frame_cond: torch.Tensor | None) -> KVMemory:
    """A fresh memory holding the clean history as if it had been streamed under ``context``."""
    batch, _, frames, height, width = history.shape
    fresh = model.new_memory(memory.policy, batch, memory.chunk_frames, (height, width), device=history.device)
    zero = torch.zeros(batch, memory.chunk_frames, device=history.device)
    for start in range(0, frames, memory.chunk_frames):
        part = slice(start, start + memory.chunk_frames)
        model.commit_chunk(history[:, :, part], zero, context, fresh,
                           frame_cond=None if frame_cond is None else frame_cond[:, part])
    return fresh


@torch.inference_mode()
def stream_video(model: WanModel, policy: MemoryPolicy, sigmas: torch.Tensor, chunk_frames: int,
                 latent_shape: tuple[int, int, int], segments: list[tuple[torch.Tensor, int]], num_frames: int,
                 frame_cond: torch.Tensor | None, seed: int = 0, progress: bool = True) -> torch.Tensor:
    """Generate ``num_frames`` latent frames; ``segments`` = (text embedding [1, L, D], start frame).

    Chunks are collected in a list and joined only when a prompt switch needs the history, so the
    per-chunk cost does not grow with the video (appending to one tensor would copy it every chunk).
    Runs under ``inference_mode``: nothing generated here ever needs autograd."""
    channels, height, width = latent_shape
    if num_frames % chunk_frames:
        raise ValueError(f"--frames {num_frames} is not a multiple of chunk_frames={chunk_frames}")
    gens = [torch.Generator().manual_seed(seed)]
    memory: KVMemory | None = None
    chunks: list[torch.Tensor] = []
    bounds = [start for _, start in segments[1:]] + [num_frames]
    with tqdm(total=num_frames // chunk_frames, disable=not progress, desc="chunks") as bar:
        for (context, start), end in zip(segments, bounds):
            start -= start % chunk_frames
            end -= end % chunk_frames
            if end <= start:
                continue
            cond = None if frame_cond is None else frame_cond[:, :end]
            if memory is not None:
                history = torch.cat(chunks, dim=2)
                memory = recache(model, memory, history, context, None if cond is None else cond[:, :start])
            for chunk_start in range(start, end, chunk_frames):
                part = slice(chunk_start, chunk_start + chunk_frames)
                noise = randn((1, channels, chunk_frames, height, width), gens)
                result = rollout(model, policy, noise, context, sigmas, chunk_frames=chunk_frames,
                                 frame_cond=None if cond is None else cond[:, part], generator=gens, memory=memory)
                memory = result.memory
                chunks.append(result.video)
                bar.update(1)
    return torch.cat(chunks, dim=2) if chunks else torch.zeros(1, channels, 0, height, width)


def training_data_settings(checkpoint: str | Path) -> dict[str, Any]:
    """The data module settings a cf-fit checkpoint was trained with (empty if it has none).

    Read with ``mmap``, so the weights are not loaded a second time just for these few values.
    """
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    return dict(saved.get("datamodule_hyper_parameters") or {})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a cf-fit checkpoint of a ContextForcingModule run")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=None, help="latent frames (default: the world video's)")
    parser.add_argument("--world_seed", type=int, required=True, help="revisit-world video giving camera + prompt")
    parser.add_argument("--world", default="{}", help="JSON overrides of the training world's RevisitWorldConfig")
    parser.add_argument("--prompts", default=None, help="JSONL prompt switches")
    parser.add_argument("--memory", default=None, help="policy name or JSON {class_path, init_args}")
    parser.add_argument("--text_encoder", default=None, help="default: the run's (else hash)")
    parser.add_argument("--codec", default=None, help="default: the run's (else pixel)")
    parser.add_argument("--codec_options", default=None, help="JSON; default: the run's when --codec is not given")
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw", action="store_true", help="use the live student instead of its EMA")
    args = parser.parse_args(argv)

    module = ContextForcingModule.load_from_checkpoint(args.checkpoint, map_location="cpu", weights_only=False)
    model: WanModel = module.student if args.raw else module.ema
    policy = parse_policy(args.memory) if args.memory else module.memory
    trained = training_data_settings(args.checkpoint)
    codec_options = trained.get("codec_options") if args.codec is None else None
    if args.codec_options is not None:
        codec_options = json.loads(args.codec_options)
    codec = build_codec(args.codec or trained.get("codec") or "pixel", **(codec_options or {}))
    if codec.latent_channels != model.config.in_dim:
        raise SystemExit(f"codec {codec.name!r} with options {codec_options or {}} makes {codec.latent_channels}-channel "
                         f"latents, but the model takes {model.config.in_dim}; the run trained with codec "
                         f"{trained.get('codec')!r}, options {trained.get('codec_options')} (leave --codec and "
                         "--codec_options out to use them)")
    text = build_text_encoder(args.text_encoder or trained.get("text_encoder") or "hash",
                              **((trained.get("text_encoder_options") or {}) if args.text_encoder is None else {}))
    world = RevisitWorldConfig(**{**(trained.get("world") or {}), **json.loads(args.world)})
    video = generate_video(world, args.world_seed)
    truth = latent_truth(video, codec.frame_groups(world.num_frames))
    frame_cond, prompt, truth_frames = truth.camera[None].float(), video.prompt, truth.camera.shape[0]
    height, width = codec.latent_size(world.frame_height, world.frame_width)
    switches = read_prompt_switches(args.prompts) if args.prompts else [PromptSegment(prompt, 0)]
    segments = [(text.encode([s.prompt])[0], s.start_frame) for s in switches]
    frames = args.frames or truth_frames
    if frames > frame_cond.shape[1]:
        raise SystemExit(f"--frames {frames} exceeds the {frame_cond.shape[1]} frames of the world video's camera path")
    with TimelineRecorder(policy) as recorder:
        latents = stream_video(model, policy, module.sigmas, module.hparams.chunk_frames,
                               (codec.latent_channels, height, width), segments, frames, frame_cond, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_timeline(str(args.out / "memory_timeline.png"),
                   # the last timeline: a prompt switch re-caches into a fresh state that replays the history
                   render_timeline(recorder.timelines[-1], module.hparams.chunk_frames, truth.first_visit[:frames],
                                   title=f"{type(policy).__name__}: memory per chunk (world seed {args.world_seed})"))
    np.save(args.out / "latents.npy", latents[0].numpy().astype(np.float16))
    pixels = codec.decode(latents)[0]
    write_mp4(args.out / "video.mp4", unit_to_uint8(pixels).permute(1, 0, 2, 3), args.fps)
    print(args.out / "video.mp4")


if __name__ == "__main__":
    main()
