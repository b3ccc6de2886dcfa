"""Export a stage's backbone (EMA weights, LoRA merged) from a Lightning checkpoint to Wan safetensors."""

from __future__ import annotations

import argparse
from pathlib import Path

from cf_lightning.inference.loading import EMA_FIRST as BACKBONE_ATTRIBUTES
from cf_lightning.models.checkpoint import save_wan


def export_backbone(checkpoint: str | Path, output: str | Path, attribute: str | None = None) -> Path:
    """Write the backbone of a ``cf-fit`` checkpoint (one file, or a sharded run's directory) as one
    Wan-layout safetensors file.

    Only the backbone is rebuilt, from the run's saved hyper-parameters (no teacher, critic or init
    file is read, so a checkpoint copied anywhere exports), and teacher, student and distillation runs
    export alike; ``attribute`` picks a specific backbone (default: the EMA weights).
    """
    from cf_lightning.stages.common import backbone_from_run, read_lightning_checkpoint

    if attribute is not None and attribute not in BACKBONE_ATTRIBUTES:
        raise ValueError(
            f"unknown backbone attribute {attribute!r}; allowed: {', '.join(BACKBONE_ATTRIBUTES)}"
        )
    if not Path(checkpoint).exists():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}")
    names = (attribute,) if attribute else BACKBONE_ATTRIBUTES
    return save_wan(backbone_from_run(read_lightning_checkpoint(checkpoint), str(checkpoint), names), output)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=export_backbone.__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("output")
    parser.add_argument("--attribute", default=None, help=f"one of {', '.join(BACKBONE_ATTRIBUTES)}")
    args = parser.parse_args(argv)
    print(export_backbone(args.checkpoint, args.output, args.attribute))


if __name__ == "__main__":
    main()
