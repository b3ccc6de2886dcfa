"""Rebuild the checkpoints that recipes/slowfast.yaml ships with (about 35 min on 2 idle CPU cores).

1. the context teacher (recipes/context_teacher.yaml) -> recipes/assets/context_teacher.safetensors
2. the stage-1 student (recipes/student_init.yaml)    -> recipes/assets/student_init.safetensors
3. its recall part (recipes/student_recall.yaml, continues 2) -> recipes/assets/student_recall.safetensors

Each stage writes its run under runs/ and exports its EMA backbone. Usage:
    python scripts/rebuild_assets.py [--runs runs] [--only context_teacher|student_init|student_recall]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cf_lightning.cli.export import export_backbone
from cf_lightning.cli.fit import main as cf_fit

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("context_teacher", "student_init", "student_recall")


def rebuild(stage: str, runs: Path) -> Path:
    recipe = ROOT / "recipes" / f"{stage}.yaml"
    version = f"rebuild_{stage}"
    cf_fit(["fit", "--config", str(recipe), "--trainer.logger.init_args.save_dir", str(runs),
            "--trainer.logger.init_args.version", version, "--trainer.enable_progress_bar", "false"])
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
