"""`cf-gen`: stream a long video from a causal student: text-to-video, prompt switches, any memory policy.

    cf-gen --checkpoint student.ckpt --out out/ --prompt "a fox runs through snow" --seconds 60 \\
        --umt5 Wan2.1-T2V-1.3B --vae Wan2.1-T2V-1.3B [--preset context_forcing] \\
        [--memory '{"class_path": "sliding_window", "init_args": {"sink": 3, "window": 9}}']

The checkpoint is a ``cf-fit`` run of any stage (only its backbone is rebuilt, from the run's own
saved settings: no teacher, critic or init file is read) or any Wan layout ``load_wan`` reads
(original or exported safetensors, diffusers folders, Self-Forcing / LongLive / Context Forcing
``.pt``). ``--preset`` picks chunk size, schedule and memory policy (default ``ours``: the run's own;
a bare Wan checkpoint needs one). Conditions come from ``--prompt``, from ``--prompts`` (JSONL, one
``{"prompt": ..., "start_frame": n}`` per line, latent frames; at every switch the memory is re-cached
under the new prompt) or from a revisit-world video (``--world_seed``: its camera path and prompt, for
models trained with a per-frame condition). Each chunk is decoded as it is produced (the Wan VAE keeps
its causal cache across chunks) and appended to ``video.mp4`` (16 fps by default); ``latents.npy``
holds the latents ``[C, F, H, W]``, ``memory_timeline.png`` which frames the memory held at every chunk
(by region; with ``--world_seed``, the world's returns to earlier views marked held or missed). Ctrl-C or
SIGTERM leaves a playable mp4 of every finished frame.

The codec, text encoder and world default to what the run trained on (its saved data module settings);
``--vae``/``--umt5`` (a Wan2.1 folder) or ``--codec``/``--text_encoder`` with options replace them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from cf_lightning.codecs import LatentCodec, build_codec, resolve_dtype
from cf_lightning.data.revisit_world import RevisitWorldConfig, latent_truth
from cf_lightning.data.revisit_world import generate_video as world_video
from cf_lightning.inference import (
    OURS,
    Conditions,
    GenerationInterrupted,
    InferencePreset,
    LoadedGenerator,
    PromptSegment,
    generate_video,
    get_preset,
    load_generator,
    parse_policy,
    preset_names,
    read_prompt_switches,
    text_conditions,
    world_conditions,
)
from cf_lightning.memory_timeline import Snapshot, render_timeline, write_timeline
from cf_lightning.models import CONFIGS, WanConfig
from cf_lightning.text import TextEncoder, build_text_encoder

WAN_FRAME_SIZE = (480, 832)
"""Wan2.1-T2V-1.3B's native frame size (height, width), the default for text-to-video."""


def check_writable(folder: Path) -> None:
    """Fail before any model is loaded when the output folder cannot be created or written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".cf-gen-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"cannot write the output folder {folder}: {error.strerror or error}") from None


def wan_config(text: str | None) -> WanConfig | None:
    """``--config``: a named size or a JSON object of WanConfig fields."""
    if text is None:
        return None
    if text.lstrip().startswith("{"):
        return WanConfig(**json.loads(text))
    if text not in CONFIGS:
        raise ValueError(
            f"unknown --config {text!r}; allowed: {', '.join(CONFIGS)} or a JSON object of WanConfig fields"
        )
    return CONFIGS[text]


def resolve_preset(named: InferencePreset | None, generator: LoadedGenerator) -> InferencePreset:
    """``--preset``, or the run's own settings; a checkpoint without them must be given one."""
    if named is not None:
        return named
    if generator.preset is None:
        raise ValueError(f"{generator.source} records no inference settings (chunk size, schedule, memory); "
                         f"pass --preset, one of: {', '.join(n for n in preset_names() if n != OURS)}")
    return generator.preset


def chosen(name: str | None, options: str | None, trained: dict[str, Any], key: str, default: str
           ) -> tuple[str | dict[str, Any], dict[str, Any]]:
    """A codec's or text encoder's spec (short name, class name or ``class_path`` mapping) and options:
    the command line's, else the run's own (``key``, and ``key_options`` in older runs, of its data
    module), else ``default``."""
    saved = trained.get(f"{key}_options") if name is None else None
    return name or trained.get(key) or default, json.loads(options) if options is not None else (saved or {})


