"""Do a backbone's key summaries separate scene cuts? Similarity of consecutive frames on held-out videos.

Streams ground-truth videos through the backbone chunk by chunk (the clean refresh pass a rollout
runs) or, with ``--generated``, lets the backbone generate them as a student does (its own chunks are
what its memory will judge), collects the frame summaries a surprisal policy would be handed, and
splits consecutive-frame cosine similarities by the ground truth: within a scene or across a cut. A
threshold separates them when it lies between the lowest within-scene similarity and the highest cut
similarity (docs/memory_policies.md, "calibrate per model and data").

The videos are held-out revisit-world videos, or, for a real model such as Wan2.1, a folder of mp4
files with known cuts (``--videos_dir``): ``cuts.json`` maps each file name to the pixel frames where a
new scene starts, ``NAME.txt`` holds an optional caption; frames are encoded with ``--codec`` and
captions with ``--text_encoder``, and latent frames that straddle a cut are left out.

    python benchmarks/surprisal.py recipes/assets/student_init.safetensors --videos 16 [--generated]
    python benchmarks/surprisal.py checkpoints/student_init.safetensors --videos_dir cuts/ --chunk 3 \\
        --codec wan --codec_options '{"path": "checkpoints/Wan2.1-T2V-1.3B-Diffusers"}' \\
        --text_encoder umt5 --text_encoder_options '{"path": "checkpoints/Wan2.1-T2V-1.3B-Diffusers"}'
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from recipe_world import add_world_arguments, held_out

from cf_lightning.codecs import LatentCodec, build_codec, uint8_to_unit
from cf_lightning.data.datamodules import RevisitWorldDataModule
from cf_lightning.data.video_io import read_video, resize_center_crop
from cf_lightning.diffusion import denoising_sigmas
from cf_lightning.models import WanModel
from cf_lightning.models.checkpoint import load_wan
from cf_lightning.rollout import rollout
from cf_lightning.stages.common import Condition, batch_condition
from cf_lightning.text import TextEncoder, build_text_encoder
from memory_policies import MemoryState, SlowFast

# (latents [1, C, F, h, w], condition, scene id per latent frame [F], -1 where a frame straddles a cut)
LabelledVideo = tuple[torch.Tensor, Condition, torch.Tensor]


class SummaryRecorder(SlowFast):
    """A surprisal Slow-Fast memory that keeps every summary it is handed, in commit order."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(admission="surprisal", **kwargs)  # type: ignore[arg-type]
        self.summaries: list[torch.Tensor] = []

    def commit(self, state: MemoryState, summaries: torch.Tensor | None = None) -> None:
        assert summaries is not None
        self.summaries.append(summaries.detach().float())
        super().commit(state, summaries)


def world_videos(data: RevisitWorldDataModule) -> Iterator[LabelledVideo]:
    """Held-out revisit-world videos labelled by their view ids (equal ids = the same scene)."""
    for batch in data.val_dataloader():
        yield batch["latents"].float(), batch_condition(batch), batch["view"][0]


def scene_ids(groups: list[range], cuts: list[int]) -> torch.Tensor:
    """Scene index of each latent frame from the pixel frames where scenes start; -1 when its pixel
    frames straddle a cut (such a frame belongs to neither scene)."""
    bounds = sorted(set(cuts))
    scene = [sum(1 for c in bounds if c <= frame) for frame in range(max(g.stop for g in groups))]
    return torch.tensor([scene[g.start] if scene[g.start] == scene[g.stop - 1] else -1 for g in groups])


def mp4_videos(folder: Path, codec: LatentCodec, text: TextEncoder | None, text_dim: int,
               size: tuple[int, int] | None) -> Iterator[LabelledVideo]:
    """The folder's mp4 files (``cuts.json``: file name -> pixel frames where a scene starts), encoded."""
    cuts = json.loads((folder / "cuts.json").read_text())
    for name in sorted(cuts):
        frames, _ = read_video(folder / name)
        frames = frames[:codec.usable_frames(len(frames))]
        if size is not None:
            frames = resize_center_crop(frames, *size)
        with torch.no_grad():
            latents = codec.encode(uint8_to_unit(frames).permute(1, 0, 2, 3)[None]).float()
        caption = folder / Path(name).with_suffix(".txt").name
        if text is not None:
            emb, mask = text.encode(
                [caption.read_text(encoding="utf-8").strip() if caption.is_file() else ""]
            )
            cond = Condition(emb, mask, None)
        else:
            cond = Condition(torch.zeros(1, 1, text_dim), None, None)
        yield latents, cond, scene_ids(codec.frame_groups(len(frames)), cuts[name])


