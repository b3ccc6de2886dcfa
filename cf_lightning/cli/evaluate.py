"""`cf-eval`: long-video evaluation as the Context Forcing paper reports it, for any system.

Score a folder of mp4s from any model (other systems' samples included)::

    cf-eval --videos samples/ --dinov2 weights/dinov2-base --clip weights/clip-vit-b-32 --out eval/

or generate prompts x seeds with a trained student first, then score them the same way::

    cf-eval --checkpoint runs/slowfast/version_0/checkpoints/last.ckpt --prompts prompts.jsonl \\
        --seeds 0 1 2 --out eval/ [-- <cf-gen arguments, e.g. --memory sliding_window>]

Each video is scored per timestamp (default: the paper's 0.5 s windows around 10, 20, ..., 60 s; the
frame rate is the file's unless ``--fps``): DINOv2 / CLIP-F consistency to the first frame and to the
previous window, CLIP-T, VBench subject / background consistency, flicker, quality and its drift;
effective context where a ``<video>.first_visit.json`` says which frames revisit which (our revisit
world writes it). A ``<video>.txt`` next to a video holds its prompt (CLIP-T). Writes ``table.md``
(the paper's tables), ``curves.png`` (per-timestamp curves), ``scores.json`` and TensorBoard scalars
plus an HParams row under ``--out`` (``--tb_dir`` to log elsewhere).

Feature networks load from local directories only (``--dinov2``, ``--clip``); ``pixel_stats`` is the
weight-free stand-in (:class:`~cf_lightning.metrics.PixelStatsExtractor`), for CPU smoke runs only:
its numbers are not comparable with the paper's.

Generation seam: every generated video comes from :func:`generate_long_video`, which runs ``cf-gen``
(text-to-video, or over a revisit-world video's camera path for runs trained on that world); everything
after it reads only the mp4 and its sidecars.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from cf_lightning.cli.generate import main as cf_gen
from cf_lightning.data.revisit_world import RevisitWorldConfig
from cf_lightning.data.revisit_world import generate_video as revisit_video
from cf_lightning.eval_report import SystemResult, log_to_tensorboard, markdown_tables, plot_curves
from cf_lightning.inference import parse_policy
from cf_lightning.inference.loading import RUN_SUFFIX, saved_policy
from cf_lightning.metrics import (
    Extractors,
    FeatureExtractor,
    HFImageExtractor,
    HFTextExtractor,
    LongVideoMetrics,
    PixelStatsExtractor,
    RevisitError,
    TimeWindows,
    needed_frames,
    score_video,
)
from cf_lightning.metrics.windows import PAPER_WIDTH, parse_timestamps
from cf_lightning.stages.common import read_lightning_checkpoint
from memory_policies import MemoryPolicy

STAND_IN = "pixel_stats"
PROMPT_SUFFIX = ".txt"
REVISIT_SUFFIX = ".first_visit.json"


# ---------------------------------------------------------------------------------------- prompts
def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line of a text file, or ``{"prompt": ...}`` per line of a ``.jsonl`` file
    (other keys, such as a MovieGenBench category, are ignored)."""
    path = Path(path)
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                prompts.append(str(json.loads(line)["prompt"]))
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(
                    f'{path}:{number}: expected {{"prompt": str, ...}}, got {line!r} ({error})'
                ) from None
        else:
            prompts.append(line.strip())
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts


# ------------------------------------------------------------------------------ the generation seam
def option_value(argv: list[str], name: str) -> str | None:
    """The value of ``name`` in an argument list, given as ``name value`` or ``name=value``."""
    for position, argument in enumerate(argv):
        if argument == name and position + 1 < len(argv):
            return argv[position + 1]
        if argument.startswith(name + "="):
            return argument[len(name) + 1:]
    return None


@dataclass(frozen=True)
class GeneratedVideo:
    path: Path
    frames: int
    seconds: float  # wall time of the generation call, checkpoint loading included


