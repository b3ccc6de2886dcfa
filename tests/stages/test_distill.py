"""Contextual DMD: the update goes where the scores say, accumulation is exact, curriculum grows."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from cf_lightning.data import first_visit_from_views
from cf_lightning.stages import ContextForcingModule, OptimizationConfig, RolloutConfig, TeacherConfig
from cf_lightning.stages.distill import StepDraws, curriculum_max_chunks, revisit_rollout_lengths
from memory_policies import SlowFast
from tests.stages.conftest import CHANNELS, TEXT_DIM


def sgd(lr: float):
    return functools.partial(torch.optim.SGD, lr=lr)


def make(rollout: dict | None = None, teacher: dict | None = None, optimization: dict | None = None,
         **overrides) -> ContextForcingModule:
    """A tiny module; ``rollout`` / ``teacher`` / ``optimization`` change fields of the test's groups."""
    torch.manual_seed(0)
    settings = {"latent_channels": CHANNELS, "text_dim": TEXT_DIM, "frame_cond_dim": 2,
                "memory": SlowFast(sink=1, slow=2, fast=4, rope_length=7), "denoising_steps": 2,
                "rollout": RolloutConfig(**{"min_chunks": 3, "max_chunks": 3, "target_chunks": 1,
                                            **(rollout or {})}),
                "teacher": TeacherConfig(**(teacher or {})),
                "optimization": OptimizationConfig(**{"generator_optimizer": sgd(1e-3),
                                                      "critic_optimizer": sgd(1e-3), "generator_every": 1,
                                                      **(optimization or {})})}
    settings.update(overrides)
    return ContextForcingModule(**settings)


class FixedDraws(ContextForcingModule):
    """Same draws every step, so two runs can be compared sample for sample."""

    def draw(self, batch_size: int, first_visit: torch.Tensor | None = None) -> StepDraws:
        return StepDraws(
            num_chunks=3, exit_step=1, seeds=list(range(100, 100 + batch_size * self.trainer.world_size))
        )


def fit(module, loader, steps: int) -> None:
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, loader)


def flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def test_generator_gradient_vanishes_when_critic_equals_teacher(loader):
    module = make(teacher={"guidance_scale": 1.0})
    student, critic = flat(module.student), flat(module.critic)
    fit(module, loader(num=4, batch_size=4), steps=2)  # one generator + one critic step
    assert int(module.generator_steps) == 1
    assert torch.equal(flat(module.student), student)  # real score == fake score: zero DMD gradient
    assert not torch.equal(flat(module.critic), critic)  # the critic still learns the student's samples


def test_generator_moves_its_samples_towards_the_teacher(loader):
    torch.manual_seed(0)
    module = FixedDraws(latent_channels=CHANNELS, text_dim=TEXT_DIM, frame_cond_dim=2,
                        memory=SlowFast(sink=1, slow=2, fast=4, rope_length=7), denoising_steps=2,
                        rollout=RolloutConfig(min_chunks=3, max_chunks=3, target_chunks=1),
                        teacher=TeacherConfig(guidance_scale=1.0),
                        optimization=OptimizationConfig(generator_optimizer=sgd(5e-2),
                                                        critic_optimizer=sgd(0.0), generator_every=1))
    torch.manual_seed(1)
    for p in module.teacher.parameters():  # a teacher different from the critic
        p.data.add_(0.05 * torch.randn_like(p))
    data = loader(num=4, batch_size=4)
    batch = next(iter(data))
    draws = StepDraws(num_chunks=3, exit_step=1, seeds=list(range(100, 104)))

    def sample():
        from cf_lightning.stages.common import batch_condition

        with torch.no_grad():
            _, target, _ = module.student_rollout(
                batch_condition(batch), tuple(batch["latents"].shape), draws, draws.seeds, with_grad=False
            )
        return target

    before = sample()
    fit(module, data, steps=2)
    after = sample()
    # DMD descends E|x - real|^2 - E|x - fake|^2 along (fake_x0 - real_x0): samples should get closer to
    # what the teacher predicts than to what the critic predicts, relative to before.
    from cf_lightning.diffusion import add_noise, x0_from_velocity
    from cf_lightning.models.context import build_context_sequence
    from cf_lightning.stages.common import batch_condition

    cond = batch_condition(batch)
    sigma = torch.full((4,), 0.5)
    eps = torch.randn(before.shape, generator=torch.Generator().manual_seed(0))

    def gap(x):
        seq = build_context_sequence(x[:, :, :0], [[]] * 4, x, history_cond=cond.frames(slice(0, 0)),
                                     target_cond=cond.frames(slice(4, 6)))
        noisy = add_noise(x, eps, sigma)
        with torch.no_grad():
            real = x0_from_velocity(noisy, seq.velocity(module.teacher, noisy, sigma, cond.context), sigma)
            fake = x0_from_velocity(noisy, seq.velocity(module.critic, noisy, sigma, cond.context), sigma)
        return ((x - real).square().mean() - (x - fake).square().mean()).item()

    assert gap(after) < gap(before)


