"""Stage-1 student init: both objectives train; ODE pairs come from trajectory shards or the teacher on the
fly."""

from __future__ import annotations

import functools
import math
import re

import lightning as L
import pytest
import torch

from cf_lightning.data import ShardDataModule
from cf_lightning.diffusion import denoising_sigmas
from cf_lightning.stages import StudentModule, TeacherModule
from cf_lightning.stages.common import Condition, TeacherWeights, batch_condition, load_backbone
from memory_policies import SlowFast
from tests.data.trajectory_shards import CHANNELS as SHARD_CHANNELS
from tests.data.trajectory_shards import TEXT_DIM as SHARD_TEXT_DIM
from tests.data.trajectory_shards import save_tiny_teacher, write_trajectory_shards
from tests.stages.conftest import CHANNELS, TEXT_DIM

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


def test_ode_objective_integrates_a_teacher_on_the_fly(loader, tmp_path):
    torch.manual_seed(0)
    teacher = TeacherModule(latent_channels=CHANNELS, text_dim=TEXT_DIM, frame_cond_dim=2, target_frames=8)
    trainer = L.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(teacher, loader(num=2, batch_size=2))
    path = str(tmp_path / "teacher.ckpt")
    trainer.save_checkpoint(path)
    assert torch.equal(load_backbone(path).blocks[0].ffn[0].weight, teacher.ema.blocks[0].ffn[0].weight)
    student = StudentModule(latent_channels=CHANNELS, text_dim=TEXT_DIM, frame_cond_dim=2, objective="ode",
                            teacher=TeacherWeights(init_from=path), clip_frames=4, ode_steps=6,
                            memory=SlowFast(**POLICY))
    assert torch.equal(student.teacher.blocks[0].ffn[0].weight, teacher.ema.blocks[0].ffn[0].weight)
    batch = {"latents": torch.randn(2, CHANNELS, 6, 4, 4)}
    cond = Condition(torch.randn(2, 3, TEXT_DIM), None, torch.zeros(2, 4, 2))
    history, x0, trajectory = student.ode_pairs(batch, cond)
    assert history is x0
    assert trajectory.shape == (2, 4, CHANNELS, 4, 4, 4) and x0.shape == (2, CHANNELS, 4, 4, 4)
    assert not torch.equal(x0, trajectory[:, 0])
    fit(student, loader(num=2, batch_size=2), steps=2)
    stored = {**batch, "ode_trajectory": trajectory, "ode_sigmas": student.sigmas.expand(2, 4)}
    with pytest.raises(ValueError,
                       match="stored teacher trajectories .* and model.teacher.init_from=.*teacher.ckpt"):
        student.ode_pairs(stored, cond)


@pytest.fixture
def trajectory_shards(tmp_path):
    """Trajectory shards of a tiny random teacher, for the student levels of each ``denoising_steps``."""
    teacher = tmp_path / "teacher.safetensors"
    save_tiny_teacher(teacher)

    def make(denoising_steps: int = 4):
        out = tmp_path / f"ode-{denoising_steps}"
        assert write_trajectory_shards(out, teacher, "--denoising_steps", str(denoising_steps)) == 0
        return ShardDataModule(str(out), batch_size=2, shuffle_buffer=0, clip_frames=4)
    return make


def ode_student(**overrides) -> StudentModule:
    return StudentModule(
        latent_channels=SHARD_CHANNELS,
        text_dim=SHARD_TEXT_DIM,
        frame_cond_dim=2,
        objective="ode",
        clip_frames=4,
        memory=SlowFast(**POLICY),
        cfg_dropout=0.0,
        **overrides,
    )


def test_ode_objective_trains_from_trajectory_shards_without_a_teacher(trajectory_shards):
    torch.manual_seed(0)
    data = trajectory_shards()
    module = ode_student(optimizer=functools.partial(torch.optim.AdamW, lr=3e-3))
    assert module.teacher is None
    batch = next(iter(data.train_dataloader()))

    def regression_loss() -> float:
        """The ODE-regression loss of one batch with every chunk at each student level in turn."""
        cond = batch_condition(batch)
        cond = type(cond)(cond.context, cond.context_mask, cond.frame_cond[:, :4])
        _, clean, trajectory = module.ode_pairs(batch, cond)
        losses = []
        with torch.no_grad():
            for level, sigma in enumerate(module.sigmas):
                sigma = sigma.expand(2, 4)
                pred = module.causal_x0(module.model, clean, trajectory[:, level], sigma, cond)
                losses.append(float((pred - clean).square().mean()))
        return sum(losses) / len(losses)

    before = regression_loss()
    trainer = fit(module, data, steps=40)
    after = regression_loss()
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert after < 0.7 * before


def test_trajectories_at_other_levels_are_refused_naming_both(trajectory_shards):
    batch = next(iter(trajectory_shards(denoising_steps=3).train_dataloader()))
    expected = re.escape(
        f"stores teacher trajectories at sigmas {denoising_sigmas(3, 5.0).tolist()}, but this "
        f"student's levels are {denoising_sigmas(4, 5.0).tolist()} (denoising_steps=4, shift=5.0)"
    )
    with pytest.raises(ValueError, match=f"sample 'world-0000000\\d\\d' {expected}"):
        ode_student().training_step(batch, 0)
    other = re.escape(f"levels are {denoising_sigmas(3, 3.0).tolist()} (denoising_steps=3, shift=3.0)")
    with pytest.raises(ValueError, match=other):
        ode_student(denoising_steps=3, shift=3.0).training_step(batch, 0)
    ode_student(denoising_steps=3).training_step(batch, 0)


def test_ode_objective_without_teacher_or_trajectories_is_refused(loader):
    batch = next(iter(loader(num=2, batch_size=2)))
    student = StudentModule(latent_channels=CHANNELS, text_dim=TEXT_DIM, frame_cond_dim=2, objective="ode",
                            clip_frames=4, memory=SlowFast(**POLICY))
    with pytest.raises(ValueError,
                       match="batch has no 'ode_trajectory' .* and model.teacher.init_from is unset"):
        student.training_step(batch, 0)


def test_surprisal_policy_keeps_each_videos_scene_changes_from_its_latents(loader):
    policy = SlowFast(sink=1, slow=2, fast=2, threshold=0.99, interval=1, compare_to="last_admitted",
                      rope_length=5)
    module = StudentModule(latent_channels=CHANNELS, text_dim=TEXT_DIM, frame_cond_dim=2, clip_frames=12,
                           memory=policy)
    scene = torch.randn(2, CHANNELS, 1, 4, 4)
    cut = torch.cat([scene[:1].expand(-1, -1, 6, -1, -1), scene[1:].expand(-1, -1, 6, -1, -1)], dim=2)
    still = scene[:1].expand(-1, -1, 12, -1, -1)
    mask = module.memory_mask(torch.cat([cut, still]))
    assert mask.shape == (2, 24, 24)
    # the last chunk's noisy frames (rows 22, 23) read the clean history: sink 0, the first slow entry
    # (frame 2, admitted with nothing to compare it to) and, only in the video whose scene changes at
    # frame 6, that frame: the recent window (2 frames) is the query chunk itself
    last = mask[:, 22, :12]
    assert last[0].nonzero().flatten().tolist() == [0, 2, 6]
    assert last[1].nonzero().flatten().tolist() == [0, 2]
    assert not torch.equal(mask[0], mask[1])
    trainer = fit(module, loader(num=2, batch_size=2, frames=12), steps=1)
    assert trainer.global_step == 1