def run_settings(checkpoint: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A cf-fit run's module and data module hyper-parameters (empty for other checkpoint files)."""
    if checkpoint.suffix != RUN_SUFFIX:
        return {}, {}
    saved = read_lightning_checkpoint(checkpoint)
    return dict(saved.get("hyper_parameters") or {}), dict(saved.get("datamodule_hyper_parameters") or {})


def generate_long_video(checkpoint: Path, prompt: str, seed: int, out: Path, frames: int | None,
                        fps: float, gen_args: list[str]) -> GeneratedVideo:
    """Generate one long video for ``prompt`` and ``seed`` into ``out`` (an mp4 plus its sidecars).

    The one place where cf-eval makes videos; it runs ``cf-gen`` with noise seed ``seed``. A run
    trained on the revisit world (its saved data settings name a world) streams over the camera path
    of revisit-world video ``seed`` with ``prompt`` as its text, and the world's first visits are
    written beside the mp4 so effective context is measured; any other checkpoint is text-to-video
    from ``prompt`` alone (``gen_args`` add e.g. ``--seconds 60 --umt5 DIR --vae DIR --preset NAME``).
    Another generator fits here if it leaves ``out`` as an mp4 (optionally with ``<out>.txt`` and
    ``<out>.first_visit.json``): scoring reads nothing else.
    """
    world = run_settings(checkpoint)[1].get("world")
    with tempfile.TemporaryDirectory() as scratch:
        argv = ["--checkpoint", str(checkpoint), "--out", scratch, "--prompt", prompt, "--seed", str(seed),
                "--fps", str(fps), *(["--frames", str(frames)] if frames else []),
                *(["--world_seed", str(seed)] if world is not None else []), *gen_args]
        start = time.perf_counter()
        cf_gen(argv)
        seconds = time.perf_counter() - start
        out.parent.mkdir(parents=True, exist_ok=True)
        (Path(scratch) / "video.mp4").replace(out)
    with av.open(str(out)) as container:
        frames = container.streams.video[0].frames
    out.with_suffix(PROMPT_SUFFIX).write_text(prompt)
    if world is not None:
        overrides = json.loads(option_value(gen_args, "--world") or "{}")
        first_visit = revisit_video(RevisitWorldConfig(**{**world, **overrides}), seed).first_visit.tolist()
        out.with_name(out.stem + REVISIT_SUFFIX).write_text(json.dumps(first_visit))
    return GeneratedVideo(out, frames, seconds)


# ----------------------------------------------------------------------------------------- reading
@dataclass
class DecodedVideo:
    frames: torch.Tensor  # [N, 3, H, W] in [0, 1]: frame index[j] of the video
    index: list[int]
    num_frames: int


def decode(path: Path, keep: set[int] | None) -> DecodedVideo:
    """Decode ``path``, keeping only frames in ``keep`` (all when None)."""
    kept, index = [], []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{str(path)!r} has no video stream")
        count = 0
        for frame in container.decode(container.streams.video[0]):
            if keep is None or count in keep:
                kept.append(frame.to_ndarray(format="rgb24"))
                index.append(count)
            count += 1
    if not count:
        raise ValueError(f"{str(path)!r} has no decodable frames")
    frames = torch.from_numpy(np.stack(kept)).permute(0, 3, 1, 2).float() / 255.0
    return DecodedVideo(frames, index, count)


def video_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".mp4")
    if not files:
        raise FileNotFoundError(f"no .mp4 files in {str(folder)!r}")
    return files


# ----------------------------------------------------------------------------------------- scoring
def load_extractors(dinov2: str | None, clip: str | None) -> tuple[Extractors, dict[str, str]]:
    """Extractors from local directories (or the ``pixel_stats`` stand-in) and how each was made."""
    def image(spec: str | None) -> FeatureExtractor | None:
        if spec is None:
            return None
        return PixelStatsExtractor() if spec == STAND_IN else HFImageExtractor(spec)

    structure, appearance = image(dinov2), image(clip)
    text = HFTextExtractor(clip, model=appearance.model) if isinstance(appearance, HFImageExtractor) else None
    used = {"structure (DINOv2 role)": dinov2, "appearance (CLIP role)": clip}
    return Extractors(structure, appearance, text), {k: Path(v).name for k, v in used.items() if v}


