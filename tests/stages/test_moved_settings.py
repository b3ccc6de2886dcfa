"""Checkpoints of stages 0 and 1 that record the old setting names are refused naming each moved
setting; checkpoints with the current names reload with the same settings."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from cf_lightning.stages import StudentModule, TeacherModule
from cf_lightning.stages.common import TeacherWeights
from cf_lightning.stages.moved_settings import check_settings, moved_in
from tests.stages.conftest import CHANNELS, TEXT_DIM


def saved(module: L.LightningModule, path) -> dict:
    trainer = L.Trainer(max_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu")
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return torch.load(path, weights_only=False)


def test_student_checkpoints_old_and_new(tmp_path):
    torch.manual_seed(0)
    module = StudentModule(latent_channels=CHANNELS, text_dim=TEXT_DIM, objective="ode",
                           teacher=TeacherWeights(backbone="tiny"))
    checkpoint = saved(module, tmp_path / "new.ckpt")
    assert checkpoint["hyper_parameters"]["teacher"] == {"init_from": None, "backbone": "tiny",
                                                          "backbone_overrides": None}
    reloaded = StudentModule.load_from_checkpoint(tmp_path / "new.ckpt", weights_only=False)
    assert reloaded.hparams["teacher"]["backbone"] == "tiny"
    old = dict(checkpoint["hyper_parameters"], teacher=None, teacher_backbone=None, teacher_overrides=None)
    torch.save({**checkpoint, "hyper_parameters": old}, tmp_path / "old.ckpt")
    moved = "teacher -> teacher.init_from, teacher_backbone -> teacher.backbone"
    with pytest.raises(ValueError, match=moved):
        StudentModule.load_from_checkpoint(tmp_path / "old.ckpt", weights_only=False)


def test_teacher_checkpoint_with_context_modes_is_refused(tmp_path):
    torch.manual_seed(0)
    module = TeacherModule(latent_channels=CHANNELS, text_dim=TEXT_DIM, target_frames=4, contexts=["last_n"],
                           context_positions="packed")
    checkpoint = saved(module, tmp_path / "new.ckpt")
    reloaded = TeacherModule.load_from_checkpoint(tmp_path / "new.ckpt", weights_only=False)
    assert reloaded.contexts == ["last_n"]
    old = {k: v for k, v in checkpoint["hyper_parameters"].items() if k != "contexts"}
    old["context_modes"] = ["policy"]
    torch.save({**checkpoint, "hyper_parameters": old}, tmp_path / "old.ckpt")
    with pytest.raises(ValueError, match=r"context_modes -> contexts \(with memory for policy\)"):
        TeacherModule.load_from_checkpoint(tmp_path / "old.ckpt", weights_only=False)


def test_only_the_old_form_of_a_name_counts_as_moved():
    assert moved_in({"teacher": {"init_from": None}, "init_from": "x"}, "ContextForcingModule") == []
    old = {"teacher": None, "critic_init": None}
    assert moved_in(old, "ContextForcingModule") == ["teacher", "critic_init"]
    assert moved_in({"context_positions": "student"}, "TeacherModule") == []  # the teacher stage kept it
    check_settings({"teacher": "a.ckpt"}, "SomeOtherModule", "x.ckpt")  # modules without moves pass
