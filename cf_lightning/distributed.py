"""Sharded training: FSDP2 over the Wan backbones of a stage, and reading its sharded checkpoints.

Lightning runs FSDP2 as ``ModelParallelStrategy``: the strategy builds the device mesh and the module
shards itself in ``configure_model``. Each Wan block is its own FSDP unit (its weights are gathered
in its forward pre-hook and freed after its forward, again for its backward), then each backbone as a
whole holds the rest (patch, text and time embeddings, head). Every use of the weights, streaming and
the text projection included, goes through some ``forward()`` (see :mod:`cf_lightning.models.wan`),
which is what makes this correct. Lightning's FSDP1 ``FSDPStrategy`` also works on GPUs with the same
per-block wrap policy; it refuses CPU accelerators, so only the FSDP2 path is tested on CPU.

A sharded run saves each checkpoint as a ``torch.distributed.checkpoint`` directory: one shard file
per rank plus Lightning's ``meta.pt`` (loops, callbacks, hyper-parameters). :func:`read_sharded_checkpoint`
reads it into one state dict, for export and for loading a stage's weights into the next.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.distributed.device_mesh import DeviceMesh

from cf_lightning.models import WanModel

#: The file Lightning writes next to the shards, with everything that is not a weight or optimizer state.
LIGHTNING_METADATA = "meta.pt"


def shard_backbones(mesh: DeviceMesh, backbones: list[WanModel]) -> None:
    """FSDP2 in place over ``mesh``'s data-parallel dimension: one unit per Wan block, then each backbone
    as the unit of its remaining weights. Backbones already sharded are left alone, so a module's
    ``configure_model`` may run more than once (fit, then validate).

    Activation checkpointing stays the backbone's own (``gradient_checkpointing``): it checkpoints the
    call of each block, so the block's unshard hooks run again when its forward is recomputed.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    data_parallel = mesh["data_parallel"] if mesh.mesh_dim_names and "data_parallel" in mesh.mesh_dim_names else mesh
    for model in backbones:
        if isinstance(model, FSDPModule):
            continue
        for block in model.blocks:
            fully_shard(block, mesh=data_parallel)
        # Explicit: FSDP2 keeps a root's weights gathered after forward, waiting for a backward that a
        # frozen teacher (and the no-grad rollout forwards) never run.
        fully_shard(model, mesh=data_parallel, reshard_after_forward=True)


def is_sharded_checkpoint(path: str | Path) -> bool:
    """A directory written by ``torch.distributed.checkpoint`` (it holds a ``.metadata`` file)."""
    return Path(path).is_dir() and (Path(path) / ".metadata").is_file()


def read_sharded_checkpoint(path: str | Path, load: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """A sharded Lightning checkpoint directory as one dict on CPU: the shards gathered whole, then
    Lightning's ``meta.pt`` merged in. ``load`` reads one ``torch.save`` file (the caller decides how
    far to trust pickled objects in it).

    It gathers one full copy of every weight and optimizer state into host memory: fine for export
    and for a stage's initial weights, done once per run.
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        whole = Path(tmp) / "whole.pt"
        dcp_to_torch_save(path, whole)
        checkpoint = load(whole)
    extra = path / LIGHTNING_METADATA
    if extra.is_file():
        checkpoint.update(load(extra))
    return checkpoint
