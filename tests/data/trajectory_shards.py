"""A tiny random teacher saved as Wan safetensors, and ``cf-data trajectories`` shards made from it."""

from __future__ import annotations

from pathlib import Path

import torch

from cf_lightning.cli.data import main
from cf_lightning.data import RevisitWorldConfig
from cf_lightning.models import WanConfig, WanModel
from cf_lightning.models.checkpoint import save_wan

CHANNELS, TEXT_DIM, CAMERA = 3, 16, 2  # pooled_pixel latents, hash text, revisit-world camera
WORLD = RevisitWorldConfig(frame_height=16, frame_width=16, canvas_height=64, canvas_width=64, num_frames=8,
                           num_places=4, segment_min=4, segment_max=8)
WORLD_ARGS = [arg for name, value in (("frame_height", 16), ("frame_width", 16), ("canvas_height", 64),
                                      ("canvas_width", 64), ("num_frames", 8), ("num_places", 4),
                                      ("segment_min", 4), ("segment_max", 8))
              for arg in (f"--world.{name}", str(value))]
CODEC_ARGS = ["--codec", "pooled_pixel", "--codec_options", '{"patch": 4}']
TEXT_ARGS = ["--text_encoder", "hash", "--text_encoder_options", f'{{"dim": {TEXT_DIM}}}']


def save_tiny_teacher(path: Path, seed: int = 0, text_dim: int = TEXT_DIM) -> WanModel:
    """A random tiny backbone with the revisit world's input sizes, written like the shipped teacher."""
    torch.manual_seed(seed)
    teacher = WanModel(WanConfig.from_name("tiny", in_dim=CHANNELS, out_dim=CHANNELS, text_dim=text_dim,
                                           frame_cond_dim=CAMERA)).eval()
    save_wan(teacher, path)
    return teacher


def write_trajectory_shards(output: Path, teacher: Path, *extra: str, num_videos: int = 4) -> int:
    """``cf-data trajectories`` over ``num_videos`` tiny world videos (6 ODE steps); returns the exit code."""
    return main(
        [
            "trajectories",
            "--teacher",
            str(teacher),
            "--output",
            str(output),
            "--num_videos",
            str(num_videos),
            "--ode_steps",
            "6",
            *WORLD_ARGS,
            *CODEC_ARGS,
            *TEXT_ARGS,
            *extra,
        ]
    )


def fit_on_shards(recipe: str, shards: Path, root: Path, *extra: str) -> dict:
    """Two steps of a stage-1 ``recipe`` on tiny trajectory ``shards`` (8-frame clips, tiny backbone);
    returns the saved checkpoint."""
    from cf_lightning.cli.fit import main as cf_fit
    from tests.cli_helpers import RECIPES, logged

    cf_fit(["fit", "--config", str(RECIPES / recipe), *logged(root, "s"),
            "--data.train_urls", str(shards), "--data.batch_size", "2", "--data.clip_frames", "8",
            "--model.clip_frames", "8", "--model.backbone", "tiny", "--trainer.max_steps", "2",
            "--trainer.callbacks.init_args.every_n_batches", "2", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.init_args.version", "a", *extra])
    return torch.load(root / "s" / "a" / "checkpoints" / "last.ckpt", weights_only=False)
