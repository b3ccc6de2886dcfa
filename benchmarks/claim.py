"""The Context Forcing claim over training seeds and worlds: one table per world, seeds pooled.

For every world (the recipe world and variants no recipe trains on) and every student variant, each
training seed's checkpoint streams the same held-out videos with its own memory policy; the revisit
error per gap bucket is set against that checkpoint's memoryless control (see benchmarks/revisit.py).
Reported per bucket: the error / control ratio (mean over seeds, and the worst seed), the number of
revisit segments (returns to an earlier view) and of revisit frames; per variant the effective
context (midpoint criterion) of every seed and the AUC. The last column of each table is each
variant's effective context relative to the Slow-Fast student's of the same runs, seed by seed.

    python benchmarks/claim.py --runs runs/claim --seeds 0 1 2 --videos 256 --out docs/results/claim
    python benchmarks/claim.py --runs "recall init=runs/claim" "plain init=runs/claim_plain" ...

Checkpoints are read from ``<runs>/seed<S>/results/<variant>/checkpoints/last.ckpt``, the layout
``scripts/reproduce_results.py --runs <runs>/seed<S> --seed <S>`` writes. Several ``LABEL=PATH`` roots
(recipes that differ in one setting) put their students in one table, each row named with its label.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch
from recipe_world import RECIPE, held_out
from revisit import evaluate

from cf_lightning.metrics import return_frames
from cf_lightning.recipe import load_recipe
from cf_lightning.stages import ContextForcingModule

VARIANTS = ("slow_fast", "sliding_window", "short_teacher")


@dataclass(frozen=True)
class World:
    """A held-out world: overrides of the recipe world, video length and gap buckets."""

    overrides: dict[str, object]
    frames: int
    edges: list[int]
    about: str


WORLDS = {
    "recipe": World({}, 96, [0, 8, 16, 32, 64, 96], "the recipe world (96 frames)"),
    "long": World({"num_frames": 192, "gap_min": 48, "gap_max": 160, "num_places": 14, "segment_min": 4,
                   "segment_max": 12, "palette_size": 6}, 192, [0, 8, 16, 32, 64, 128, 192],
                  "192 frames, 14 places, segments of 4-12 frames, gaps 48-160, 6 colours"),
    "sparse": World({"num_frames": 192, "gap_min": 64, "gap_max": 180, "num_places": 6, "segment_min": 10,
                     "segment_max": 24, "palette_size": 10}, 192, [0, 8, 16, 32, 64, 128, 192],
                    "192 frames, 6 places, segments of 10-24 frames, gaps 64-180, 10 colours"),
    "returns": World({"num_frames": 192, "gap_min": 12, "gap_max": 48, "num_places": 5, "segment_min": 8,
                      "segment_max": 14, "palette_size": 4, "revisit_prob": 0.9}, 192,
                     [0, 8, 16, 32, 64, 128, 192],
                     "192 frames, 5 places, segments of 8-14 frames, returns 12-48 frames after leaving a "
                     "place (probability 0.9), 4 colours"),
    "pan": World({"pan_positions": 3, "pan_step": 8, "canvas_height": 192, "canvas_width": 192}, 96,
                 [0, 8, 16, 32, 64, 96],
                 "recipes/pan/world.yaml: the camera pans 3 positions (one latent cell each) and back within "
                 "each segment; the students never trained on it"),
}


@dataclass(frozen=True)
class Runs:
    """One root of training runs; ``label`` tells its rows apart when a table holds several roots."""

    label: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> Runs:
        label, sep, path = text.rpartition("=")
        return cls(label if sep else "", Path(path))

    def checkpoint(self, seed: int, variant: str) -> Path:
        return self.path / f"seed{seed}" / "results" / variant / "checkpoints" / "last.ckpt"

    def row(self, variant: str) -> str:
        return f"{variant} ({self.label})" if self.label else variant

    def cache_key(self, world: str, variant: str, seed: int, videos: int) -> str:
        prefix = f"{world}_{self.label.replace(' ', '_')}" if self.label else world
        return f"{prefix}_{variant}_seed{seed}_{videos}.json"


def world_arguments(world: World) -> argparse.Namespace:
    data = load_recipe(RECIPE)["data"]["init_args"]
    config = {**data.get("world", {}), **world.overrides}
    return argparse.Namespace(world=json.dumps(config), codec=data["codec"])


def segment_counts(loader, frames: int, edges: list[int]) -> list[int]:
    """Returns to an earlier view (a frame whose view differs from the frame before) per gap bucket."""
    counts = [0] * (len(edges) - 1)
    for batch in loader:
        first_visit = batch["first_visit"][:, :frames]
        gaps = (torch.arange(first_visit.shape[1]) - first_visit)[return_frames(first_visit)]
        for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
            counts[i] += int(((gaps > lo) & (gaps <= hi)).sum())
    return counts


def world_table(name: str, world: World, results: dict[str, list[dict]], reference: dict[str, str],
                segments: list[int], videos: int) -> str:
    """``reference`` names, for each row, the Slow-Fast row its effective context is set against."""
    buckets = [f"{lo + 1}-{hi}" for lo, hi in zip(world.edges[:-1], world.edges[1:])]
    frames = results[next(iter(results))][0]["count"]
    lines = [f"**{name}**: {world.about}; {videos} held-out videos per seed.", "",
             "| student | seeds | effective context per seed | AUC (mean) | "
             + " | ".join(f"error/ctl {b}" for b in buckets) + " | effective context / slow_fast |",
             "|---|---|---|---|" + "---|" * (len(buckets) + 1)]
    for variant, runs in results.items():
        slow_fast = [r["effective_context"] for r in results.get(reference[variant], [])]
        ratios = [[e / c for e, c in zip(r["error"], r["control"])] for r in runs]
        cells = [f"{statistics.mean(col):.2f} (max {max(col):.2f})" for col in zip(*ratios)]
        contexts = [r["effective_context"] for r in runs]
        relative = ", ".join(f"{c / ref:.2f}" if ref else "-" for c, ref in zip(contexts, slow_fast))
        lines.append(f"| {variant} | {len(runs)} | {', '.join(map(str, contexts))} | "
                     f"{statistics.mean(r['auc'] for r in runs):.3f} | {' | '.join(cells)} | {relative} |")
    lines.append("| revisit segments (frames) | | | | "
                 + " | ".join(f"{s} ({int(f)})" for s, f in zip(segments, frames)) + " | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Runs.parse, nargs="+", required=True,
                        help="[LABEL=]PATH: roots of training runs; labelled rows when there are several")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--worlds", nargs="+", choices=list(WORLDS), default=list(WORLDS))
    parser.add_argument("--videos", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder keeping each checkpoint's scores (world, variant, seed), reused when "
                             "present, so seeds can be scored as they finish training")
    args = parser.parse_args()
    missing = [str(p) for p in (runs.checkpoint(s, v) for runs in args.runs for s in args.seeds
                                for v in args.variants) if not p.exists()]
    if missing:
        raise SystemExit("missing checkpoints (train them with scripts/reproduce_results.py):\n  "
                         + "\n  ".join(missing))
    tables, raw = [], {}
    for name in args.worlds:
        world = WORLDS[name]
        torch.manual_seed(0)
        data = held_out(world_arguments(world), args.videos, world.frames, args.batch)
        segments = segment_counts(data.val_dataloader(), world.frames, world.edges)
        results: dict[str, list[dict]] = {}
        reference = {runs.row(v): runs.row("slow_fast") for runs in args.runs for v in args.variants}
        for runs, variant, seed in ((r, v, s) for r in args.runs for v in args.variants for s in args.seeds):
            path = runs.checkpoint(seed, variant)
            cached = args.cache / runs.cache_key(name, variant, seed, args.videos) if args.cache else None
            if cached is not None and cached.exists():
                result = json.loads(cached.read_text())
            else:
                module = ContextForcingModule.load_from_checkpoint(path, map_location="cpu",
                                                                   weights_only=False)
                result = evaluate(module.eval(), data, world.edges)
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    cached.write_text(json.dumps(result))
            results.setdefault(runs.row(variant), []).append(result)
            print(name, runs.row(variant), seed, json.dumps(result), flush=True)
        raw[name] = {"segments": segments, "results": results}
        tables.append(world_table(name, world, results, reference, segments, args.videos))
        print(tables[-1], flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "claim_table.md").write_text("\n".join(tables))
        (args.out / "claim.json").write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