@dataclass
class Scoring:
    extractors: Extractors
    timestamps: tuple[float, ...]
    width: float
    fps: float | None
    revisit_buckets: list[int]

    def windows(self, file_fps: float) -> TimeWindows:
        fps = self.fps or file_fps
        if not fps > 0:
            raise ValueError("the video file states no frame rate; pass --fps")
        return TimeWindows(fps, self.timestamps, self.width)


def file_fps(path: Path) -> float:
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{str(path)!r} has no video stream")
        stream = container.streams.video[0]
        return float(stream.average_rate or stream.guessed_rate or 0.0)


def score_folder(files: list[Path], scoring: Scoring, name: str,
                 generation_fps: float | None = None) -> SystemResult:
    """Score every file at the same windows; prompts and revisits come from sidecars of each video."""
    windows = scoring.windows(file_fps(files[0]))
    metric = LongVideoMetrics(windows, scoring.extractors)
    revisit = RevisitError(max_gap=scoring.revisit_buckets[-1], bucket_edges=scoring.revisit_buckets)
    for path in files:
        if scoring.windows(fps := file_fps(path)) != windows:
            raise ValueError(f"{path.name} has {fps} fps, {files[0].name} {windows.fps}; pass --fps")
        prompt_file, revisit_file = (
            path.with_suffix(PROMPT_SUFFIX),
            path.with_name(path.stem + REVISIT_SUFFIX),
        )
        if scoring.extractors.text is not None and not prompt_file.is_file():
            raise ValueError(f"CLIP-T needs the prompt of {path.name}: put it in {prompt_file.name}")
        prompt = prompt_file.read_text().strip() if prompt_file.is_file() else None
        first_visit = json.loads(revisit_file.read_text()) if revisit_file.is_file() else None
        # the windows of an unknown length are a superset of those of the real one
        decoded = decode(path, None if first_visit is not None else set(needed_frames(windows, 1 << 40)))
        position = {i: j for j, i in enumerate(decoded.index)}
        wanted = needed_frames(windows, decoded.num_frames)
        metric.update(
            score_video(
                decoded.frames[[position[i] for i in wanted]],
                wanted,
                decoded.num_frames,
                windows,
                scoring.extractors,
                prompt,
            )
        )
        if first_visit is not None:
            usable = min(len(first_visit), decoded.num_frames)
            revisit.update(decoded.frames[:usable].transpose(0, 1)[None], None,
                           torch.tensor(first_visit[:usable])[None])
    result = metric.compute()
    scalars = {"quality_drift": float(result.pop("quality_drift"))}
    if generation_fps is not None:
        scalars["fps"] = generation_fps
    if revisit.update_count:
        found = revisit.compute()
        scalars["effective_context"] = float(found["effective_context"])
        scalars["revisit_auc"] = float(found["auc"])
    return SystemResult(name, list(windows.timestamps), {k: v.tolist() for k, v in result.items()}, scalars,
                        [p.name for p in files])


def write_reports(result: SystemResult, out: Path, tb_dir: Path, hparams: dict[str, Any]) -> Path:
    result.save(out)
    table = out / "table.md"
    table.write_text(markdown_tables([result]))
    plot_curves([result], out / "curves.png")
    log_to_tensorboard(result, tb_dir, hparams)
    return table


def checkpoint_hparams(checkpoint: Path, memory_override: str | None = None) -> dict[str, Any]:
    """HParams columns of the generating student: its memory policy's (the run's, or the ``--memory``
    given to cf-gen) and what its teacher saw, so evaluation rows tell variants apart."""
    trained = run_settings(checkpoint)[0]
    if memory_override is not None:
        memory: MemoryPolicy | None = parse_policy(memory_override)
    else:
        memory = saved_policy(trained["memory"]) if "memory" in trained else None
    columns = dict(memory.ablation_hparams()) if memory is not None else {}
    teacher = trained.get("teacher")
    if isinstance(teacher, dict):  # stage 2: what its teacher saw, and in which layout
        for key, column in (("context", "teacher/context"), ("context_positions", "teacher/positions")):
            if key in teacher:
                columns[column] = str(teacher[key])
    return columns


