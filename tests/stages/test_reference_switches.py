"""Switches that reproduce the reference code's behaviour: context timestep, guidance form, negative
prompt, and schedules counted in trainer steps; each checked against what it must compute."""

from __future__ import annotations

import pytest
import torch

from cf_lightning.data.prompts import save_negative_prompt
from cf_lightning.diffusion import guidance_weight, guided
from cf_lightning.models.context import build_context_sequence
from cf_lightning.stages import TeacherModule
from cf_lightning.text import HashTextEncoder
from tests.stages.conftest import CHANNELS, TEXT_DIM
from tests.stages.test_distill import fit, make


def test_reference_guidance_form_is_wan_scale_plus_one():
    calls = []

    def score(x, sigma, text, text_mask):
        calls.append((text, text_mask))
        return x * 0 + text.sum()

    context, mask = torch.ones(1, 2, 3), torch.ones(1, 2, dtype=torch.bool)
    negative = torch.full((5, 3), 0.5)
    ours = guided(score, context, 5.0, mask)(torch.zeros(1, 4), torch.ones(1))
    reference = guided(score, context, 4.0, mask, form="cond")(torch.zeros(1, 4), torch.ones(1))
    assert torch.equal(ours, reference) and torch.equal(reference, torch.full((1, 4), 6.0 + 4.0 * 6.0))
    assert guidance_weight(0.0, "cond") == 1.0 and guidance_weight(3.0) == 3.0
    calls.clear()
    with_negative = guided(score, context, 4.0, mask, form="cond", negative=negative)(
        torch.zeros(1, 4), torch.ones(1)
    )
    assert torch.equal(with_negative, torch.full((1, 4), 6.0 + 4.0 * (6.0 - 7.5)))  # cond + g (cond - neg)
    assert calls[0][1] is mask and calls[1][1] is None and calls[1][0].shape == (1, 5, 3)
    with pytest.raises(ValueError, match="allowed: uncond, cond"):
        guidance_weight(1.0, "reference")  # type: ignore[arg-type]


def test_shared_context_timestep_gives_context_the_targets_timestep():
    seen = []

    def model(x, steps, context, **kwargs):
        seen.append(steps.clone())
        return x

    history, target = torch.zeros(2, 1, 4, 1, 1), torch.zeros(2, 1, 2, 1, 1)
    sigma = torch.tensor([0.25, 0.75])
    for mode in ("zero", "shared"):
        sequence = build_context_sequence(history, [[0, 3], [1, 2]], target, context_timestep=mode)
        sequence.velocity(model, target, sigma, torch.zeros(2, 1, 1))
    zero, shared = seen
    assert torch.equal(zero[:, :2], torch.zeros(2, 2)) and torch.equal(zero[:, 2:], shared[:, 2:])
    assert torch.equal(shared, torch.tensor([[250.0] * 4, [750.0] * 4]))
    with pytest.raises(ValueError, match="allowed: zero, shared"):
        build_context_sequence(history, [[0], [1]], target, context_timestep="half")  # type: ignore[arg-type]


def test_schedules_count_trainer_steps_when_asked(loader):
    """generator_every=2: generator steps at batches 0 and 2. Counted in generator steps the EMA (start 2)
    still copies the student at both; counted in trainer steps (3 at batch 2) it has begun to average."""
    ema_gap = {}
    for unit in ("generator", "trainer"):
        module = make(optimization={"schedule_unit": unit, "generator_every": 2, "ema_start": 2,
                                    "ema_decay": 0.5})
        fit(module, loader(num=4, batch_size=4), steps=5)  # 3 batches: 2 generator + 3 critic steps
        assert int(module.generator_steps) == 2 and int(module.critic_steps) == 3
        assert module.schedule_step() == (2 if unit == "generator" else 3)
        ema_gap[unit] = max((e - p).abs().max().item() for e, p in
                            zip(module.ema.parameters(), module.student.parameters()))
    assert ema_gap["generator"] == 0.0 and ema_gap["trainer"] > 0.0
    module = make(optimization={"schedule_unit": "trainer"},
                  rollout={"min_chunks": 3, "max_chunks": 7, "curriculum_steps": 10})
    module.critic_steps.fill_(5)
    assert module.schedule_step() == 5  # the curriculum is half way after 5 batches, not 5 generator steps
    with pytest.raises(ValueError, match="allowed: generator, trainer"):
        make(optimization={"schedule_unit": "epochs"})


def test_dmd_step_with_every_reference_switch(loader, tmp_path):
    negative = save_negative_prompt(
        tmp_path / "negative.safetensors", "blurry", HashTextEncoder(dim=TEXT_DIM)
    )
    module = make(teacher={"guidance_scale": 4.0, "guidance_form": "cond", "negative_prompt": str(negative),
                           "context_timestep": "shared"},
                  optimization={"schedule_unit": "trainer"})
    assert module.negative_prompt.shape[1] == TEXT_DIM
    student = [p.detach().clone() for p in module.student.parameters()]
    fit(module, loader(num=4, batch_size=4), steps=2)
    assert any(not torch.equal(a, b) for a, b in zip(student, module.student.parameters()))
    assert all(torch.isfinite(p).all() for p in module.student.parameters())


def test_teacher_draws_contexts_from_at_least_min_history_frames(loader):
    torch.manual_seed(0)
    module = TeacherModule(latent_channels=CHANNELS, text_dim=TEXT_DIM, frame_cond_dim=2, target_frames=4,
                           contexts=["last_n"], context_frames=4, context_positions="packed",
                           min_history_frames=8)
    latents = next(iter(loader(num=2, frames=16, batch_size=2)))["latents"]
    generator = torch.Generator().manual_seed(0)
    lengths = {module._split(latents, generator)[0].shape[2] for _ in range(20)}
    assert lengths and min(lengths) >= 8 and lengths <= {8, 10, 12}
    with pytest.raises(ValueError, match="use clips of >= 12 frames"):
        module._split(latents[:, :, :10], generator)
