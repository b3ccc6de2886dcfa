"""``cf-data``: write revisit-world videos or real video files to latent shards, and check shards.

Examples::

    cf-data world --output data/world --num_videos 512 --world.num_frames 96
    cf-data videos --input clips/ --output data/real --height 480 --width 832 --clip_frames 81 \\
        --codec wan --codec_options '{"path": "/models/Wan2.1-T2V-1.3B-Diffusers", "dtype": "bfloat16"}' \\
        --text_encoder umt5 --text_encoder_options '{"path": "/models/Wan2.1-T2V-1.3B-Diffusers"}'
    cf-data trajectories --teacher teacher.safetensors --output data/ode --input data/world \\
        --denoising_steps 4 --shift 5.0
    cf-data prompts --input prompts.txt --output data/prompts --height 480 --width 832 \\
        --codec wan --codec_options '{"path": "/models/Wan2.1-T2V-1.3B-Diffusers"}' \\
        --text_encoder umt5 --text_encoder_options '{"path": "/models/Wan2.1-T2V-1.3B-Diffusers"}' \\
        --negative_prompt "$(cat negative_prompt.txt)"
    cf-data check data/world

Every command also takes ``--config file.yaml`` (jsonargparse), and ``--help`` lists all options.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from cf_lightning.codecs import LatentCodec, build_codec, uint8_to_unit
from cf_lightning.data.prompts import read_prompts, write_prompt_shards
from cf_lightning.data.revisit_world import RevisitWorldConfig, generate_video, latent_truth
from cf_lightning.data.shards import (
    SkipLog,
    decode_samples,
    encode_sample,
    expand_shards,
    open_shard_writer,
    per_frame_truth,
    read_shards,
)
from cf_lightning.data.trajectories import ChunkContext, OdeSettings, write_trajectories
from cf_lightning.data.video_io import probe_size, read_video, resize_center_crop
from cf_lightning.text import TextEncoder, build_text_encoder
from memory_policies import MemoryPolicy

__all__ = ["build_parser", "main"]


def _add_encoding_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these options")
    parser.add_argument("--output", type=str, required=True, help="folder for shard-000000.tar, ...")
    parser.add_argument("--shard_size", type=int, default=64, help="samples per shard")
    parser.add_argument("--codec", type=str, default="pixel",
                        help="codec: short name (pixel, wan) or class name")
    parser.add_argument(
        "--codec_options", type=dict[str, Any], default={}, help='codec arguments as JSON, e.g. {"patch": 8}'
    )
    parser.add_argument(
        "--text_encoder", type=str | None, default=None, help="store prompt embeddings from: hash, umt5"
    )
    parser.add_argument(
        "--text_encoder_options", type=dict[str, Any], default={}, help="text encoder arguments"
    )
    parser.add_argument("--device", type=str, default="cpu", help="device for the codec and text encoder")


def _add_world_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--num_videos", type=int, default=64, help="videos to write")
    parser.add_argument("--seed", type=int, default=0, help="video i uses seed + i")
    parser.add_argument(
        "--world", type=RevisitWorldConfig, default=RevisitWorldConfig(), help="world settings"
    )


def _add_trajectory_arguments(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--teacher",
        type=str,
        required=True,
        help="trained teacher: Wan checkpoint or cf-fit .ckpt (EMA weights)",
    )
    parser.add_argument(
        "--input",
        type=str | None,
        default=None,
        help="take prompts/embeddings/cameras from these shards (path, folder or brace pattern) "
        "instead of generating revisit-world videos",
    )
    parser.add_argument("--batch_size", type=int, default=16, help="samples integrated together")
    parser.add_argument(
        "--denoising_steps", type=int, default=4, help="the student's levels: its model.denoising_steps"
    )
    parser.add_argument(
        "--shift", type=float, default=5.0, help="the student's model.shift (also the ODE grid's)"
    )
    parser.add_argument("--ode_steps", type=int, default=20, help="Euler steps of the teacher ODE")
    parser.add_argument(
        "--guidance_scale", type=float, default=3.0, help="classifier-free guidance of the teacher"
    )
    parser.add_argument(
        "--noise_seed", type=int, default=0, help="sample i starts from noise seeded noise_seed + i"
    )
    parser.add_argument(
        "--negative_prompt",
        type=str | None,
        default=None,
        help="negative prompt embedding (negative_prompt.safetensors from cf-data prompts) for the "
        "unconditional branch instead of the null text",
    )
    parser.add_argument(
        "--chunk_context",
        type=str | None,
        default=None,
        help="integrate a context teacher chunk by chunk after each sample's data frames, seeing the "
        "frames --memory holds (memory) or the last --context_frames (last_n); unset: the whole clip "
        "at once",
    )
    parser.add_argument("--chunk_frames", type=int, default=2, help="latent frames per chunk (the student's)")
    parser.add_argument("--context_frames", type=int, default=8, help="frames a last_n teacher sees")
    parser.add_argument(
        "--context_positions", type=str, default="student",
        help="the context layout the teacher was trained in: student, packed, absolute"
    )
    parser.add_argument(
        "--memory", type=MemoryPolicy | None, default=None, help="the memory policy a 'memory' teacher reads"
    )


def build_parser() -> ArgumentParser:
    """The ``cf-data`` parser with subcommands ``world``, ``videos``, ``trajectories``, ``prompts``,
    ``check``."""
    parser = ArgumentParser(prog="cf-data", description="Write and check cf-lightning latent shards.")
    commands = parser.add_subcommands()

    world = ArgumentParser(description="Generate revisit-world videos and write them as latent shards.")
    _add_encoding_arguments(world)
    _add_world_arguments(world)
    commands.add_subcommand("world", world, help="write revisit-world shards")

    videos = ArgumentParser(description="Encode a folder of videos with same-stem .txt captions into shards.")
    _add_encoding_arguments(videos)
    videos.add_argument("--input", type=str, required=True, help="folder of videos and captions")
    videos.add_argument("--extensions", type=list[str], default=["mp4"], help="video file extensions")
    videos.add_argument("--height", type=int | None, default=None, help="resize (centre crop) to this height")
    videos.add_argument("--width", type=int | None, default=None, help="resize (centre crop) to this width")
    videos.add_argument(
        "--clip_frames", type=int | None, default=None, help="split each video into clips of this many frames"
    )
    videos.add_argument("--max_frames", type=int | None, default=None, help="read at most this many frames")
    commands.add_subcommand("videos", videos, help="encode real videos into shards")

    trajectories = ArgumentParser(
        description="Integrate a trained teacher's ODE (with CFG) from seeded noise under the conditions of "
        "revisit-world videos or existing shards; write the endpoints and the states at the student's "
        "denoising levels as shards for StudentModule(objective='ode')."
    )
    _add_encoding_arguments(trajectories)
    _add_world_arguments(trajectories)
    _add_trajectory_arguments(trajectories)
    commands.add_subcommand("trajectories", trajectories, help="write teacher ODE trajectory shards")

    prompts = ArgumentParser(
        description="Encode a prompt list (text, one per line, or JSONL with 'prompt') into prompt shards "
        "for stage 2: embeddings and the latent shape at --height x --width, no video; with "
        "--negative_prompt its embedding is written once to negative_prompt.safetensors next to the shards."
    )
    _add_encoding_arguments(prompts)
    prompts.add_argument("--input", type=str, required=True, help="prompt list: .txt or .jsonl")
    prompts.add_argument("--height", type=int, required=True, help="video height the student generates")
    prompts.add_argument("--width", type=int, required=True, help="video width the student generates")
    prompts.add_argument("--negative_prompt", type=str | None, default=None, help="the unconditional prompt")
    prompts.add_argument("--batch_size", type=int, default=16, help="prompts encoded together")
    prompts.add_argument(
        "--latent_frames",
        type=int,
        default=0,
        help="zero latent frames per sample (conditions for trajectories)",
    )
    commands.add_subcommand("prompts", prompts, help="write prompt shards (stage 2)")

    check = ArgumentParser(description="Read shards and report unreadable shards and corrupt samples.")
    check.add_argument("shards", type=str, nargs="+", help="shard paths, folders or brace patterns")
    commands.add_subcommand("check", check, help="verify shards")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``cf-data``; returns the process exit code."""
    parser = build_parser()
    cfg = parser.parse_args(argv)
    command = cfg.subcommand
    args = cfg[command]
    if command == "check":
        return _check(args.shards)
    if command == "trajectories":
        return _trajectories(parser, cfg)
    if command == "prompts":
        return _prompts(parser, cfg)
    try:
        args = parser.instantiate(cfg)[command]
        codec = build_codec(args.codec, **args.codec_options).to(args.device)
        text = _text_encoder(args)
        jobs = _world_jobs(args, codec) if command == "world" else _video_jobs(args, codec)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(f"cf-data {command}: {exc}")
    written = _write(_encode(jobs, codec, text, args.device), args.output, args.shard_size)
    print(f"wrote {written} samples to {args.output}")
    return 0


