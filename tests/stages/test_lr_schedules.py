"""Learning-rate schedules on every stage: the closed-form warm-up + cosine, and each stage's
optimizers following their schedule in their own optimizer steps, also across a resume."""

from __future__ import annotations

import functools
import math

import lightning as L
import pytest
import torch

from cf_lightning.lr_schedules import WarmupCosineLR
from cf_lightning.stages import (
    ContextForcingModule,
    OptimizationConfig,
    RolloutConfig,
    StudentModule,
    TeacherModule,
)
from memory_policies import SlowFast
from tests.stages.conftest import CHANNELS, TEXT_DIM

SCHEDULE = functools.partial(WarmupCosineLR, warmup_steps=2, total_steps=6, min_ratio=0.1)


def rates(steps: int, **kwargs) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupCosineLR(optimizer, **kwargs)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_warmup_then_cosine_to_the_floor():
    seen = rates(8, warmup_steps=2, total_steps=6, min_ratio=0.1)
    expected = [0.5, 1.0, 1.0, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)), 0.55,
                0.1 + 0.9 * 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.1, 0.1]
    assert seen == pytest.approx(expected)
    assert rates(4, warmup_steps=3) == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0]), "no total_steps: warm-up only"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"warmup_steps": -1}, "warmup_steps must be >= 0, got -1"),
    ({"warmup_steps": 4, "total_steps": 4}, r"total_steps must exceed warmup_steps=4 .* got 4"),
    ({"min_ratio": 1.5}, r"min_ratio must lie in \[0, 1\], got 1.5"),
])
def test_bad_schedules_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WarmupCosineLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), **kwargs)


def fit(module: L.LightningModule, loader, steps: int, root, ckpt_path=None) -> L.Trainer:
    trainer = L.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", default_root_dir=root, limit_val_batches=0)
    # a module built in Python pickles its optimizer and schedule callables in its hyper-parameters
    trainer.fit(module, loader, ckpt_path=ckpt_path, weights_only=False)
    return trainer


def current_rates(trainer: L.Trainer) -> list[float]:
    return [optimizer.param_groups[0]["lr"] for optimizer in trainer.optimizers]


def test_automatically_optimized_stages_step_their_schedule(loader, tmp_path):
    optimizer = functools.partial(torch.optim.SGD, lr=1.0)
    for module in (StudentModule(latent_channels=CHANNELS, text_dim=TEXT_DIM, frame_cond_dim=2, clip_frames=4,
                                 memory=SlowFast(sink=1, slow=2, fast=4, admission="uniform", rope_length=7),
                                 optimizer=optimizer, lr_scheduler=SCHEDULE),
                   TeacherModule(latent_channels=CHANNELS, text_dim=TEXT_DIM, frame_cond_dim=2,
                                 target_frames=4, optimizer=optimizer, lr_scheduler=SCHEDULE)):
        trainer = fit(module, loader(num=2, batch_size=1), 3, tmp_path)
        assert current_rates(trainer) == pytest.approx([SCHEDULE(torch.optim.SGD(
            [torch.nn.Parameter(torch.zeros(1))], lr=1.0)).factor(3)])


def test_context_forcing_schedules_each_optimizer_in_its_own_steps(loader, tmp_path):
    """The critic steps every batch, the generator every 2nd, each schedule counts its own optimizer's
    steps, and a resumed run uses the rates of an uninterrupted one."""
    def module() -> ContextForcingModule:
        return ContextForcingModule(latent_channels=CHANNELS, text_dim=TEXT_DIM, frame_cond_dim=2,
                                    rollout=RolloutConfig(min_chunks=2, max_chunks=2, target_chunks=1),
                                    optimization=OptimizationConfig(
                                        generator_optimizer=functools.partial(torch.optim.SGD, lr=1.0),
                                        critic_optimizer=functools.partial(torch.optim.SGD, lr=0.5),
                                        generator_lr_scheduler=SCHEDULE, critic_lr_scheduler=SCHEDULE,
                                        generator_every=2))

    factor = SCHEDULE(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)).factor
    data = loader(num=4, batch_size=1)
    first = module()
    trainer = fit(first, data, 6, tmp_path)  # 4 batches: 4 critic + 2 generator steps
    assert (int(first.generator_steps), int(first.critic_steps)) == (2, 4)
    # the last batch started after 2 generator and 3 critic steps
    assert current_rates(trainer) == pytest.approx([factor(2), 0.5 * factor(3)])
    trainer.save_checkpoint(tmp_path / "first.ckpt")
    resumed = fit(module(), data, 9, tmp_path, ckpt_path=tmp_path / "first.ckpt")  # 2 more batches
    uninterrupted = fit(module(), data, 9, tmp_path)
    expected = pytest.approx([factor(3), 0.5 * factor(5)])
    assert current_rates(resumed) == current_rates(uninterrupted) == expected
