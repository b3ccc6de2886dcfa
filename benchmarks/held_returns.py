"""Is far recall limited by what memory holds or by what the student makes of it?

Every student streams held-out revisit-world videos with its own memory policy; at each *return* (the
first frame back at a view seen before, see :func:`cf_lightning.memory_timeline.chunk_revisits`) the
error to the student's own first visit of that view is set against the memoryless control of the same
gap, split by whether the memory the chunk read held the view. A student that recalls what it holds
has a low ratio in the ``held`` rows; the ``not held`` rows are the policy's share of the loss.

    python benchmarks/held_returns.py slow_fast=runs/results/slow_fast/checkpoints/last.ckpt --videos 64

``--cuts_only`` keeps the returns at a cut (the frame before shows another place): on a world that pans
within segments, the later frames of a revisit segment are returns too (each pan step shows a view first
seen on the earlier visit), but the revisit's own first frames just showed them, so any recent window
holds them; only the returns at the cut need the far memory.
"""

from __future__ import annotations

import argparse
import itertools

import torch
from recipe_world import add_world_arguments, held_out

from cf_lightning.memory_timeline import TimelineRecorder, chunk_revisits
from cf_lightning.metrics import view_ids
from cf_lightning.stages import ContextForcingModule
from cf_lightning.stages.common import Condition, batch_condition

EDGES = [0, 16, 32, 64, 96, 192]


def control_at(video: torch.Tensor, views: list[int], gap: int) -> float:
    """Mean error between frames ``gap`` apart that show different views (the memoryless control)."""
    pairs = [j for j in range(len(views) - gap) if views[j + gap] != views[j]]
    if not pairs:
        return float("nan")
    earlier = torch.tensor(pairs)
    return float((video[:, earlier + gap] - video[:, earlier]).square().mean())


@torch.no_grad()
def held_split(module: ContextForcingModule, loader, edges: list[int], cuts_only: bool = False
               ) -> dict[tuple[str, bool], list[float]]:
    """Per (gap bucket, held): [returns, summed error, summed control]; with ``cuts_only``, only the
    returns whose frame before shows another place."""
    chunk = module.hparams.chunk_frames
    totals: dict[tuple[str, bool], list[float]] = {}
    for index, batch in enumerate(loader):
        cond = batch_condition(batch)
        latents = batch["latents"]
        frames = latents.shape[2] - latents.shape[2] % chunk
        cond = Condition(cond.context, cond.context_mask, cond.frames(slice(0, frames)))
        with TimelineRecorder(module.memory) as recorder:
            video = module.generate(cond, tuple(latents.shape), frames // chunk, seed=1000 * index).video
        video = video.float()
        visits = batch["first_visit"][:, :frames]
        place = batch["place"][:, :frames]
        cut = torch.ones_like(place, dtype=torch.bool)
        cut[:, 1:] = place[:, 1:] != place[:, :-1]
        for b, (snapshots, first_visit) in enumerate(zip(recorder.timelines, visits)):
            views = view_ids(first_visit).tolist()
            for c, snapshot in enumerate(snapshots, start=1):
                for frame, first, held in chunk_revisits(snapshot, first_visit, c * chunk, chunk):
                    if cuts_only and not cut[b, frame]:
                        continue
                    gap = frame - first
                    buckets = [f"{lo + 1}-{hi}" for lo, hi in itertools.pairwise(edges) if lo < gap <= hi]
                    control = control_at(video[b], views, gap)
                    if not buckets or control != control:  # no frame pair that far apart differs: no control
                        continue
                    row = totals.setdefault((buckets[0], held), [0, 0.0, 0.0])
                    row[0] += 1
                    row[1] += float((video[b, :, frame] - video[b, :, first]).square().mean())
                    row[2] += control
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("students", nargs="+", help="name=checkpoint of a ContextForcingModule run")
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--cuts_only", action="store_true",
                        help="only the returns at a cut (the frame before shows another place)")
    add_world_arguments(parser)
    args = parser.parse_args()
    data = held_out(args, args.videos, args.frames, args.batch)
    print("| student | gap | memory held the view | returns | error / control |")
    print("|---|---|---|---|---|")
    for spec in args.students:
        name, _, path = spec.partition("=")
        module = ContextForcingModule.load_from_checkpoint(path, map_location="cpu", weights_only=False)
        module.eval()
        totals = held_split(module, data.val_dataloader(), EDGES, args.cuts_only)
        for (bucket, held), (count, error, control) in sorted(
            totals.items(), key=lambda item: (int(item[0][0].split("-")[0]), not item[0][1])
        ):
            print(f"| {name} | {bucket} | {'yes' if held else 'no'} | {int(count)} | {error / control:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
