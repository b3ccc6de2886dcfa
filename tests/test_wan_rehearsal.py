"""Rehearsal of the whole Wan2.1 path on CPU: every ``recipes/wan2.1-1.3b/*.yaml`` runs as written, with
only sizes, paths and the hardware overridden (printed per recipe), on tiny stand-ins in real formats:
a handful of mp4 files -> latent shards (tiny Wan VAE, tiny UMT5) -> short and context teachers ->
stage 1 (ODE regression on ``cf-data trajectories``, then DMD) -> stage 2 for every policy -> export.

The default suite runs the whole chain (under a minute on two cores) and checks that the overrides
touch nothing but sizes, paths and hardware.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from cf_lightning.cli.data import main as cf_data
from cf_lightning.cli.export import export_backbone
from cf_lightning.cli.fit import main as cf_fit
from cf_lightning.models import WanConfig, WanModel
from cf_lightning.models.checkpoint import load_wan, save_wan
from tests.cli_helpers import RECIPES
from tests.data.test_cli import write_mp4
from tests.stand_ins import write_umt5, write_wan_vae

WAN = RECIPES / "wan2.1-1.3b"
CAPTIONS = ["a red room with a white bar", "a blue room at night"]
PROMPTS = ["a red car in the rain", "a cat on a wall", "waves at dusk"]
NEGATIVE = "blurry static"
VIDEO_FRAMES = 45  # 12 latent frames with the VAE's 4x temporal compression (first frame alone)

# Keys an override may touch: hardware, run bookkeeping, paths, and sizes (widths, lengths, counts, steps).
HARDWARE = {"trainer.accelerator", "trainer.devices", "trainer.strategy", "trainer.precision"}
BOOKKEEPING = {"trainer.max_steps", "trainer.logger.init_args.save_dir", "trainer.logger.init_args.version",
               "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.callbacks"}
PATHS = {"model.init_args.init_from", "model.init_args.teacher.init_from",
         "model.init_args.teacher.negative_prompt", "data.init_args.train_urls"}
SIZES = {
    "model.init_args.backbone",
    "model.init_args.target_frames",
    "model.init_args.min_history_frames",
    "model.init_args.clip_frames",
    "model.init_args.lora_rank",
    "model.init_args.lora_alpha",
    "model.init_args.rollout.min_chunks",
    "model.init_args.rollout.max_chunks",
    "model.init_args.rollout.target_chunks",
    "model.init_args.optimization.accumulate",
    "data.init_args.clip_frames",
    "data.init_args.batch_size",
    "data.init_args.num_workers",
    "data.init_args.samples_per_epoch",
}
ALLOWED = HARDWARE | BOOKKEEPING | PATHS | SIZES


@dataclass(frozen=True)
class Files:
    """Where the rehearsal keeps its stand-ins, data and exports."""

    root: Path

    def __getattr__(self, name: str) -> Path:
        return self.root / name


def cpu(save_dir: Path, steps: int) -> list[str]:
    return [
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.strategy",
        "auto",
        "--trainer.precision",
        "32-true",
        "--trainer.max_steps",
        str(steps),
        "--trainer.logger.init_args.save_dir",
        str(save_dir),
        "--trainer.logger.init_args.version",
        "rehearsal",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--model.init_args.backbone",
        "tiny",
        "--data.init_args.num_workers",
        "0",
        "--data.init_args.samples_per_epoch",
        "4",
    ]


def overrides(recipe: str, f: Files) -> list[str]:
    """Everything the rehearsal changes in ``recipe``: hardware, paths and sizes, nothing else."""
    runs = f.root / "runs"
    stage2 = [
        *cpu(runs, 2),
        "--model.init_args.init_from",
        str(f.student_init),
        "--model.init_args.teacher.init_from",
        str(f.context_teacher),
        "--model.init_args.teacher.negative_prompt",
        str(f.prompts / "negative_prompt.safetensors"),
        "--data.init_args.train_urls",
        str(f.prompts),
        "--data.init_args.batch_size",
        "1",
        "--model.init_args.optimization.accumulate",
        "1",
        "--model.init_args.rollout.min_chunks",
        "4",
        "--model.init_args.rollout.max_chunks",
        "5",
        "--model.init_args.rollout.target_chunks",
        "2",
    ]
    teacher = [*cpu(runs, 2), "--model.init_args.init_from", str(f.wan), "--data.init_args.train_urls",
               str(f.shards), "--model.init_args.lora_rank", "4", "--model.init_args.lora_alpha", "4"]
    return {
        "teacher.yaml": [
            *teacher,
            "--model.init_args.target_frames",
            "3",
            "--data.init_args.clip_frames",
            "3",
        ],
        # ERFT's error bank needs targets at least as long as its 2-chunk motion context
        "context_teacher.yaml": [
            *teacher,
            "--model.init_args.target_frames",
            "6",
            "--data.init_args.clip_frames",
            "12",
            "--model.init_args.min_history_frames",
            "6",
        ],
        "student_ode.yaml": [
            *cpu(runs, 2),
            "--model.init_args.init_from",
            str(f.wan),
            "--data.init_args.train_urls",
            str(f.ode),
            "--model.init_args.clip_frames",
            "3",
            "--data.init_args.clip_frames",
            "3",
        ],
        "student_dmd.yaml": [
            *cpu(runs, 2),
            "--model.init_args.init_from",
            str(f.student_ode),
            "--model.init_args.teacher.init_from",
            str(f.teacher),
            "--model.init_args.teacher.negative_prompt",
            str(f.prompts / "negative_prompt.safetensors"),
            "--data.init_args.train_urls",
            str(f.prompts),
            "--data.init_args.batch_size",
            "1",
            "--model.init_args.optimization.accumulate",
            "1",
        ],
        "slowfast.yaml": stage2,
        "sliding_window.yaml": stage2,
        "keyframe.yaml": stage2,
    }[recipe]


RECIPE_NAMES = sorted(p.name for p in WAN.glob("*.yaml"))


def test_every_wan_recipe_is_rehearsed():
    assert RECIPE_NAMES, "no Wan recipes found"
    for name in RECIPE_NAMES:
        overrides(name, Files(Path("/rehearsal")))  # a recipe without overrides here fails with a KeyError


def _flat(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        out: dict[str, object] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): tree}


def _printed(args: list[str], capsys) -> dict[str, object]:
    with pytest.raises(SystemExit) as done:
        cf_fit([*args, "--print_config"])
    assert done.value.code == 0
    return _flat(yaml.safe_load(capsys.readouterr().out))


def _changed_keys(before: dict[str, object], after: dict[str, object]) -> set[str]:
    changed = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
    # a replaced class (the strategy) or list (callbacks) shows up under its parent key
    return {next((a for a in sorted(ALLOWED) if key == a or key.startswith(a + ".")), key) for key in changed}


def test_rehearsal_overrides_touch_only_sizes_paths_and_hardware(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cf-fit"])
    for name in RECIPE_NAMES:
        recipe = ["fit", "--config", str(WAN / name)]
        extra = overrides(name, Files(Path("/rehearsal")))
        changed = _changed_keys(_printed(recipe, capsys), _printed([*recipe, *extra], capsys))
        assert changed <= ALLOWED, f"{name}: the rehearsal changes {sorted(changed - ALLOWED)}"


def _tiny_wan(folder: Path, latent_channels: int, text_dim: int) -> Path:
    """Random tiny backbone weights standing in for the Wan2.1 checkpoint directory."""
    torch.manual_seed(0)
    config = WanConfig.from_name("tiny", in_dim=latent_channels, out_dim=latent_channels, text_dim=text_dim)
    return save_wan(WanModel(config), folder)


def _fit(recipe: str, f: Files) -> Path:
    """Run ``recipe`` with its rehearsal overrides (printed) and return its last checkpoint."""
    extra = overrides(recipe, f)
    print(f"\n{recipe} overrides: {' '.join(extra)}")
    cf_fit(["fit", "--config", str(WAN / recipe), *extra])
    name = yaml.safe_load((WAN / recipe).read_text())["trainer"]["logger"]["init_args"]["name"]
    checkpoint = f.root / "runs" / name / "rehearsal" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file(), f"{recipe} wrote no checkpoint"
    return checkpoint


def _data(*args: str) -> None:
    assert cf_data(list(args)) == 0


def test_wan_recipes_run_end_to_end_on_tiny_stand_ins(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cf-fit"])
    f = Files(tmp_path)
    stand_ins = write_umt5(
        write_wan_vae(tmp_path / "wan_pipeline"), " ".join(CAPTIONS + PROMPTS + [NEGATIVE]).split()
    )
    encoders = [
        "--codec",
        "wan",
        "--codec_options",
        json.dumps({"path": str(stand_ins)}),
        "--text_encoder",
        "umt5",
        "--text_encoder_options",
        json.dumps({"path": str(stand_ins), "max_length": 16}),
    ]
    f.videos.mkdir()
    for index, caption in enumerate(CAPTIONS):
        write_mp4(f.videos / f"clip{index}.mp4", VIDEO_FRAMES, 16, 16)
        (f.videos / f"clip{index}.txt").write_text(caption, encoding="utf-8")
    _data("videos", "--input", str(f.videos), "--output", str(f.shards), *encoders)
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS), encoding="utf-8")
    prompt_args = ["--input", str(tmp_path / "prompts.txt"), "--height", "16", "--width", "16", *encoders]
    _data("prompts", *prompt_args, "--output", str(f.prompts), "--negative_prompt", NEGATIVE)
    _data("prompts", *prompt_args, "--output", str(f.prompts_ode), "--latent_frames", "3")
    _tiny_wan(f.wan, latent_channels=4, text_dim=16)

    export_backbone(_fit("teacher.yaml", f), f.teacher)
    export_backbone(_fit("context_teacher.yaml", f), f.context_teacher)
    _data("trajectories", "--teacher", str(f.teacher), "--input", str(f.prompts_ode), "--output", str(f.ode),
          "--denoising_steps", "4", "--shift", "5.0", "--ode_steps", "4", "--negative_prompt",
          str(f.prompts / "negative_prompt.safetensors"))
    export_backbone(_fit("student_ode.yaml", f), f.student_ode)
    export_backbone(_fit("student_dmd.yaml", f), f.student_init)
    for recipe in ("slowfast.yaml", "sliding_window.yaml", "keyframe.yaml"):
        exported = export_backbone(_fit(recipe, f), f.root / f"stage2_{recipe}.safetensors")
        model = load_wan(exported)
        assert model.config.in_dim == 4 and all(torch.isfinite(p).all() for p in model.parameters())