def test_accumulation_equals_one_big_batch(loader):
    data = loader(num=4, batch_size=4)
    whole = FixedDraws(**base_settings(accumulate=1))
    split = FixedDraws(**base_settings(accumulate=2))
    split.load_state_dict(whole.state_dict())
    fit(whole, data, steps=2)
    fit(split, data, steps=2)
    assert torch.allclose(flat(whole.student), flat(split.student), atol=1e-6)
    assert torch.allclose(flat(whole.critic), flat(split.critic), atol=1e-6)
    assert not torch.equal(flat(whole.student), flat(FixedDraws(**base_settings()).student))


def base_settings(accumulate: int = 1) -> dict:
    torch.manual_seed(0)
    return {
        "latent_channels": CHANNELS,
        "text_dim": TEXT_DIM,
        "frame_cond_dim": 2,
        "memory": SlowFast(sink=1, slow=2, fast=4, rope_length=7),
        "denoising_steps": 2,
        "rollout": RolloutConfig(min_chunks=3, max_chunks=3, target_chunks=1),
        "teacher": TeacherConfig(guidance_scale=2.0),
        "optimization": OptimizationConfig(generator_optimizer=sgd(1e-2), critic_optimizer=sgd(1e-2),
                                           generator_every=1, accumulate=accumulate),
    }


def test_curriculum_grows_linearly():
    assert [curriculum_max_chunks(s, 4, 12, 8) for s in (0, 4, 8, 100)] == [4, 8, 12, 12]
    assert curriculum_max_chunks(0, 4, 12, 0) == 12


def test_revisit_lengths_put_a_return_older_than_the_budget_in_the_targets():
    # video 0: place 0 (frames 0-3), place 1 (4-13), back to place 0 at frame 14; video 1 never returns
    views = torch.tensor([[0] * 4 + [1] * 10 + [0] * 6, list(range(20))])
    first_visit = first_visit_from_views(views)
    # chunks of 2 frames, 1 target chunk: only the rollout of 8 chunks has frame 14 (the return) in its
    # targets [14, 16); with older_than 10 the first visit (frame 0) must lie before frame 4
    assert revisit_rollout_lengths(first_visit, list(range(2, 11)), 1, 2, older_than=10) == [8]
    # a return newer than the window the budget covers does not count
    assert revisit_rollout_lengths(first_visit, list(range(2, 11)), 1, 2, older_than=14) == []
    # continuing a revisited view (frames 15-19) is not a return
    assert revisit_rollout_lengths(first_visit, [9, 10], 1, 2, older_than=0) == []


def test_revisit_targets_draw_rollouts_whose_targets_hold_a_return():
    module = make(rollout={"min_chunks": 2, "max_chunks": 10, "revisit_targets": 1.0})
    module.trainer = L.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", devices=1)
    module.setup("fit")
    views = torch.tensor([[0] * 4 + [1] * 10 + [0] * 6])
    drawn = {module.draw(1, first_visit_from_views(views)).num_chunks for _ in range(20)}
    assert drawn == {8}
    module.setup("fit")
    assert len({module.draw(1).num_chunks for _ in range(20)}) > 1, "without first visits: uniform lengths"


def test_budget_that_cannot_fit_fails_at_construction():
    with pytest.raises(ValueError, match="rope_length"):
        make(memory=SlowFast(sink=3, slow=12, fast=6, rope_length=20))
