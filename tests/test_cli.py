"""End-to-end `cf-fit` runs on tiny configs: recipes parse, stages train, runs resume."""

from __future__ import annotations

import inspect
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.strategies import DeepSpeedStrategy, ModelParallelStrategy
from omegaconf.errors import InterpolationKeyError
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cf_lightning.cli.fit import main
from cf_lightning.codecs import build_codec
from cf_lightning.stages import ContextForcingModule, TeacherConfig
from tests.cli_helpers import RECIPES, TINY_DATA, TINY_DISTILL, logged


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cf-fit"])


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(RECIPES)) for p in RECIPES.rglob("*.yaml")
                                           if p.parent.name not in ("ablations", "strategies", "pan")))
def test_every_recipe_parses(recipe, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(RECIPES / recipe), "--print_config"])
    assert done.value.code == 0
    assert "class_path" in capsys.readouterr().out


def test_deepspeed_overlay_swaps_the_teacher_strategy_only(capsys):
    recipe = ["fit", "--config", str(RECIPES / "wan2.1-1.3b" / "context_teacher.yaml")]
    printed = []
    for extra in ([], ["--config", str(RECIPES / "wan2.1-1.3b" / "strategies" / "deepspeed.yaml")]):
        with pytest.raises(SystemExit):
            main([*recipe, *extra, "--print_config"])
        printed.append(yaml.safe_load(capsys.readouterr().out))
    fsdp, deepspeed = printed
    strategy = deepspeed["trainer"].pop("strategy")
    assert strategy["class_path"] == "lightning.pytorch.strategies.DeepSpeedStrategy"
    assert strategy["init_args"]["stage"] == 2 and "sharding_strategy" not in strategy["init_args"]
    assert deepspeed["model"]["init_args"].pop("gradient_checkpointing") is True
    fsdp["trainer"].pop("strategy")
    fsdp["model"]["init_args"].pop("gradient_checkpointing")
    assert deepspeed == fsdp, "only the strategy and activation checkpointing change"
    # every argument is DeepSpeedStrategy's
    inspect.signature(DeepSpeedStrategy).bind(**strategy["init_args"])


@pytest.mark.parametrize("recipe", ["context_teacher.yaml", "slowfast.yaml"])
def test_fsdp2_overlay_swaps_the_strategy_only(recipe, capsys):
    printed = []
    for extra in ([], ["--config", str(RECIPES / "wan2.1-1.3b" / "strategies" / "fsdp2.yaml")]):
        with pytest.raises(SystemExit):
            main(["fit", "--config", str(RECIPES / "wan2.1-1.3b" / recipe), *extra, "--print_config"])
        printed.append(yaml.safe_load(capsys.readouterr().out))
    fsdp1, fsdp2 = printed
    strategy = fsdp2["trainer"].pop("strategy")
    assert strategy["class_path"] == "lightning.pytorch.strategies.ModelParallelStrategy"
    assert strategy["init_args"]["data_parallel_size"] == fsdp1["trainer"]["devices"]
    inspect.signature(ModelParallelStrategy).bind(**strategy["init_args"])
    assert fsdp2["model"]["init_args"].pop("gradient_checkpointing") is True
    fsdp1["trainer"].pop("strategy")
    fsdp1["model"]["init_args"].pop("gradient_checkpointing")
    assert fsdp2 == fsdp1, "only the strategy and activation checkpointing change"


def test_teacher_recipe_trains_and_resumes(tmp_path):
    args = [
        "fit",
        "--config",
        str(RECIPES / "teacher.yaml"),
        *TINY_DATA,
        *logged(tmp_path, "t"),
        "--model.backbone",
        "tiny",
        "--trainer.val_check_interval",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.callbacks.init_args.every_n_batches",
        "2",
    ]
    main([*args, "--trainer.max_steps", "2", "--trainer.logger.init_args.version", "a"])
    checkpoint = tmp_path / "t" / "a" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 2
    main([*args, "--trainer.max_steps", "4", "--trainer.logger.init_args.version", "b", "--ckpt_path",
          str(checkpoint)])
    resumed = tmp_path / "t" / "b" / "checkpoints" / "last.ckpt"
    assert torch.load(resumed, weights_only=True)["global_step"] == 4


