"""Every registered memory policy at equal budgets on one trained Context Forcing student (the zoo table).

The student is trained with its own policy (the recipe's Slow-Fast); here every policy replaces it at
inference, with the same number of attended memory frames (``--budgets``, default 8 and 18), on the
same held-out revisit-world videos, noise and prompts. For each policy and budget: the share of
revisits whose view the memory held when they were generated (what the policy offers, model-free),
effective context
(midpoint and strict 0.9 criteria), AUC, revisit error per gap bucket (up to 192 frames), per-chunk
time and the share of it spent in memory bookkeeping (policy decisions, ``KVMemory`` read / commit /
gather, attention statistics), and the distance of the AUC to the ``oracle`` row, which knows which
views return (Belady's rule) and is the ceiling of any policy at that budget. ``full`` (unbounded) is
the reference row, not a budget-matched one. Budgets count tokens: a policy whose entries hold fewer
tokens than a frame (``deep_forcing_tokens``) attends as many tokens as ``budget`` whole frames, spread
over more frames, except ``pack_forcing_pooled``, which attends ``budget`` entries (column "attended
tokens", in frames): as many tokens would take four times the pooled entries, hence four times the
positions, far outside the range the student was trained on.

    python benchmarks/policies.py runs/slowfast/zoo/checkpoints/last.ckpt --videos 16 --frames 192 \\
        --out docs/policies
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from recipe_world import RECIPE, add_world_arguments, held_out

from cf_lightning.memory_timeline import TimelineRecorder, revisit_recall
from cf_lightning.metrics import RevisitError
from cf_lightning.models import WanModel
from cf_lightning.recipe import load_recipe
from cf_lightning.rollout import randn, rollout
from cf_lightning.stages import ContextForcingModule
from cf_lightning.stages.common import Condition, batch_condition
from memory_policies import (
    DeepForcing,
    FadeMem,
    Full,
    InfinityRoPE,
    Keyframe,
    LongLiveRAG,
    MemoryPolicy,
    Oracle,
    PackForcing,
    RollingSink,
    SlidingWindow,
    SlowFast,
    canonical_name,
)

EDGES = [0, 8, 16, 32, 64, 96, 192]
SINK, RECENT = 2, 4  # shared by every budget-matched policy (the recipe's sink and fast window)
#: rows that attend ``budget`` entries of fewer tokens rather than ``budget`` frames' worth of tokens
EQUAL_ENTRIES = {"pack_forcing_pooled"}


def zoo(budget: int, chunk: int, trained: SlowFast) -> dict[str, MemoryPolicy]:
    """Every registered policy with ``budget`` attended memory frames (sink 2 + recent window 4 where a
    policy has them, as the trained recipe; the rest is each policy's own region). ``trained`` gives
    Slow-Fast's admission settings (the student's own, or the recipe's)."""
    mid = budget - SINK - (RECENT - chunk)
    rope = budget + chunk  # positions 0..span-1, as the recipe (rope_length = budget + chunk)
    deep_sink = budget // 2
    compressed = budget - deep_sink - (RECENT - chunk)
    recent = budget - SINK + chunk
    policies = {
        "slow_fast": SlowFast(
            sink=SINK,
            slow=mid,
            fast=RECENT,
            threshold=trained.threshold,
            admission="surprisal",
            interval=trained.interval,
            compare_to=trained.compare_to,
            summary=trained.summary,
            summary_layer=trained.summary_layer,
            rope_length=rope,
        ),
        "sliding_window": SlidingWindow(sink=SINK, window=budget - SINK + chunk, rope_length=rope),
        "keyframe": Keyframe(sink=SINK, keyframes=mid, window=RECENT, rope_length=rope),
        "deep_forcing": DeepForcing(sink=deep_sink, compressed=compressed, recent=RECENT, rope_length=rope),
        # top-C tokens: the compressed frames' tokens over twice the frames, so positions reach past rope
        "deep_forcing_tokens": DeepForcing(
            sink=deep_sink, compressed=2 * compressed, recent=RECENT, token_share=0.5,
            rope_length=rope + compressed,
        ),
        "fade_mem": FadeMem(sink=SINK, entries=mid, recent=RECENT, rope_length=rope),
        "pack_forcing": PackForcing(
            sink=SINK, selected=mid, recent=RECENT, mid=4 * mid, pack=2, rope_length=rope
        ),
        "pack_forcing_pooled": PackForcing(
            sink=SINK, selected=mid, recent=RECENT, mid=4 * mid, pack=2, pool=2, rope_length=rope
        ),
        "infinity_rope": InfinityRoPE(sink=SINK, recent=recent, rope_length=rope),
        # the sink rolls through the frames generated inside the trained range, by a sink every 4 chunks
        "rolling_sink": RollingSink(sink=SINK, recent=recent, pool=rope, roll_every=4, rope_length=rope),
        "longlive_rag": LongLiveRAG(
            sink=SINK, retrieved=mid, recent=RECENT, archive=8 * mid, rope_length=rope
        ),
        "oracle": Oracle(sink=SINK, slots=mid, recent=RECENT, rope_length=rope),
    }
    grid = (4, 4)  # any grid the pooling divides: budgets are checked in frames' worth of tokens
    for name, policy in policies.items():
        attended = policy.budget(chunk) if name in EQUAL_ENTRIES else policy.token_budget(chunk, grid) / 16
        if attended != budget:
            raise ValueError(f"{name} attends {attended} frames' worth, not the budget {budget}")
    return policies


def recipe_slow_fast() -> SlowFast:
    """The Slow-Fast settings of ``recipes/slowfast.yaml``, for students trained with another policy."""
    recipe = load_recipe(RECIPE)
    return SlowFast(**recipe["model"]["init_args"]["memory"]["init_args"])


class Clock:
    """Wall time spent inside chosen methods of chosen objects (instance attributes shadow the methods)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, owner: object, name: str) -> None:
        method: Callable = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        setattr(owner, name, timed)


@torch.no_grad()
def evaluate(
    module: ContextForcingModule, policy: MemoryPolicy, loader, edges: list[int]
) -> dict[str, object]:
    """Revisit metrics of ``policy`` applied to the student at inference, and its per-chunk costs."""
    midpoint = RevisitError(max_gap=edges[-1], bucket_edges=edges)
    strict = RevisitError(max_gap=edges[-1], bucket_edges=edges, criterion=0.9)
    chunk = module.hparams.chunk_frames
    model: WanModel = module.ema
    bookkeeping, total, chunks = Clock(), 0.0, 0
    held = [0, 0]  # revisits whose view the memory held, revisits it could have held
    clock_model = Clock()
    for name in ("_frame_attention", "frame_summaries"):
        clock_model.wrap(model, name)
    for index, batch in enumerate(loader):
        cond = batch_condition(batch)
        latents = batch["latents"]
        frames = latents.shape[2] - latents.shape[2] % chunk
        cond = Condition(cond.context, cond.context_mask, cond.frames(slice(0, frames)))
        gens = [torch.Generator().manual_seed(1000 * index + b) for b in range(latents.shape[0])]
        noise = randn((latents.shape[0], latents.shape[1], frames, *latents.shape[3:]), gens)
        memory = model.new_memory(policy, latents.shape[0], chunk, tuple(latents.shape[-2:]))
        assert memory.grid is not None  # new_memory always knows the grid
        budget = policy.token_budget(chunk, memory.grid)
        tokens = None if budget is None else budget / memory.tokens_per_frame
        if isinstance(policy, Oracle):
            for state, future in zip(memory.states, batch["first_visit"][:, :frames]):
                Oracle.inform(state, future)
        for name in ("read", "commit", "gather"):
            bookkeeping.wrap(memory, name)
        start = time.perf_counter()
        with TimelineRecorder(policy) as recorder:
            result = rollout(
                model,
                policy,
                noise,
                cond.context,
                module.sigmas,
                chunk_frames=chunk,
                context_mask=cond.context_mask,
                frame_cond=cond.frame_cond,
                generator=gens,
                memory=memory,
            )
        total += time.perf_counter() - start
        for snapshots, future in zip(recorder.timelines, batch["first_visit"][:, :frames]):
            found, possible = revisit_recall(snapshots, future, chunk)
            held[0] += found
            held[1] += possible
        chunks += frames // chunk
        for metric in (midpoint, strict):
            metric.update(result.video.float(), None, batch["first_visit"][:, :frames])
    for name in ("_frame_attention", "frame_summaries"):
        delattr(model, name)
    out = midpoint.compute()
    return {
        "error": out["error"].tolist(), "control": out["control"].tolist(), "count": out["count"].tolist(),
        "effective_context": int(out["effective_context"]),
        "effective_context_0.9": int(strict.compute()["effective_context"]),
        "auc": float(out["auc"]),
        "chunk_ms": 1000 * total / chunks,
        "bookkeeping": (bookkeeping.seconds + clock_model.seconds) / total,
        "storage": policy.storage(chunk),
        "tokens": tokens,
        "memory_recall": held[0] / max(held[1], 1),
    }


def table(results: dict[int, dict[str, dict[str, object]]], edges: list[int]) -> str:
    buckets = [f"{lo + 1}-{hi}" for lo, hi in itertools.pairwise(edges)]
    lines = []
    for budget, rows in results.items():
        ceiling = rows["oracle"]["auc"] if "oracle" in rows else None
        lines += [
            f"\n### budget {budget} attended memory frames\n",
            "| policy | revisits held | effective context (midpoint) | at 0.9 | AUC | AUC / oracle "
            "| ms per chunk | bookkeeping | stored entries | attended tokens (frames) | "
            + " | ".join(f"error/ctl gap {b}" for b in buckets) + " |",
            "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(buckets),
        ]
        for name, r in sorted(rows.items(), key=lambda item: -float(item[1]["auc"])):  # type: ignore[arg-type]
            ratios = " | ".join("n/a" if c == 0 or math.isnan(c) else f"{e / c:.2f}"
                                for e, c in zip(r["error"], r["control"]))  # type: ignore[arg-type]
            share = "" if not ceiling else f"{float(r['auc']) / float(ceiling):.2f}"
            storage = "unbounded" if r["storage"] is None else r["storage"]
            tokens = "unbounded" if r["tokens"] is None else f"{float(r['tokens']):g}"  # type: ignore[arg-type]
            lines.append(
                f"| {name} | {100 * float(r['memory_recall']):.0f} % | {r['effective_context']} | "
                f"{r['effective_context_0.9']} | {r['auc']:.3f} | "
                f"{share} | {r['chunk_ms']:.1f} | {100 * float(r['bookkeeping']):.1f} % | {storage} | "
                f"{tokens} | "
                f"{ratios} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="a ContextForcingModule checkpoint (the trained student)")
    parser.add_argument("--budgets", default="8,18", help="attended memory frames, comma-separated")
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--frames", type=int, default=192)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--only", default="", help="comma-separated policy names (default: all, plus full)")
    parser.add_argument("--out", type=Path, default=None, help="folder for policies_table.md")
    add_world_arguments(parser)
    args = parser.parse_args()
    torch.manual_seed(0)
    loader = held_out(args, args.videos, args.frames, args.batch).val_dataloader()
    module = ContextForcingModule.load_from_checkpoint(
        args.checkpoint, map_location="cpu", weights_only=False
    ).eval()
    slow_fast = module.memory if isinstance(module.memory, SlowFast) else recipe_slow_fast()
    print(f"student trained with {canonical_name(module.memory)}", flush=True)
    chunk = module.hparams.chunk_frames
    only = {name for name in args.only.split(",") if name}
    results: dict[int, dict[str, dict[str, object]]] = {}
    for budget in (int(b) for b in args.budgets.split(",")):
        policies: dict[str, MemoryPolicy] = {**zoo(budget, chunk, slow_fast), "full": Full()}
        results[budget] = {}
        for name, policy in policies.items():
            if only and name not in only:
                continue
            results[budget][name] = evaluate(module, policy, loader, EDGES)
            print(budget, name, results[budget][name], flush=True)
    text = table(results, EDGES)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "policies_table.md").write_text(text)


if __name__ == "__main__":
    main()
