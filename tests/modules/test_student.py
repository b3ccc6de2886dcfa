"""Stage-1 student init: both objectives train, ODE pairs come from the teacher's trajectory."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from cf_lightning.modules import StudentModule, TeacherModule
from memory_policies import SlowFast
from tests.modules.conftest import CHANNELS, TEXT_DIM

POLICY = {"sink": 1, "slow": 2, "fast": 4, "admission": "uniform", "rope_length": 7}


def fit(module, loader, steps):
    trainer = L.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", default_root_dir=None, enable_checkpointing=False)
    trainer.fit(module, loader)
    return trainer


def test_teacher_forcing_overfits_a_tiny_batch(loader):
    torch.manual_seed(0)
    module = StudentModule(latent_channels=CHANNELS, text_dim=TEXT_DIM, frame_cond_dim=2, clip_frames=8,
                           memory=SlowFast(**POLICY), cfg_dropout=0.0,
                           optimizer=functools.partial(torch.optim.AdamW, lr=3e-3))
    data = loader(num=2, batch_size=2)
    batch = next(iter(data))

    def held_out_loss() -> float:
        """Same noise and levels every time, so the number only moves when the model does."""
        from cf_lightning.modules.common import batch_condition

        gen = torch.Generator().manual_seed(123)
        clean = batch["latents"][:, :, :8]
        sigma = module.sigmas[torch.randint(4, (2, 4), generator=gen)].repeat_interleave(2, dim=1)
        noisy = clean * (1 - sigma[:, None, :, None, None]) + sigma[:, None, :, None, None] * torch.randn(
            clean.shape, generator=gen)
        cond = batch_condition(batch)
        cond = type(cond)(cond.context, None, cond.frame_cond[:, :8])
        with torch.no_grad():
            return float((module.causal_x0(module.model, clean, noisy, sigma, cond) - clean).square().mean())

    before = held_out_loss()
    fit(module, data, steps=60)
    assert held_out_loss() < 0.6 * before


def test_ode_objective_regresses_teacher_trajectories(loader, tmp_path):
    torch.manual_seed(0)
    teacher = TeacherModule(latent_channels=CHANNELS, text_dim=TEXT_DIM, frame_cond_dim=2, target_frames=8)
    trainer = L.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(teacher, loader(num=2, batch_size=2))
    path = str(tmp_path / "teacher.ckpt")
    trainer.save_checkpoint(path)
    student = StudentModule(latent_channels=CHANNELS, text_dim=TEXT_DIM, frame_cond_dim=2, objective="ode",
                            teacher=path, clip_frames=4, ode_steps=6, memory=SlowFast(**POLICY))
    assert torch.equal(student.teacher.blocks[0].ffn[0].weight, teacher.ema.blocks[0].ffn[0].weight)
    noise = torch.randn(2, CHANNELS, 4, 4, 4)
    from cf_lightning.modules.common import Condition

    cond = Condition(torch.randn(2, 3, TEXT_DIM), None, torch.zeros(2, 4, 2))
    x0, trajectory = student.ode_pairs(noise, cond)
    assert trajectory.shape == (4, *noise.shape) and torch.equal(trajectory[0], noise)
    assert not torch.equal(x0, noise)
    fit(student, loader(num=2, batch_size=2), steps=2)


def test_surprisal_policy_is_rejected_for_teacher_forcing():
    with pytest.raises(ValueError, match="admission: uniform"):
        StudentModule(latent_channels=CHANNELS, text_dim=TEXT_DIM, memory=SlowFast(sink=1, slow=2, fast=4, rope_length=7))
