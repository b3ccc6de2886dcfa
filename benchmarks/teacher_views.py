"""Which context frame does a teacher copy? View choice of teachers on held-out revisit-world videos.

Recall by "where" means that a target frame copies the context frame sharing its camera. Each probe
samples a 4-frame target from noise (Euler, CFG) as ``teacher_context.py`` does and, per target frame,
names the context view nearest (MSE) to the sample; "right view" counts the frames where that is the
target's own view. Probes:

- ``far``: the revisit target of ``teacher_context.py`` (views last seen more than ``--min_gap`` frames
  earlier) with those earlier frames as the only context;
- ``far+recent``: the same with the last ``--recent`` frames added (``teacher_context.py``'s third column);
- ``scene``: a target inside a segment whose ``--recent`` preceding frames show the same place, so every
  target view is in the context, at most one pan period old;
- ``scene_one``: the same target and views, one frame per view (the oldest): a teacher that picks by
  camera still finds them, one that copies the frame a fixed number of positions back does not.

It also prints the cosine similarity of each teacher's camera embedding (the per-frame condition that
enters the tokens) between consecutive frames one pan step apart and across cuts, and, from the data
alone, what the world's 4-frame targets ask for (every even start): the share of target frames whose
view is in the last ``--recent`` frames, only further back, or new, and how often a frame of the first
kind equals the frame one ping-pong period (2 (pan_positions - 1) frames) earlier, a rule a teacher can
follow by position alone.

    python benchmarks/teacher_views.py pan=pan_teacher.safetensors --videos 64 --world \\
        '{"pan_positions": 3, "pan_step": 8, "num_objects": 0, "canvas_height": 192, "canvas_width": 192}'
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from recipe_world import add_world_arguments, held_out
from teacher_context import TARGET, find_revisit, sample_target

from cf_lightning.data import RevisitWorldConfig
from cf_lightning.models import WanModel
from cf_lightning.models.checkpoint import load_wan

PROBES = ("far", "far+recent", "scene", "scene_one")


def probes(view: torch.Tensor, place: torch.Tensor, min_gap: int, recent: int
           ) -> Iterator[tuple[str, int, list[int]]]:
    """``(probe, target start, context frames)`` for one video's ``view`` and ``place`` ids."""
    found = find_revisit(view, min_gap, recent)
    if found is not None:
        start, firsts = found
        yield "far", start, firsts
        yield "far+recent", start, sorted(firsts + list(range(start - recent, start)))
    frames = view.shape[0]
    inside = [s for s in range(recent, frames - TARGET + 1, 2)
              if (place[s - recent:s + TARGET] == place[s]).all()]
    if inside:
        start = inside[0]
        yield "scene", start, list(range(start - recent, start))
        oldest: dict[int, int] = {}
        for f in range(start - recent, start):
            oldest.setdefault(int(view[f]), f)
        yield "scene_one", start, sorted(oldest.values())


def right_views(sample: torch.Tensor, latents: torch.Tensor, view: torch.Tensor, start: int,
                context: list[int]) -> int:
    """Target frames whose nearest context view (one frame per view) is their own view."""
    per_view = {int(view[f]): f for f in context}
    right = 0
    for k in range(TARGET):
        errors = {v: float((sample[0, :, k] - latents[0, :, f]).square().mean()) for v, f in per_view.items()}
        right += int(min(errors, key=errors.__getitem__) == int(view[start + k]))
    return right


def target_needs(view: torch.Tensor, recent: int, period: int) -> dict[str, int]:
    """Counts of target frames (4-frame targets at every even start >= 2 of a ``[F]`` view-id video) whose
    view is in the last ``recent`` frames, only further back, or new; and of the first kind, those equal
    to the frame ``period`` earlier."""
    counts = {"recent": 0, "far": 0, "new": 0, "period": 0}
    for start in range(2, view.shape[0] - TARGET + 1, 2):
        for t in range(start, start + TARGET):
            if (view[max(start - recent, 0):start] == view[t]).any():
                counts["recent"] += 1
                counts["period"] += int(t >= period and bool(view[t - period] == view[t]))
            elif (view[:max(start - recent, 0)] == view[t]).any():
                counts["far"] += 1
            else:
                counts["new"] += 1
    return counts


