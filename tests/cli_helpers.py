"""Overrides that shrink the CPU recipes to seconds, shared by the CLI tests."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parents[1]
RECIPES = ROOT / "recipes"

TINY_DATA = ["--data.num_videos", "8", "--data.batch_size", "2", "--data.num_val_videos", "2",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]

TINY_DISTILL = [
    *TINY_DATA,
    "--model.backbone",
    "tiny",
    "--model.init_from",
    "null",
    "--model.teacher",
    "{init_from: null}",  # a dotted `--model.teacher.init_from null` reaches the module as 'None
    "--data.clip_frames",
    "16",
    "--data.val_num_frames",
    "24",
    "--model.rollout.min_chunks",
    "4",
    "--model.rollout.max_chunks",
    "6",
    "--model.eval_bucket_edges",
    "[0,4,8,16]",
    "--trainer.log_every_n_steps",
    "1",
]


def logged(save_dir: Path, name: str) -> list[str]:
    return ["--trainer.logger.init_args.save_dir", str(save_dir), "--trainer.logger.init_args.name", name]