def _text_encoder(args: Namespace) -> TextEncoder | None:
    if not args.text_encoder:
        return None
    return build_text_encoder(args.text_encoder, **args.text_encoder_options).to(args.device)


def _trajectories(parser: ArgumentParser, cfg: Namespace) -> int:
    """``cf-data trajectories``: conditions and teacher are checked before anything is integrated."""
    from cf_lightning.stages.common import load_backbone  # cf_lightning.stages imports Lightning

    skips = SkipLog()
    try:
        args = parser.instantiate(cfg)["trajectories"]
        settings = OdeSettings(
            args.denoising_steps,
            args.shift,
            args.ode_steps,
            args.guidance_scale,
            args.noise_seed,
            args.teacher,
            args.negative_prompt,
        )
        text = _text_encoder(args)
        if args.input is not None:
            shards = expand_shards(args.input, "--input")
            samples: Iterable[dict[str, Any]] = decode_samples(
                read_shards(({"url": s} for s in shards), skips), skips
            )
            total = None
        else:
            codec = build_codec(args.codec, **args.codec_options).to(args.device)
            samples, total = _encode(_world_jobs(args, codec), codec, text, args.device), args.num_videos
        chunk_context = None
        if args.chunk_context is not None:
            chunk_context = ChunkContext(args.chunk_context, args.chunk_frames, args.context_frames,
                                         args.memory, args.context_positions)
        teacher = load_backbone(args.teacher).to(args.device)
        written = write_trajectories(
            samples,
            teacher,
            settings,
            output=args.output,
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            text=text,
            device=args.device,
            total=total,
            chunk_context=chunk_context,
        )
    except (ValueError, FileNotFoundError) as exc:
        parser.error(f"cf-data trajectories: {exc}")
    skipped = f", {skips.total} input samples or shards skipped" if skips.total else ""
    print(f"wrote {written} teacher trajectories to {args.output}{skipped}")
    return 0


