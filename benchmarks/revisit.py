"""Effective context of trained students on held-out revisit-world videos.

Every student streams whole held-out videos (its own camera path and prompt, all denoising steps)
with its own memory policy; the revisit error is the model's
revisit against its own first visit of the same view (self-consistency), per gap bucket, set
against the memoryless control measured on the same videos. Prints a markdown table and writes the
curves as a PNG.

    python benchmarks/revisit.py slow_fast=runs/cf/slow_fast/checkpoints/last.ckpt \\
        sliding_window=runs/cf/sliding_window/checkpoints/last.ckpt --videos 64 --out docs/results
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
from recipe_world import add_world_arguments, held_out

from cf_lightning.data.datamodules import RevisitWorldDataModule
from cf_lightning.metrics import RevisitError
from cf_lightning.stages import ContextForcingModule
from cf_lightning.stages.common import Condition, batch_condition

EDGES = [0, 8, 16, 32, 96]


@torch.no_grad()
def evaluate(
    module: ContextForcingModule, data: RevisitWorldDataModule, edges: list[int]
) -> dict[str, object]:
    """Revisit error per bucket, controls, effective context (midpoint and 0.9) and nominal span."""
    midpoint = RevisitError(max_gap=edges[-1], bucket_edges=edges)
    strict = RevisitError(max_gap=edges[-1], bucket_edges=edges, criterion=0.9)
    chunk = module.hparams.chunk_frames
    spans = []
    for index, batch in enumerate(data.val_dataloader()):
        cond = batch_condition(batch)
        frames = batch["latents"].shape[2] - batch["latents"].shape[2] % chunk
        cond = Condition(cond.context, cond.context_mask, cond.frames(slice(0, frames)))
        result = module.generate(cond, tuple(batch["latents"].shape), frames // chunk, seed=1000 * index)
        for metric in (midpoint, strict):
            metric.update(result.video.float(), None, batch["first_visit"][:, :frames])
        for state in result.memory.states:
            sink = set(state.regions["sink"])
            others = [f for f in state.kept_frames() if f not in sink]
            spans.append(state.frames_committed - min(others) if others else 0)
    out = midpoint.compute()
    return {
        "error": out["error"].tolist(), "control": out["control"].tolist(), "count": out["count"].tolist(),
        "effective_context": int(out["effective_context"]),
        "effective_context_0.9": int(strict.compute()["effective_context"]),
        "auc": float(out["auc"]), "nominal_span": max(spans),
    }


def table(results: dict[str, dict[str, object]], edges: list[int]) -> str:
    buckets = [f"{lo + 1}-{hi}" for lo, hi in itertools.pairwise(edges)]
    lines = ["| student | effective context (midpoint) | at 0.9 | nominal span | AUC | "
             + " | ".join(f"error gap {b}" for b in buckets) + " |",
             "|---|---|---|---|---|" + "---|" * len(buckets)]
    for name, r in results.items():
        errors = " | ".join(f"{e:.4f} (ctl {c:.4f})" for e, c in zip(r["error"], r["control"]))  # type: ignore[arg-type]
        lines.append(
            f"| {name} | {r['effective_context']} | {r['effective_context_0.9']} | {r['nominal_span']} | "
            f"{r['auc']:.3f} | {errors} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict[str, object]], edges: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Each student has its own memoryless control (its video's contrast sets the scale), so the curves
    # are errors relative to it: 1 is no memory, the effective-context criterion is the 0.5 line.
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        ratios = [e / c for e, c in zip(r["error"], r["control"])]  # type: ignore[arg-type]
        axis.plot(edges[1:], ratios, marker="o", label=name)
    axis.axhline(1.0, linestyle="--", color="grey", label="memoryless control")
    axis.axhline(0.5, linestyle=":", color="grey", label="effective-context midpoint")
    axis.set_xlabel("revisit gap (latent frames, bucket upper edge)")
    axis.set_ylabel("revisit error / memoryless control")
    axis.set_ylim(bottom=0)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("students", nargs="+", help="name=checkpoint of a ContextForcingModule run")
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--frames", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="folder for results.md and revisit_curves.png")
    add_world_arguments(parser)
    args = parser.parse_args()
    torch.manual_seed(0)
    data = held_out(args, args.videos, args.frames, args.batch)
    results = {}
    for spec in args.students:
        name, _, path = spec.partition("=")
        module = ContextForcingModule.load_from_checkpoint(path, map_location="cpu", weights_only=False)
        results[name] = evaluate(module.eval(), data, EDGES)
        print(name, results[name], flush=True)
    text = table(results, EDGES)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "revisit_table.md").write_text(text)
        plot(results, EDGES, args.out / "revisit_curves.png")


if __name__ == "__main__":
    main()
