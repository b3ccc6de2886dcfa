"""Does surprisal on the clean latents separate cuts from camera motion? (what student_recall.yaml decides by)

``recipes/student_recall.yaml`` admits frames to slow memory by the cosine similarity of flattened clean
latent frames (threshold 0.995, compared with the last admitted frame). That separates cuts on static
segments, where a frame within a scene equals its predecessor. This splits the similarities on held-out
videos by the ground truth: consecutive frames across a cut (the place changes) or within a scene, and
each frame within a scene against its segment's first frame (the keyframe ``compare_to: last_admitted``
would hold if the scene's first frame were admitted), and reports what each threshold admits.

    python benchmarks/latent_cuts.py --videos 64 --world \\
        '{"pan_positions": 3, "pan_step": 8, "num_objects": 0, "canvas_height": 192, "canvas_width": 192}'
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from recipe_world import add_world_arguments, held_out


def split_similarities(latents: torch.Tensor, place: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cosine similarities of ``[C, F, h, w]`` latent frames: across cuts, within a scene (consecutive),
    and within a scene to the segment's first frame, from the place id of each frame ``[F]``."""
    frames = latents.transpose(0, 1).flatten(1).float()
    consecutive = F.cosine_similarity(frames[1:], frames[:-1], dim=-1)
    cut = place[1:] != place[:-1]
    starts = torch.cat([torch.zeros(1, dtype=torch.long), (cut.nonzero().flatten() + 1)])
    first = starts[torch.searchsorted(starts, torch.arange(1, frames.shape[0]), right=True) - 1]
    to_first = F.cosine_similarity(frames[1:], frames[first], dim=-1)
    return {"cut": consecutive[cut], "scene": consecutive[~cut], "scene_to_first": to_first[~cut]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.995, 0.9, 0.7, 0.5])
    add_world_arguments(parser)
    args = parser.parse_args()
    parts: dict[str, list[torch.Tensor]] = {"cut": [], "scene": [], "scene_to_first": []}
    for batch in held_out(args, args.videos).val_dataloader():
        for name, values in split_similarities(batch["latents"][0], batch["place"][0]).items():
            parts[name].append(values)
    sims = {name: torch.cat(values) for name, values in parts.items()}
    print("| pairs | count | min | 5 % | median | 95 % | max |")
    print("|---|---|---|---|---|---|---|")
    for name, values in sims.items():
        q = torch.quantile(values, torch.tensor([0.05, 0.5, 0.95])).tolist()
        print(f"| {name} | {len(values)} | {values.min():.4f} | {q[0]:.4f} | {q[1]:.4f} | {q[2]:.4f} "
              f"| {values.max():.4f} |")
    print("\n| threshold | cuts detected | within-scene frames admitted | to the first frame |")
    print("|---|---|---|---|")
    for tau in args.thresholds:
        rates = [float((sims[name] < tau).float().mean()) for name in sims]
        print(f"| {tau} | " + " | ".join(f"{rate:.3f}" for rate in rates) + " |")


if __name__ == "__main__":
    main()