def _prompts(parser: ArgumentParser, cfg: Namespace) -> int:
    """``cf-data prompts``: the latent shape comes from the codec at the given size, never a constant."""
    try:
        args = parser.instantiate(cfg)["prompts"]
        if not args.text_encoder:
            raise ValueError("prompt shards need --text_encoder (umt5 for Wan)")
        prompts = read_prompts(args.input)
        codec = build_codec(args.codec, **args.codec_options)
        height, width = codec.latent_size(args.height, args.width)
        text = _text_encoder(args)
        assert text is not None
        written = write_prompt_shards(
            prompts,
            text,
            (codec.latent_channels, height, width),
            args.output,
            args.shard_size,
            args.batch_size,
            args.negative_prompt,
            args.latent_frames,
        )
    except (ValueError, FileNotFoundError) as exc:
        parser.error(f"cf-data prompts: {exc}")
    negative = " and negative_prompt.safetensors" if args.negative_prompt is not None else ""
    print(f"wrote {written} prompts{negative} to {args.output}")
    return 0


def _world_jobs(args: Namespace, codec: LatentCodec) -> Iterator[dict[str, Any]]:
    """Revisit-world samples to encode (validated up front, generated lazily)."""
    world: RevisitWorldConfig = args.world
    if args.num_videos < 1 or args.seed < 0:
        raise ValueError(f"need num_videos >= 1 and seed >= 0, got {args.num_videos} and {args.seed}")
    groups = codec.frame_groups(world.num_frames)
    codec.latent_size(world.frame_height, world.frame_width)
    return _generate_world(world, args.seed, args.num_videos, groups)


def _generate_world(
    world: RevisitWorldConfig, seed: int, count: int, groups: list[range]
) -> Iterator[dict[str, Any]]:
    for video_seed in range(seed, seed + count):
        video = generate_video(world, video_seed)
        truth = latent_truth(video, groups)
        yield {
            "key": f"world-{video_seed:09d}",
            "frames": video.frames,
            "prompt": video.prompt,
            "meta": {
                "source": "revisit_world",
                "seed": video_seed,
                "trajectory": video.trajectory,
                "world": dataclasses.asdict(world),
                "segment_starts": video.segment_starts.tolist(),
            },
            "truth": {"camera": truth.camera, "view": truth.view, "place": truth.place},
        }