def test_slowfast_recipe_leaves_checkpoint_logs_and_video(tmp_path):
    main(
        [
            "fit",
            "--config",
            str(RECIPES / "slowfast.yaml"),
            *TINY_DISTILL,
            *logged(tmp_path, "cf"),
            "--trainer.max_steps",
            "4",
            "--trainer.val_check_interval",
            "2",
            "--trainer.logger.init_args.version",
            "v",
        ]
    )
    run = tmp_path / "cf" / "v"
    # last.ckpt holds the final state: batches 1 and 3 step generator + critic, batch 2 the critic (5 >= 4
    # steps)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert int(state["state_dict"]["generator_steps"]) == 2 and int(state["state_dict"]["critic_steps"]) == 3
    assert state["hyper_parameters"]["memory"]["class_path"].endswith("slow_fast")
    assert list((run / "videos").glob("*.mp4")) and list((run / "videos").glob("*_latents.npy"))
    assert list((run / "videos").glob("*_memory.png"))  # the memory timeline beside the video
    events = EventAccumulator(str(run))
    events.Reload()
    assert {"train/dmd_loss", "train/critic_loss", "val/effective_context"} <= set(events.Tags()["scalars"])
    assert "samples/memory_timeline" in events.Tags()["images"]
    # the grouped settings round-trip: hparams.yaml keeps each group as a block, and the checkpoint
    # rebuilds a module with the same groups
    recorded = yaml.safe_load((run / "hparams.yaml").read_text())
    assert recorded["rollout"]["max_chunks"] == 6 and recorded["teacher"]["context_positions"] == "packed"
    loaded = ContextForcingModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert (loaded.rollout_config.min_chunks, loaded.rollout_config.max_chunks) == (4, 6)
    assert loaded.teacher_config == TeacherConfig(context="memory", context_positions="packed")
    assert loaded.optimization.generator_every == 2 and loaded.optimization.ema_start == 20

    # `cf-fit test` scores the trained checkpoint alone, with the validation measure under test/, also
    # when the init files its settings name (student, teacher) are gone, as on another machine
    state["hyper_parameters"]["init_from"] = str(tmp_path / "gone" / "student.safetensors")
    state["hyper_parameters"]["teacher"]["init_from"] = str(tmp_path / "gone" / "teacher.safetensors")
    copied = tmp_path / "copied.ckpt"
    torch.save(state, copied)
    main(["test", "--config", str(RECIPES / "slowfast.yaml"), *TINY_DISTILL, *logged(tmp_path, "cf"),
          "--trainer.logger.init_args.version", "test",
          "--ckpt_path", str(copied)])
    events = EventAccumulator(str(tmp_path / "cf" / "test"))
    events.Reload()
    assert {"test/effective_context", "test/revisit_auc"} <= set(events.Tags()["scalars"])


def test_policy_swapped_by_a_command_line_flag(tmp_path):
    main(["fit", "--config", str(RECIPES / "slowfast.yaml"), *TINY_DISTILL, *logged(tmp_path, "cf"),
          "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.callbacks", "[]",
          "--model.memory", "sliding_window", "--model.memory.init_args.window", "6",
          "--model.memory.init_args.rope_length", "8"])
    config = next(tmp_path.rglob("config.yaml")).read_text()
    assert "memory_policies.sliding_window.sliding_window" in config and "window: 6" in config


