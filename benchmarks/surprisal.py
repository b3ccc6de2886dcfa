"""Do a backbone's key summaries separate scene cuts? Similarity of consecutive frames on held-out videos.

Streams ground-truth held-out revisit-world videos through the backbone chunk by chunk (the clean
refresh pass a rollout runs) or, with ``--generated``, lets the backbone generate them as a student
does (its own chunks are what its memory will judge), collects the frame summaries a surprisal
policy would be handed, and splits consecutive-frame cosine similarities by the ground truth: same
view (within a scene) or a cut. A threshold separates them when it lies between the lowest within-scene similarity and the
highest cut similarity (docs/memory_policies.md, "calibrate per model and data").

    python benchmarks/surprisal.py recipes/assets/student_init.safetensors --videos 16 [--generated]
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F
from recipe_world import add_world_arguments, held_out

from cf_lightning.data.datamodules import RevisitWorldDataModule
from cf_lightning.diffusion import denoising_sigmas
from cf_lightning.models import WanModel
from cf_lightning.models.checkpoint import load_wan
from cf_lightning.modules.common import batch_condition
from cf_lightning.rollout import rollout
from memory_policies import MemoryState, SlowFast


class SummaryRecorder(SlowFast):
    """A surprisal Slow-Fast memory that keeps every summary it is handed, in commit order."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(admission="surprisal", **kwargs)  # type: ignore[arg-type]
        self.summaries: list[torch.Tensor] = []

    def commit(self, state: MemoryState, summaries: torch.Tensor | None = None) -> None:
        assert summaries is not None
        self.summaries.append(summaries.detach().float())
        super().commit(state, summaries)


@torch.no_grad()
def similarities(model: WanModel, data: RevisitWorldDataModule, summary: str, layer: int | None, chunk: int,
                 generated: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Consecutive-frame similarities within scenes and across cuts over the held-out videos (batch 1)."""
    within, cuts = [], []
    for index, batch in enumerate(data.val_dataloader()):
        latents, cond = batch["latents"].float(), batch_condition(batch)
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
        view = batch["view"][0, :frames]
        same = view[1:] == view[:-1]
        within.append(sims[same])
        cuts.append(sims[~same])
    return torch.cat(within), torch.cat(cuts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbone", help="Wan safetensors file (e.g. a cf-export of a student)")
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=2)
    parser.add_argument("--generated", action="store_true", help="judge the backbone's own rollouts (a student's view)")
    add_world_arguments(parser)
    args = parser.parse_args()
    data = held_out(args, args.videos)
    model = load_wan(args.backbone).eval()
    print("| summary | layer | within scene: min / 5 % / median | cuts: median / 95 % / max | separated |")
    print("|---|---|---|---|---|")
    for summary, layer in itertools.product(("mean_key", "token_keys"), (0, None)):
        within, cuts = similarities(model, data, summary, layer, args.chunk, args.generated)
        low, high = float(within.min()), float(cuts.max())
        separated = f"yes, tau in ({high:.3f}, {low:.3f})" if low > high else "no"
        print(f"| {summary} | {'all' if layer is None else layer} | {low:.3f} / {within.quantile(0.05):.3f} / "
              f"{within.median():.3f} | {cuts.median():.3f} / {cuts.quantile(0.95):.3f} / {high:.3f} | "
              f"{separated} |", flush=True)


if __name__ == "__main__":
    main()