def _video_jobs(args: Namespace, codec: LatentCodec) -> Iterator[dict[str, Any]]:
    """Check the input folder (files, captions, sizes) before anything is written."""
    folder = Path(args.input)
    if not folder.is_dir():
        raise FileNotFoundError(f"--input {args.input!r} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lstrip(".").lower() in args.extensions)
    if not files:
        raise ValueError(f"no videos with extensions {args.extensions} in {args.input!r}")
    missing = [p.name for p in files if not p.with_suffix(".txt").is_file()]
    if missing:
        raise FileNotFoundError(f"captions (same-stem .txt) missing for: {', '.join(missing)}")
    if (args.height is None) != (args.width is None):
        raise ValueError(f"give both --height and --width or neither, got {args.height} and {args.width}")
    if args.height is not None:
        codec.latent_size(args.height, args.width)
    else:
        for path in files:
            height, width = probe_size(path)
            try:
                codec.latent_size(height, width)
            except ValueError as exc:
                raise ValueError(f"{path.name}: {exc}; pass --height and --width to resize") from exc
    if args.clip_frames is not None:
        codec.latent_frames(args.clip_frames)
    return _read_videos(files, args, codec)


def _read_videos(files: list[Path], args: Namespace, codec: LatentCodec) -> Iterator[dict[str, Any]]:
    for path in files:
        frames, fps = read_video(path, args.max_frames)
        if args.height is not None:
            frames = resize_center_crop(frames, args.height, args.width)
        length = args.clip_frames or codec.usable_frames(len(frames))
        if length < 1 or len(frames) < length:
            print(
                f"skipping {path.name}: {len(frames)} frames, need {length or 'a codec-valid count'}",
                file=sys.stderr,
            )
            continue
        caption = path.with_suffix(".txt").read_text(encoding="utf-8").strip()
        stem = path.stem.replace(".", "_")
        clips = len(frames) // length if args.clip_frames else 1
        for clip in range(clips):
            yield {
                "key": f"{stem}-{clip:04d}",
                "frames": frames[clip * length : (clip + 1) * length],
                "prompt": caption,
                "meta": {
                    "source": "video",
                    "file": path.name,
                    "clip": clip,
                    "start_frame": clip * length,
                    "fps": fps,
                },
                "truth": {},
            }


def _encode(
    jobs: Iterator[dict[str, Any]], codec: LatentCodec, text: TextEncoder | None, device: str
) -> Iterator[dict[str, Any]]:
    """Encode each job's frames (and prompt) into a sample shaped like a decoded shard sample."""
    for job in jobs:
        frames = job["frames"]
        with torch.no_grad():
            video = uint8_to_unit(frames).permute(1, 0, 2, 3).unsqueeze(0).to(device)
            latents = codec.encode(video)[0].cpu()
        meta = {
            **job["meta"],
            "num_frames": len(frames),
            "height": frames.shape[2],
            "width": frames.shape[3],
            "latent_shape": list(latents.shape),
            "codec": codec.describe(),
            "text_encoder": text.describe() if text else None,
        }
        sample = {
            "key": job["key"],
            "latents": latents,
            "prompt": job["prompt"],
            "meta": meta,
            **job["truth"],
        }
        if text is not None:
            with torch.no_grad():
                emb, mask = text.encode([job["prompt"]])
            sample["text_emb"], sample["text_max_length"] = emb[0, mask[0]].cpu(), text.max_length
        yield sample


def _write(samples: Iterable[dict[str, Any]], output: str, shard_size: int) -> int:
    """Write encoded samples as shards; returns the sample count."""
    count = 0
    with open_shard_writer(output, shard_size) as sink:
        for sample in samples:
            sink.write(
                encode_sample(
                    sample["key"],
                    sample["latents"],
                    sample["prompt"],
                    sample["meta"],
                    text_emb=sample.get("text_emb"),
                    **per_frame_truth(sample),
                )
            )
            count += 1
    return count


def _check(urls: list[str]) -> int:
    """Read every sample of every shard; print per-shard counts; exit code 1 if anything was skipped."""
    try:
        shards = expand_shards(urls, "shards")
    except (ValueError, FileNotFoundError) as exc:
        print(f"cf-data check: {exc}", file=sys.stderr)
        return 2
    skips = SkipLog()
    total = 0
    for shard in shards:
        count = sum(1 for _ in decode_samples(read_shards([{"url": shard}], skips), skips))
        print(f"{shard}: {count} samples")
        total += count
    print(f"{total} samples in {len(shards)} shards, {skips.total} skipped")
    return 1 if skips.total else 0
