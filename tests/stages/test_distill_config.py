"""Stage 2's grouped settings: the teacher-context words, strict groups, and checkpoints from before the
grouping refused with the moved names (their weights still generate)."""

from __future__ import annotations

import sys

import lightning as L
import pytest
import torch

from cf_lightning.cli.evaluate import checkpoint_hparams
from cf_lightning.cli.fit import main
from cf_lightning.inference.loading import load_generator
from cf_lightning.models.checkpoint import load_wan
from cf_lightning.models.context import choose_context, last_frames
from cf_lightning.stages import ContextForcingModule, RolloutConfig, TeacherConfig
from cf_lightning.stages.common import as_group
from cf_lightning.stages.moved_settings import MOVED_SETTINGS
from memory_policies import SlowFast
from tests.cli_helpers import RECIPES, TINY_DISTILL
from tests.stages.test_distill import make

MEMORY = [[0, 1, 5], [2, 3, 6]]  # what two videos' memories kept of a 10-frame history


@pytest.mark.parametrize(("context", "expected"), [
    ("memory", MEMORY),
    ("last_n", last_frames(10, 4, 2)),  # what `short_teacher: true` showed: the last N, whatever memory kept
    ("none", [[], []]),
])
def test_teacher_context_words_choose_the_frames(context, expected):
    module = make(teacher={"context": context, "context_frames": 4})
    assert module.context_frames(10, MEMORY) == expected
    assert module.context_frames(0, [[], []]) == [[], []]  # no history, no context
    assert module.ablation_hparams()["teacher/context"] == context


def test_unknown_teacher_context_is_named():
    with pytest.raises(ValueError, match="unknown teacher context 'short'; allowed: memory, last_n, none"):
        choose_context("short", 4, 2, list)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown teacher.context 'policy'"):
        make(teacher={"context": "policy"})


def test_groups_built_from_mappings_refuse_unknown_keys():
    assert as_group(RolloutConfig, {"max_chunks": 9}, "rollout") == RolloutConfig(max_chunks=9)
    assert as_group(TeacherConfig, None, "teacher") == TeacherConfig()
    with pytest.raises(ValueError, match=r"rollout has no setting\(s\) \['max_rollout_chunks'\]; allowed: "):
        as_group(RolloutConfig, {"max_rollout_chunks": 9}, "rollout")


def test_python_built_module_records_groups_as_mappings_and_reloads(tmp_path):
    module = make(rollout={"curriculum_steps": 7}, teacher={"context": "last_n", "context_frames": 6})
    recorded = module.hparams
    assert recorded["rollout"]["curriculum_steps"] == 7 and recorded["teacher"]["context"] == "last_n"
    trainer = L.Trainer(max_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", default_root_dir=tmp_path)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = ContextForcingModule.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=False)
    assert loaded.rollout_config == module.rollout_config and loaded.teacher_config == module.teacher_config
    assert all(torch.equal(a, b) for a, b in zip(loaded.student.parameters(), module.student.parameters()))
    # cf-eval's HParams columns read what the teacher saw from the teacher group
    columns = checkpoint_hparams(tmp_path / "m.ckpt")
    assert (columns["teacher/context"], columns["teacher/positions"]) == ("last_n", "student")


def flat_checkpoint(tmp_path):
    """A stage-2 checkpoint as cf-fit wrote it before the settings were grouped."""
    module = make()
    trainer = L.Trainer(max_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", default_root_dir=tmp_path)
    trainer.strategy.connect(module)
    path = tmp_path / "flat.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)
    shared = {k: v for k, v in saved["hyper_parameters"].items()
              if k not in ("rollout", "teacher", "critic", "optimization", "memory")}
    saved["hyper_parameters"] = {
        "_class_path": "cf_lightning.stages.ContextForcingModule", **shared,
        "memory": {"class_path": "slow_fast",
                   "init_args": {"sink": 1, "slow": 2, "fast": 4, "rope_length": 7}},
        "student_init": None, "teacher": None, "min_rollout_chunks": 3, "max_rollout_chunks": 3,
        "target_chunks": 1, "teacher_context": "memory", "short_teacher": True, "guidance_scale": 3.0,
    }
    torch.save(saved, path)
    return path


def test_flat_checkpoint_is_refused_naming_the_moved_settings_but_still_generates(tmp_path, monkeypatch):
    path = flat_checkpoint(tmp_path)
    moved = (r"student_init -> init_from, teacher -> teacher.init_from, "
             r".*short_teacher -> teacher.context: last_n")
    with pytest.raises(ValueError, match=moved):
        ContextForcingModule.load_from_checkpoint(path)
    monkeypatch.setattr(sys, "argv", ["cf-fit"])
    with pytest.raises(ValueError, match="max_rollout_chunks -> rollout.max_chunks"):
        main(["validate", "--config", str(RECIPES / "slowfast.yaml"), *TINY_DISTILL,
              "--ckpt_path", str(path)])
    loaded = load_generator(path)  # the backbone settings kept their names: cf-gen / cf-eval still read it
    assert loaded.preset is not None and loaded.preset.chunk_frames == 2


def test_every_moved_name_points_at_a_field_that_exists():
    fields = {"init_from"} | {f"{group}.{name}" for group, kind in (
        ("rollout", RolloutConfig), ("teacher", TeacherConfig))
        for name in kind.__dataclass_fields__}
    fields |= {"critic.init_from"} | {f"optimization.{name}" for name in
                                      ContextForcingModule(backbone="tiny").optimization.__dataclass_fields__}
    for old, new in MOVED_SETTINGS["ContextForcingModule"].items():
        assert new.split(":")[0] in fields, f"{old} -> {new}"


def test_shipped_assets_load_through_the_grouped_init_files():
    """recipes/assets hold backbone weights only; the recipe's init_from and teacher.init_from read them."""
    student_file, teacher_file = (str(RECIPES / "assets" / f"{name}.safetensors")
                                  for name in ("student_init", "context_teacher"))
    student, teacher = load_wan(student_file), load_wan(teacher_file)
    config = student.config
    module = ContextForcingModule(backbone="small", latent_channels=config.in_dim, text_dim=config.text_dim,
                                  frame_cond_dim=config.frame_cond_dim, init_from=student_file,
                                  memory=SlowFast(sink=2, slow=4, fast=4, rope_length=10),
                                  teacher=TeacherConfig(init_from=teacher_file))
    for built, shipped in ((module.student, student), (module.teacher, teacher), (module.critic, teacher)):
        pairs = zip(built.state_dict().values(), shipped.state_dict().values(), strict=True)
        assert all(torch.equal(a, b) for a, b in pairs)


def test_a_dotted_null_init_file_is_answered_with_the_mapping_form(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cf-fit"])
    base = [arg for arg in TINY_DISTILL if arg not in ("--model.teacher", "{init_from: null}")]
    hint = r"'None' does not exist; .*--model.teacher '\{init_from: null\}'"
    with pytest.raises((FileNotFoundError, ValueError), match=hint):  # jsonargparse wraps it in a ValueError
        main(["fit", "--config", str(RECIPES / "slowfast.yaml"), *base, "--model.teacher.init_from", "null",
              "--trainer.max_steps", "1", "--trainer.logger", "false", "--trainer.callbacks", "[]"])
