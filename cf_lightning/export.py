"""Export a stage's backbone (EMA weights, LoRA merged) from a Lightning checkpoint to Wan safetensors."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch

from cf_lightning.distributed import is_sharded_checkpoint, read_sharded_checkpoint
from cf_lightning.lora import merge_lora
from cf_lightning.models import WanModel
from cf_lightning.models.checkpoint import save_wan

#: Where each module keeps its backbones, best first.
BACKBONE_ATTRIBUTES = ("ema", "model", "student")


def export_backbone(checkpoint: str | Path, output: str | Path, attribute: str | None = None,
                    module_class: type[L.LightningModule] = L.LightningModule) -> Path:
    """Write the backbone of a ``cf-fit`` checkpoint (one file, or a sharded run's directory) as one
    Wan-layout safetensors file.

    The module class comes from the checkpoint itself, so teacher, student and distillation runs
    export alike; ``attribute`` picks a specific backbone (default: the EMA weights). A module built
    in Python rather than by ``cf-fit`` records no class: name it with ``module_class``.
    """
    import cf_lightning.modules  # noqa: F401  (the recorded class must be importable)

    if is_sharded_checkpoint(checkpoint):  # a sharded (FSDP2) run's directory: gathered into one file first
        with tempfile.TemporaryDirectory() as tmp:
            whole = Path(tmp) / "whole.ckpt"
            torch.save(read_sharded_checkpoint(checkpoint, _load_trusted), whole)
            return export_backbone(whole, output, attribute, module_class)
    module = module_class.load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=False)
    names = [attribute] if attribute else list(BACKBONE_ATTRIBUTES)
    for name in names:
        backbone = getattr(module, name, None)
        if isinstance(backbone, WanModel):
            return save_wan(merge_lora(backbone), output)
    raise ValueError(f"{type(module).__name__} in {checkpoint} has no backbone among {names}")


def _load_trusted(path: Path) -> dict[str, Any]:
    """Export rebuilds the module from its pickled hyper-parameters, as ``load_from_checkpoint`` does."""
    return torch.load(path, map_location="cpu", weights_only=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=export_backbone.__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("output")
    parser.add_argument("--attribute", default=None, help=f"one of {', '.join(BACKBONE_ATTRIBUTES)}")
    args = parser.parse_args(argv)
    print(export_backbone(args.checkpoint, args.output, args.attribute))


if __name__ == "__main__":
    main()