@torch.no_grad()
def similarities(
    model: WanModel,
    videos: Iterable[LabelledVideo],
    summary: str,
    layer: int | None,
    chunk: int,
    generated: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive-frame similarities within scenes and across cuts over the videos (batch 1)."""
    within, cuts = [], []
    for index, (latents, cond, scene) in enumerate(videos):
        frames = latents.shape[2] - latents.shape[2] % chunk
        recorder = SummaryRecorder(summary=summary, summary_layer=layer, sink=1, slow=0, fast=chunk,
                                   rope_length=chunk + 1)
        if generated:
            noise = torch.randn(latents[:, :, :frames].shape, generator=torch.Generator().manual_seed(index))
            rollout(model, recorder, noise, cond.context, denoising_sigmas(), chunk_frames=chunk,
                    context_mask=cond.context_mask, frame_cond=cond.frames(slice(0, frames)),
                    generator=torch.Generator().manual_seed(index))
        else:
            memory = model.new_memory(recorder, latents.shape[0], chunk, tuple(latents.shape[-2:]))
            context_kv = model(None, None, cond.context, mode="context_kv")
            for start in range(0, frames, chunk):
                part = slice(start, start + chunk)
                model(latents[:, :, part], torch.zeros(latents.shape[0], chunk), cond.context, memory=memory,
                      context_mask=cond.context_mask, frame_cond=cond.frames(part), context_kv=context_kv,
                      mode="commit")
        summaries = torch.cat(recorder.summaries)  # [frames, dim]: one video, chunks in order
        sims = F.cosine_similarity(summaries[1:], summaries[:-1], dim=-1)
        scene = scene[:frames]
        known = (scene[1:] >= 0) & (scene[:-1] >= 0)
        same = scene[1:] == scene[:-1]
        within.append(sims[known & same])
        cuts.append(sims[known & ~same])
    return torch.cat(within), torch.cat(cuts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("backbone", help="Wan safetensors file (e.g. a cf-export of a student)")
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=2)
    parser.add_argument(
        "--generated", action="store_true", help="judge the backbone's own rollouts (a student's view)"
    )
    parser.add_argument(
        "--videos_dir", type=Path, default=None, help="mp4 files with cuts.json instead of the world"
    )
    parser.add_argument(
        "--codec_options", type=json.loads, default={}, help="codec arguments (JSON), --videos_dir"
    )
    parser.add_argument("--text_encoder", default=None, help="caption encoder for --videos_dir (e.g. umt5)")
    parser.add_argument("--text_encoder_options", type=json.loads, default={}, help="its arguments (JSON)")
    parser.add_argument("--size", type=int, nargs=2, default=None, help="resize --videos_dir frames to H W")
    add_world_arguments(parser)
    args = parser.parse_args()
    model = load_wan(args.backbone).eval()
    if args.videos_dir is None:
        data = held_out(args, args.videos)
        videos = partial(world_videos, data)
    else:
        codec = build_codec(args.codec, **args.codec_options)
        text = (
            build_text_encoder(args.text_encoder, **args.text_encoder_options) if args.text_encoder else None
        )
        videos = partial(mp4_videos, args.videos_dir, codec, text, model.config.text_dim, args.size)
    print("| summary | layer | within scene: min / 5 % / median | cuts: median / 95 % / max | separated |")
    print("|---|---|---|---|---|")
    for summary, layer in itertools.product(("mean_key", "token_keys"), (0, None)):
        within, cuts = similarities(model, videos(), summary, layer, args.chunk, args.generated)
        low, high = float(within.min()), float(cuts.max())
        separated = f"yes, tau in ({high:.3f}, {low:.3f})" if low > high else "no"
        print(
            f"| {summary} | {'all' if layer is None else layer} | {low:.3f} / {within.quantile(0.05):.3f} / "
            f"{within.median():.3f} | {cuts.median():.3f} / {cuts.quantile(0.95):.3f} / {high:.3f} | "
            f"{separated} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