def build_parts(args: argparse.Namespace, trained: dict[str, Any]) -> tuple[LatentCodec, TextEncoder]:
    """The codec and text encoder: ``--vae``/``--umt5``, else the command line's, the run's or the weight-free
    ones."""
    if args.vae:
        codec = build_codec("wan", path=args.vae, dtype=args.dtype)
    else:
        name, options = chosen(args.codec, args.codec_options, trained, "codec", "pixel")
        codec = build_codec(name, **options)
    if args.umt5:
        text = build_text_encoder("umt5", path=args.umt5, dtype=args.dtype)
    else:
        name, options = chosen(args.text_encoder, args.text_encoder_options, trained, "text_encoder", "hash")
        text = build_text_encoder(name, **options)
    return codec, text


def latent_frames_for(seconds: float, fps: float, codec: LatentCodec, chunk_frames: int) -> int:
    """Whole chunks of latent frames covering ``seconds`` of video at ``fps``."""
    pixels = max(1, round(seconds * fps))
    tf = codec.temporal_factor
    latents = 1 + math.ceil((pixels - 1) / tf) if codec.causal_first_frame else math.ceil(pixels / tf)
    return math.ceil(latents / chunk_frames) * chunk_frames


def build_conditions(args: argparse.Namespace, trained: dict[str, Any], codec: LatentCodec, text: TextEncoder,
                     generator: LoadedGenerator) -> tuple[Conditions, tuple[int, int]]:
    """Conditions and the frame size ``(height, width)`` from ``--prompt``/``--prompts``/``--world_seed``."""
    config = generator.model.config
    switches = read_prompt_switches(args.prompts) if args.prompts else None
    if args.prompt is not None:
        switches = [PromptSegment(args.prompt, 0)]
    if args.world_seed is not None:
        world = RevisitWorldConfig(**{**(trained.get("world") or {}), **json.loads(args.world)})
        conditions = world_conditions(world, args.world_seed, codec, text, config.text_dim, switches)
        return conditions, (world.frame_height, world.frame_width)
    if switches is None:
        raise ValueError(
            "nothing to condition on: give --prompt TEXT, --prompts FILE.jsonl or --world_seed N"
        )
    if config.frame_cond_dim:
        raise ValueError(
            f"this model takes a {config.frame_cond_dim}-dim per-frame condition (a camera path) besides "
            "the text; give --world_seed N to take one from a revisit-world video"
        )
    world = trained.get("world") or {}
    size = (args.height or world.get("frame_height") or WAN_FRAME_SIZE[0],
            args.width or world.get("frame_width") or WAN_FRAME_SIZE[1])
    return text_conditions(text, switches, config.text_dim), size


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--checkpoint", required=True, help="a cf-fit .ckpt, Wan safetensors / folder, or training .pt"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for video.mp4 and latents.npy")
    p.add_argument("--prompt", default=None, help="one prompt for the whole video")
    p.add_argument("--prompts", default=None, help="JSONL prompt switches")
    p.add_argument(
        "--world_seed", type=int, default=None, help="revisit-world video giving camera path + prompt"
    )
    p.add_argument("--world", default="{}", help="JSON overrides of the training world's RevisitWorldConfig")
    p.add_argument("--preset", default=None, help=f"one of {', '.join(preset_names())} (default: ours)")
    p.add_argument("--frames", type=int, default=None, help="latent frames (default: the world video's)")
    p.add_argument("--seconds", type=float, default=None, help="video length instead of --frames")
    p.add_argument("--height", type=int, default=None, help="frame height in pixels (text-to-video)")
    p.add_argument("--width", type=int, default=None, help="frame width in pixels (text-to-video)")
    p.add_argument("--memory", default=None, help="policy name or JSON {class_path, init_args}")
    p.add_argument("--umt5", default=None, help="UMT5 folder (a Wan2.1 release: text_encoder/ + tokenizer/)")
    p.add_argument(
        "--vae", default=None, help="Wan VAE folder (a Wan2.1 release with vae/, or the VAE itself)"
    )
    p.add_argument("--text_encoder", default=None, help="default: the run's (else hash)")
    p.add_argument("--text_encoder_options", default=None, help="JSON")
    p.add_argument("--codec", default=None, help="default: the run's (else pixel)")
    p.add_argument("--codec_options", default=None, help="JSON; default: the run's when --codec is not given")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the DiT, VAE and text encoder run (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="of the DiT, and of --vae and --umt5 (bfloat16 halves memory on a GPU)")
    p.add_argument("--fps", type=float, default=16.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="a run's live weights instead of its EMA")
    p.add_argument("--use_ema", action="store_true", help="generator_ema of a Self-Forcing-style .pt")
    p.add_argument(
        "--config",
        default=None,
        help=f"for a .pt without a config of a non-released size: one of "
        f"{', '.join(CONFIGS)} or JSON WanConfig fields",
    )
    return p


