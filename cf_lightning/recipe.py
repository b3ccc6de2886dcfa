"""Recipes as ``cf-fit`` reads them: OmegaConf files whose numbers are written once and interpolated.

Tools that read a recipe without turning it into a run (benchmarks, the memory planner) resolve it
here, so they see the same values a run would.
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import OmegaConf

#: Arithmetic for recipe interpolations, so a budget is written once: ``rope_length: ${cf.sum:2,4,4}``
#: or ``clip_frames: ${cf.mul:${model.init_args.rollout.max_chunks},${model.init_args.chunk_frames}}``.
RESOLVERS = {"cf.sum": lambda *values: sum(values), "cf.mul": lambda *values: math.prod(values)}


def register_resolvers() -> None:
    """Make the ``cf.*`` interpolation resolvers known to OmegaConf (idempotent)."""
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_resolver(name, resolver)


def load_recipe(path: str | Path) -> dict:
    """A recipe file as ``cf-fit`` reads it (OmegaConf, ``cf.*`` resolvers, interpolations resolved), for
    tools that read recipes without parsing them into a run (e.g. ``benchmarks/memory_plan.py``)."""
    register_resolvers()
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # type: ignore[return-value]
