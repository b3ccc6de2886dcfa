"""Export a stage's backbone (EMA weights, LoRA merged) from a Lightning checkpoint to Wan safetensors."""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L

from cf_lightning.lora import merge_lora
from cf_lightning.models import WanModel
from cf_lightning.models.checkpoint import save_wan

#: Where each module keeps its backbones, best first.
BACKBONE_ATTRIBUTES = ("ema", "model", "student")


def export_backbone(checkpoint: str | Path, output: str | Path, attribute: str | None = None) -> Path:
    """Write the backbone of a ``cf-fit`` checkpoint as one Wan-layout safetensors file.

    The module class comes from the checkpoint itself, so teacher, student and distillation runs
    export alike; ``attribute`` picks a specific backbone (default: the EMA weights).
    """
    import cf_lightning.modules  # noqa: F401  (the recorded class must be importable)

    module = L.LightningModule.load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=False)
    names = [attribute] if attribute else list(BACKBONE_ATTRIBUTES)
    for name in names:
        backbone = getattr(module, name, None)
        if isinstance(backbone, WanModel):
            return save_wan(merge_lora(backbone), output)
    raise ValueError(f"{type(module).__name__} in {checkpoint} has no backbone among {names}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=export_backbone.__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("output")
    parser.add_argument("--attribute", default=None, help=f"one of {', '.join(BACKBONE_ATTRIBUTES)}")
    args = parser.parse_args(argv)
    print(export_backbone(args.checkpoint, args.output, args.attribute))


if __name__ == "__main__":
    main()