def parse_args(argv: list[str]) -> argparse.Namespace:
    """cf-eval's own options; arguments after a ``--`` go to cf-gen unchanged (``gen_args``)."""
    split = argv.index("--") if "--" in argv else len(argv)
    argv, gen_args = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--videos", type=Path, help="score the mp4s of this folder")
    source.add_argument("--checkpoint", type=Path, help="generate with this cf-fit checkpoint, then score")
    parser.add_argument(
        "--prompts", type=Path, help="with --checkpoint: text (one per line) or JSONL {prompt}"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--frames", type=int, default=None, help="latent frames per video (default: cf-gen's)"
    )
    parser.add_argument(
        "--gen_fps", type=float, default=16.0, help="frame rate the generated mp4s are written at"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--tb_dir", type=Path, default=None, help="TensorBoard run directory (default: --out)"
    )
    parser.add_argument("--name", default=None, help="system name in tables and TensorBoard")
    parser.add_argument("--dinov2", default=None, help=f"local DINOv2 directory, or {STAND_IN}")
    parser.add_argument(
        "--clip", default=None, help=f"local CLIP directory (also gives CLIP-T), or {STAND_IN}"
    )
    parser.add_argument("--timestamps", default="10,20,30,40,50,60", help="seconds, comma-separated")
    parser.add_argument("--width", type=float, default=PAPER_WIDTH, help="window length in seconds")
    parser.add_argument(
        "--fps", type=float, default=None, help="frame rate to score at (default: the file's)"
    )
    parser.add_argument("--revisit_buckets", default="0,8,16,32,96", help="revisit gap buckets, in frames")
    args = parser.parse_args(argv)
    if args.checkpoint is not None and args.prompts is None:
        parser.error("--checkpoint needs --prompts")
    if args.dinov2 is None and args.clip is None:
        parser.error(
            f"give --dinov2 and/or --clip (local directories, or {STAND_IN} for a weight-free smoke run)"
        )
    if gen_args and args.checkpoint is None:
        parser.error(f"cf-gen arguments {gen_args} after '--' need --checkpoint")
    args.gen_args = gen_args
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    extractors, features = load_extractors(args.dinov2, args.clip)
    scoring = Scoring(extractors, parse_timestamps(args.timestamps), args.width, args.fps,
                      [int(b) for b in args.revisit_buckets.split(",")])
    hparams: dict[str, Any] = {"eval/windows": f"{args.width:g}s @ {args.timestamps}",
                               **{f"eval/{k.split(' ')[0]}": v for k, v in features.items()}}
    generation_fps = None
    if args.checkpoint is not None:
        folder = args.out / "videos"
        files, seconds, frames = [], 0.0, 0
        for number, prompt in enumerate(read_prompts(args.prompts)):
            for seed in args.seeds:
                made = generate_long_video(
                    args.checkpoint,
                    prompt,
                    seed,
                    folder / f"p{number:03d}_s{seed}.mp4",
                    args.frames,
                    args.gen_fps,
                    args.gen_args,
                )
                files.append(made.path)
                seconds += made.seconds
                frames += made.frames
        generation_fps = frames / seconds
        hparams.update({"eval/checkpoint": str(args.checkpoint), "eval/gen_args": shlex.join(args.gen_args),
                        **checkpoint_hparams(args.checkpoint, option_value(args.gen_args, "--memory"))})
    else:
        files = video_files(args.videos)
    name = args.name or (args.checkpoint.stem if args.checkpoint is not None else args.videos.name)
    result = score_folder(files, scoring, name, generation_fps)
    result.features = features
    print(write_reports(result, args.out, args.tb_dir or args.out, hparams))


if __name__ == "__main__":
    main()