@torch.no_grad()
def camera_similarity(model: WanModel, camera: torch.Tensor, place: torch.Tensor) -> tuple[float, float]:
    """Median cosine similarity of the camera embedding for consecutive frames within a place (a pan
    step; skipped where the camera does not move) and across a cut, over ``[N, F, 2]`` cameras."""
    if model.frame_cond_embedding is None:
        raise ValueError("this teacher has no per-frame condition; it cannot tell views apart by camera")
    embedded = model.frame_cond_embedding(camera.float())
    similarity = F.cosine_similarity(embedded[:, 1:], embedded[:, :-1], dim=-1)
    moved = (camera[:, 1:] != camera[:, :-1]).any(-1)
    same_place = place[:, 1:] == place[:, :-1]
    return float(similarity[moved & same_place].median()), float(similarity[~same_place].median())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("teachers", nargs="*", help="name=backbone file (Wan safetensors) or .ckpt export")
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--recent", type=int, default=8)
    parser.add_argument("--min_gap", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=3.0)
    add_world_arguments(parser)
    args = parser.parse_args()
    batches = list(held_out(args, args.videos).val_dataloader())
    world = RevisitWorldConfig(**json.loads(args.world))
    period = max(2 * (world.pan_positions - 1), 1)
    counts = [target_needs(batch["view"][0], args.recent, period) for batch in batches]
    needs = {key: sum(count[key] for count in counts) for key in counts[0]}
    frames = needs["recent"] + needs["far"] + needs["new"]
    print(f"target frames: {needs['recent'] / frames:.3f} in the last {args.recent} frames "
          f"({needs['period'] / max(needs['recent'], 1):.3f} of them equal to the frame {period} earlier), "
          f"{needs['far'] / frames:.3f} only further back, {needs['new'] / frames:.3f} new", flush=True)
    rows = []
    for spec in args.teachers:
        name, _, path = spec.partition("=")
        model = load_wan(path).eval()
        camera = torch.cat([batch["camera"] for batch in batches])
        place = torch.cat([batch["place"] for batch in batches])
        pan_step, cut = camera_similarity(model, camera, place)
        print(f"{name}: camera-embedding cosine, one pan step {pan_step:.4f}, across a cut {cut:.4f}",
              flush=True)
        stats = {p: {"count": 0, "error": 0.0, "none": 0.0, "right": 0} for p in PROBES}
        for index, batch in enumerate(batches):
            view, latents = batch["view"][0], batch["latents"]
            for probe, start, context in probes(view, batch["place"][0], args.min_gap, args.recent):
                target = latents[:, :, start:start + TARGET]
                noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(index))
                sample = sample_target(model, batch, [context], start, noise, 0.0, args.steps, args.guidance)
                blind = sample_target(model, batch, [[]], start, noise, 0.0, args.steps, args.guidance)
                row = stats[probe]
                row["count"] += 1
                row["error"] += float((sample - target).square().mean())
                row["none"] += float((blind - target).square().mean())
                row["right"] += right_views(sample, latents, view, start, context)
        rows.append((name, pan_step, cut, stats))
    print("| teacher | camera cosine, pan step / cut | probe | targets | error, no context | error "
          "| right view |")
    print("|---|---|---|---|---|---|---|")
    for name, pan_step, cut, stats in rows:
        for probe, row in stats.items():
            n = max(row["count"], 1)
            print(f"| {name} | {pan_step:.4f} / {cut:.4f} | {probe} | {row['count']} "
                  f"| {row['none'] / n:.4f} | {row['error'] / n:.4f} "
                  f"| {row['right']}/{TARGET * row['count']} |")


if __name__ == "__main__":
    main()
