"""Rebuild the checkpoints that recipes/slowfast.yaml ships with (about 35 min on 2 idle CPU cores).

1. the context teacher (recipes/context_teacher.yaml) -> recipes/assets/context_teacher.safetensors
2. the stage-1 student (recipes/student_init.yaml)    -> recipes/assets/student_init.safetensors
3. its recall part (recipes/student_recall.yaml, continues 2) -> recipes/assets/student_recall.safetensors

and the inits each stage-2 pipeline of the claim table starts from when it is taught by its own teacher
(recipes/student_context_ode.yaml, continuing 2 on that teacher's chunk-by-chunk trajectories, which
``cf-data trajectories`` writes first under runs/trajectories/; about 12 min each):

4. the context teacher through the Slow-Fast memory -> recipes/assets/student_ode_context.safetensors
5. the context teacher through a sliding window     -> recipes/assets/student_ode_window.safetensors
6. the short teacher (its last 8 frames)           -> recipes/assets/student_ode_short.safetensors

Each stage writes its run under runs/ and exports its EMA backbone. Usage:
    python scripts/rebuild_assets.py [--runs runs] [--only STAGE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cf_lightning.cli.data import main as cf_data
from cf_lightning.cli.export import export_backbone
from cf_lightning.cli.fit import main as cf_fit

ROOT = Path(__file__).resolve().parents[1]
# the stage-2 recipes' memories (recipes/slowfast.yaml, recipes/sliding_window.yaml), read on latents here
SLOW_FAST = ("{class_path: slow_fast, init_args: {sink: 2, slow: 4, fast: 4, admission: surprisal, "
             "threshold: 0.995, interval: 1, compare_to: last_admitted, rope_length: 10}}")
WINDOW = "{class_path: sliding_window, init_args: {sink: 2, window: 8, rope_length: 10}}"
TRAJECTORIES = ["--teacher", str(ROOT / "recipes" / "assets" / "context_teacher.safetensors"),
                "--num_videos", "2048", "--world.pan_positions", "1", "--world.num_objects", "0",
                "--world.num_frames", "48", "--codec", "pooled_pixel", "--text_encoder", "hash",
                "--denoising_steps", "4", "--shift", "5.0", "--ode_steps", "8",
                "--context_positions", "packed", "--shard_size", "512", "--batch_size", "32"]
# stage -> (how its teacher sees the history, cf-fit overrides of recipes/student_context_ode.yaml)
ODE_INITS = {
    "student_ode_context": (["--chunk_context", "memory", "--memory", SLOW_FAST], []),
    "student_ode_window": (["--chunk_context", "memory", "--memory", WINDOW],
                           ["--model.init_args.memory", WINDOW]),
    "student_ode_short": (["--chunk_context", "last_n", "--context_frames", "8"], []),
}
STAGES = ("context_teacher", "student_init", "student_recall", *ODE_INITS)


def rebuild(stage: str, runs: Path) -> Path:
    overrides = []
    recipe = ROOT / "recipes" / f"{stage}.yaml"
    if stage in ODE_INITS:
        context, overrides = ODE_INITS[stage]
        shards = runs / "trajectories" / stage
        if cf_data(["trajectories", *TRAJECTORIES, *context, "--output", str(shards)]):
            raise SystemExit(f"{stage}: cf-data trajectories failed")
        recipe = ROOT / "recipes" / "student_context_ode.yaml"
        overrides = ["--data.init_args.train_urls", str(shards), *overrides]
    version = f"rebuild_{stage}"
    cf_fit(["fit", "--config", str(recipe), "--trainer.logger.init_args.save_dir", str(runs),
            "--trainer.logger.init_args.name", stage, "--trainer.logger.init_args.version", version,
            "--trainer.enable_progress_bar", "false", *overrides])
    checkpoint = runs / stage / version / "checkpoints" / "last.ckpt"
    return export_backbone(checkpoint, ROOT / "recipes" / "assets" / f"{stage}.safetensors")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument("--only", choices=STAGES, default=None)
    args = parser.parse_args()
    for stage in [args.only] if args.only else STAGES:
        print(f"{stage}: {rebuild(stage, args.runs)}")


if __name__ == "__main__":
    main()
