"""Which temporal layout should a teacher see the student's memory in? Measured, not assumed.

The student reads its kept frames at bounded positions (``MemoryPolicy.positions``); until its memory
is full those leave a gap after the sink ([0, 1, 6, 14, 15] read at [0, 1, 5, 6, 7], query at [8, 9]),
while the earlier teachers were trained with the context packed at 0..n-1 ([0..4], query at [5, 6]).
For held-out revisit-world videos and every history length where the two layouts differ, each
teacher samples the next 2 chunks from noise (Euler, CFG) given what the student's memory holds (the
stage-1 recipe's policy), once in each layout, and the error to the ground truth is reported per
layout. A teacher that scores the student's layout worse than its own cannot be used in it as it is.

    python benchmarks/context_layout.py ctx=recipes/assets/context_teacher.safetensors --videos 32
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch
from recipe_world import add_world_arguments, held_out

from cf_lightning.diffusion import euler_sample, guided, sampling_sigmas
from cf_lightning.models import WanModel
from cf_lightning.models.checkpoint import load_wan
from cf_lightning.models.context import PositionFn, build_context_sequence, context_layout
from cf_lightning.recipe import load_recipe
from cf_lightning.stages.common import batch_condition
from memory_policies import MemoryPolicy, SlowFast

STUDENT_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "student_init.yaml"
LAYOUTS = ("packed", "student")


def student_policy() -> tuple[MemoryPolicy, int]:
    """The stage-1 student's memory (uniform admission: no keys are needed to replay it) and chunk size."""
    settings = load_recipe(STUDENT_RECIPE)["model"]["init_args"]
    return SlowFast(**settings["memory"]["init_args"]), int(settings["chunk_frames"])


def memory_after(policy: MemoryPolicy, chunk: int, history: int) -> list[int]:
    state = policy.new_state(chunk)
    for _ in range(history // chunk):
        policy.commit(state)
    return state.kept_frames()


@torch.no_grad()
def sample(model: WanModel, batch: dict, frames: list[int], start: int, target: int, noise: torch.Tensor,
           layout: PositionFn, steps: int, guidance: float) -> torch.Tensor:
    cond = batch_condition(batch)
    sequence = build_context_sequence(batch["latents"][:, :, :start], [frames], noise,
                                      history_cond=cond.frames(slice(0, start)),
                                      target_cond=cond.frames(slice(start, start + target)), layout=layout)
    return euler_sample(guided(partial(sequence.velocity, model), cond.context, guidance), noise,
                        sampling_sigmas(steps, 5.0))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("teachers", nargs="+", help="name=backbone file (Wan safetensors) or .ckpt export")
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--target_chunks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=3.0)
    add_world_arguments(parser)
    args = parser.parse_args()
    policy, chunk = student_policy()
    target = args.target_chunks * chunk
    data = held_out(args, args.videos)
    layouts = {name: context_layout(name, policy, chunk) for name in LAYOUTS}  # type: ignore[arg-type]
    starts = []
    for start in range(chunk, 96 - target + 1, chunk):
        frames = memory_after(policy, chunk, start)
        placed = {name: layout(frames, start, target) for name, layout in layouts.items()}
        if placed["packed"] != placed["student"]:
            starts.append((start, frames))
    print(f"policy {policy!r}: layouts differ at history lengths {[s for s, _ in starts]}")
    print("| teacher | videos x starts | error, packed layout | error, student layout | student / packed | "
          "mean abs sample difference |")
    print("|---|---|---|---|---|---|")
    for spec in args.teachers:
        name, _, path = spec.partition("=")
        model = load_wan(path).eval()
        errors: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
        moved = []
        for index, batch in enumerate(data.val_dataloader()):
            for start, frames in starts:
                truth = batch["latents"][:, :, start:start + target]
                noise = torch.randn(
                    truth.shape, generator=torch.Generator().manual_seed(index * 1000 + start)
                )
                outs = {
                    layout: sample(
                        model, batch, frames, start, target, noise, layouts[layout], args.steps, args.guidance
                    )
                    for layout in LAYOUTS
                }
                for layout, out in outs.items():
                    errors[layout].append(float((out - truth).square().mean()))
                moved.append(float((outs["student"] - outs["packed"]).abs().mean()))
        packed, student = (sum(errors[k]) / len(errors[k]) for k in LAYOUTS)
        print(f"| {name} | {len(moved)} | {packed:.4f} | {student:.4f} | {student / packed:.3f} | "
              f"{sum(moved) / len(moved):.4f} |", flush=True)


if __name__ == "__main__":
    main()