def run(args: argparse.Namespace) -> Path:
    named = None if args.preset in (None, OURS) else get_preset(args.preset)
    check_writable(args.out)
    generator = load_generator(
        args.checkpoint, live=args.raw, use_ema=args.use_ema, config=wan_config(args.config)
    )
    preset = resolve_preset(named, generator)
    generator.model.to(args.device, resolve_dtype(args.dtype))
    trained = generator.data_settings
    codec, text = build_parts(args, trained)
    codec.to(args.device)
    text.to(args.device)
    model_channels = generator.model.config.in_dim
    if codec.latent_channels != model_channels:
        raise ValueError(
            f"codec {codec.name!r} with options {codec.options()} makes {codec.latent_channels}-channel "
            f"latents, "
            f"but the model takes {model_channels}; the run trained with codec {trained.get('codec')!r}, "
            f"options {trained.get('codec_options')} (leave --codec, --codec_options and --vae out to "
            "use them)"
        )
    conditions, (height, width) = build_conditions(args, trained, codec, text, generator)
    if args.frames is not None:
        frames = args.frames
    elif args.seconds is not None:
        frames = latent_frames_for(args.seconds, args.fps, codec, preset.chunk_frames)
    elif conditions.max_frames is not None:
        frames = conditions.max_frames - conditions.max_frames % preset.chunk_frames
    else:
        raise ValueError("give the video length: --frames (latent frames) or --seconds")
    policy = parse_policy(args.memory) if args.memory else None
    timeline: list[Snapshot] = []  # the memory after every chunk, for memory_timeline.png
    written = generate_video(
        generator.model,
        conditions,
        args.out,
        preset=preset,
        codec=codec,
        num_frames=frames,
        latent_hw=codec.latent_size(height, width),
        policy=policy,
        seed=args.seed,
        fps=args.fps,
        observer=lambda event: timeline.append(Snapshot.of(event.memory.states[0])),
        progress=sys.stderr.isatty(),
    )
    revisits = world_first_visit(args, trained, codec)
    name = type(policy or preset.memory()).__name__
    write_timeline(
        str(args.out / "memory_timeline.png"),
        render_timeline(
            timeline,
            preset.chunk_frames,
            None if revisits is None else revisits[:frames],
            title=f"{name}: memory per chunk",
        ),
    )
    return written.video


def world_first_visit(
    args: argparse.Namespace, trained: dict[str, Any], codec: LatentCodec
) -> torch.Tensor | None:
    """``first_visit`` per latent frame of the ``--world_seed`` video (None for text-only conditions), so the
    memory timeline can mark which revisits the memory held."""
    if args.world_seed is None:
        return None
    world = RevisitWorldConfig(**{**(trained.get("world") or {}), **json.loads(args.world)})
    return latent_truth(world_video(world, args.world_seed), codec.frame_groups(world.num_frames)).first_visit


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.prompt is not None and args.prompts is not None:
        raise SystemExit("cf-gen: give --prompt or --prompts, not both")
    try:
        print(run(args))
    except GenerationInterrupted as stop:
        print(f"cf-gen: {stop}", file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"cf-gen: {error}") from None


if __name__ == "__main__":
    main()