def test_unknown_policy_and_unknown_key_fail_before_training(tmp_path, capsys):
    base = ["fit", "--config", str(RECIPES / "slowfast.yaml"), *TINY_DISTILL, *logged(tmp_path, "cf")]
    with pytest.raises(SystemExit):
        main([*base, "--model.memory", "no_such_policy"])
    err = capsys.readouterr().err
    assert "no_such_policy" in err and "registered memory policies:" in err and "sliding_window" in err
    with pytest.raises(SystemExit):
        main([*base, "--model.memory.init_args.sinkk", "3"])
    assert "sinkk" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_unknown_key_in_a_setting_group_fails_naming_group_and_key(tmp_path, capsys):
    base = ["fit", "--config", str(RECIPES / "slowfast.yaml"), *TINY_DISTILL, *logged(tmp_path, "cf")]
    with pytest.raises(SystemExit):
        main([*base, "--model.rollout.longest", "20"])
    assert "rollout.longest" in capsys.readouterr().err
    typo = tmp_path / "typo.yaml"
    typo.write_text((RECIPES / "slowfast.yaml").read_text().replace("guidance_scale: 3.0", "guidance: 3.0"))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(typo), "--print_config"])
    err = capsys.readouterr().err
    assert "teacher" in err and "guidance" in err
    with pytest.raises(SystemExit):
        main([*base, "--model.teacher.context", "short"])  # the words are memory, last_n, none
    assert "short" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_student_recipe_validates_and_tests(tmp_path):
    """Stage 1 logs val/loss while training (with a warm-up + cosine schedule given by class path), and
    `cf-fit test` scores the checkpoint on held-out clips."""
    args = ["--config", str(RECIPES / "student_init.yaml"), *TINY_DATA, *logged(tmp_path, "s"),
            "--model.backbone", "tiny", "--trainer.logger.init_args.version", "v",
            "--trainer.log_every_n_steps", "1"]
    schedule = {"class_path": "cf_lightning.lr_schedules.WarmupCosineLR",
                "init_args": {"warmup_steps": 1, "total_steps": 4}}
    main(["fit", *args, "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
          "--trainer.limit_val_batches", "1", "--trainer.callbacks.init_args.every_n_batches", "2",
          "--model.lr_scheduler", json.dumps(schedule)])
    checkpoint = tmp_path / "s" / "v" / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, weights_only=True)
    [scheduler] = saved["lr_schedulers"]
    assert scheduler["last_epoch"] == 2 and scheduler["warmup_steps"] == 1
    # the recipe's `codec: PooledPixelCodec` is recorded as the spec cf-gen rebuilds the codec from
    codec = saved["datamodule_hyper_parameters"]["codec"]
    assert codec == {"class_path": "cf_lightning.codecs.pixel.PooledPixelCodec", "init_args": {"patch": 8}}
    assert build_codec(codec).latent_channels == saved["hyper_parameters"]["latent_channels"]
    main(["test", *args, "--ckpt_path", str(checkpoint)])
    events = EventAccumulator(str(tmp_path / "s" / "v"))
    events.Reload()
    assert {"train/loss", "val/loss", "test/loss"} <= set(events.Tags()["scalars"])
    assert all(math.isfinite(e.value) for e in events.Scalars("test/loss"))


def print_config(recipe: Path, capsys) -> dict:
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(recipe), "--print_config"])
    assert done.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_recipe_numbers_are_written_once_and_interpolated(tmp_path, capsys):
    """The slowfast recipe derives the clip length, the last revisit bucket and the position span from
    the numbers they depend on, so changing one number changes them all."""
    config = print_config(RECIPES / "slowfast.yaml", capsys)
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    assert data["clip_frames"] == model["rollout"]["max_chunks"] * model["chunk_frames"] == 48
    assert model["eval_bucket_edges"][-1] == data["val_num_frames"] == 96
    memory = model["memory"]["init_args"]
    assert memory["rope_length"] == memory["sink"] + memory["slow"] + memory["fast"] == 10
    text = (RECIPES / "slowfast.yaml").read_text()
    changed = tmp_path / "slowfast.yaml"
    changed.write_text(text.replace("max_chunks: 24", "max_chunks: 20")
                       .replace("val_num_frames: 96", "val_num_frames: 64").replace("slow: 4,", "slow: 6,"))
    config = print_config(changed, capsys)
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    rope_length = model["memory"]["init_args"]["rope_length"]
    assert (data["clip_frames"], model["eval_bucket_edges"][-1], rope_length) == (40, 64, 12)


def test_a_bad_interpolation_fails_naming_the_key(tmp_path):
    broken = tmp_path / "slowfast.yaml"
    broken.write_text((RECIPES / "slowfast.yaml").read_text().replace("${model.init_args.chunk_frames}",
                                                                        "${model.init_args.chunk_frame}"))
    with pytest.raises(InterpolationKeyError, match=r"'model.init_args.chunk_frame' not found"):
        main(["fit", "--config", str(broken), "--print_config"])
