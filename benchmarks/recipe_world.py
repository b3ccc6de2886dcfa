"""The revisit world the CPU recipes train on, read from the recipe so benchmarks never drift from it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from cf_lightning.data import RevisitWorldConfig

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "slowfast.yaml"


def recipe_world(recipe: Path = RECIPE) -> str:
    """The recipe's ``data.init_args.world`` overrides as JSON (the default of ``--world``)."""
    config = yaml.safe_load(recipe.read_text())
    return json.dumps(config["data"]["init_args"].get("world", {}))


def world_config(overrides: str) -> RevisitWorldConfig:
    """A world config from JSON overrides, as benchmarks take them on the command line."""
    return RevisitWorldConfig(**json.loads(overrides))
