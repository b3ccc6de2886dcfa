"""Held-out revisit-world videos as the CPU recipes see them, read from the recipe so benchmarks never
drift from what the models were trained on."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cf_lightning.codecs import build_codec
from cf_lightning.data import RevisitWorldConfig
from cf_lightning.data.datamodules import RevisitWorldDataModule
from cf_lightning.recipe import load_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "slowfast.yaml"


def _recipe_data(recipe: Path = RECIPE) -> dict[str, Any]:
    return load_recipe(recipe)["data"]["init_args"]


def add_world_arguments(parser: argparse.ArgumentParser) -> None:
    """``--world`` (JSON RevisitWorldConfig overrides) and ``--codec``, defaulting to the recipe's."""
    data = _recipe_data()
    parser.add_argument("--world", default=json.dumps(data.get("world", {})),
                        help="JSON RevisitWorldConfig overrides (default: the recipes')")
    parser.add_argument("--codec", default=data["codec"], help="latent codec (default: the recipes')")


def held_out(
    args: argparse.Namespace, videos: int, frames: int = 96, batch_size: int = 1
) -> RevisitWorldDataModule:
    """A data module whose validation loader yields ``videos`` held-out videos of ``frames`` frames."""
    return RevisitWorldDataModule(world=RevisitWorldConfig(**json.loads(args.world)),
                                  codec=build_codec(args.codec),
                                  num_videos=batch_size, batch_size=batch_size, num_val_videos=videos,
                                  val_num_frames=frames)
