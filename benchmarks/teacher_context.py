"""Does a teacher use its context? Revisit error of teachers on held-out revisit-world videos.

For every held-out video the target is a 2-chunk window that revisits a view whose first visit lies
more than ``--min_gap`` frames earlier. Each teacher denoises the target from pure noise (Euler,
CFG) given as context (a) nothing, (b) the last N frames, which do not contain the first visit, or
(c) the last N frames plus the first-visit frames; optionally the context is corrupted with
Gaussian noise of std ``--context_noise`` (the drifted history ERFT is meant to survive). The
error is the MSE between the sample and the ground-truth target on the revisit frames.

    python benchmarks/teacher_context.py ctx=recipes/assets/context_teacher.safetensors --videos 64
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from recipe_world import add_world_arguments, held_out

from cf_lightning.diffusion import euler_sample, guided, sampling_sigmas
from cf_lightning.models import WanModel
from cf_lightning.models.checkpoint import load_wan
from cf_lightning.models.context import build_context_sequence
from cf_lightning.stages.common import batch_condition

TARGET = 4  # latent frames (2 chunks of 2)
CONTEXTS = ("none", "recent", "recent+first_visit")


def find_revisit(view: torch.Tensor, min_gap: int, recent: int) -> tuple[int, list[int]] | None:
    """A target start whose window only shows views that are absent from the recent context and were
    last seen more than ``min_gap`` frames earlier, with those earlier frames (one per target view)."""
    frames = view.shape[0]
    for start in range(frames - TARGET, recent + min_gap, -2):
        window = view[start:start + TARGET].tolist()
        if set(window) & set(view[start - recent:start].tolist()):
            continue
        earlier = []
        for v in window:
            seen = (view[:start - recent] == v).nonzero().flatten()
            if len(seen) == 0 or start - int(seen[-1]) <= min_gap:
                break
            earlier.append(int(seen[-1]))
        else:
            return start, sorted(set(earlier))
    return None


@torch.no_grad()
def sample_target(model: WanModel, batch: dict, contexts: list[list[int]], start: int, noise: torch.Tensor,
                  context_noise: float, steps: int, guidance: float) -> torch.Tensor:
    cond = batch_condition(batch)
    latents = batch["latents"]
    history = latents[:, :, :start]
    if context_noise:
        history = history + context_noise * torch.randn(
            history.shape, generator=torch.Generator().manual_seed(1)
        )
    sequence = build_context_sequence(history, contexts, noise, history_cond=cond.frames(slice(0, start)),
                                      target_cond=cond.frames(slice(start, start + TARGET)))

    return euler_sample(guided(partial(sequence.velocity, model), cond.context, guidance), noise,
                        sampling_sigmas(steps, 5.0))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("teachers", nargs="+", help="name=backbone file (Wan safetensors) or .ckpt export")
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--recent", type=int, default=8)
    parser.add_argument("--min_gap", type=int, default=16)
    parser.add_argument("--context_noise", type=float, nargs="+", default=[0.0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--guidance", type=float, default=3.0)
    add_world_arguments(parser)
    args = parser.parse_args()
    data = held_out(args, args.videos)
    rows = []
    for spec in args.teachers:
        name, _, path = spec.partition("=")
        model = load_wan(path).eval()
        for noise_std in args.context_noise:
            errors: dict[str, list[float]] = {c: [] for c in CONTEXTS}
            for index, batch in enumerate(data.val_dataloader()):
                found = find_revisit(batch["view"][0], args.min_gap, args.recent)
                if found is None:
                    continue
                start, firsts = found
                recent = list(range(start - args.recent, start))
                target = batch["latents"][:, :, start:start + TARGET]
                noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(index))
                for context in CONTEXTS:
                    frames = {"none": [], "recent": recent, "recent+first_visit": sorted(firsts + recent)}[
                        context
                    ]
                    sample = sample_target(
                        model, batch, [frames], start, noise, noise_std, args.steps, args.guidance
                    )
                    errors[context].append(float((sample - target).square().mean()))
            means = {c: sum(v) / max(len(v), 1) for c, v in errors.items()}
            rows.append((name, noise_std, len(errors["none"]), means))
            print(name, noise_std, len(errors["none"]), means, flush=True)
    print(
        "| teacher | context noise | videos | " + " | ".join(f"error, context {c}" for c in CONTEXTS) + " |"
    )
    print("|---|---|---|" + "---|" * len(CONTEXTS))
    for name, noise_std, count, means in rows:
        print(f"| {name} | {noise_std} | {count} | " + " | ".join(f"{means[c]:.4f}" for c in CONTEXTS) + " |")


if __name__ == "__main__":
    main()
