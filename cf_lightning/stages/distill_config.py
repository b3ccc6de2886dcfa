"""The stage-2 settings, grouped by the part of Context Forcing they steer.

:class:`~cf_lightning.stages.ContextForcingModule` takes the settings every stage shares (backbone,
data shapes, memory policy, chunking, the student's denoising schedule) as plain arguments and the
rest as four typed groups, each a YAML block of its own in a recipe::

    rollout:       how long the student's self-rollouts are and which chunks receive the DMD gradient
    teacher:       the real score: its weights, backbone, what history it sees and how, its guidance
    critic:        the fake score's starting weights
    optimization:  optimizers, schedules, the update ratio, gradient clipping, accumulation and the EMA

LightningCLI (jsonargparse) reads each dataclass as a nested block: a key a group does not define
fails the parse naming the group and the key, and ``--model.teacher.context last_n`` sets one field.
Every field is documented beside its name (``cf-fit fit --model.help ContextForcingModule`` prints
them).

Checkpoints written before the grouping recorded flat names (``student_init``, ``max_rollout_chunks``,
``teacher_context`` ...). Loading one is refused with the list of moved names and their new place
(:mod:`cf_lightning.stages.moved_settings`) instead of failing on the first unknown key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from cf_lightning.diffusion import GuidanceForm
from cf_lightning.models.context import ContextPositions, ContextTimestep, TeacherContext
from cf_lightning.stages.common import TeacherWeights

ScheduleUnit = Literal["generator", "trainer"]
SCHEDULE_UNITS: tuple[str, ...] = ("generator", "trainer")


@dataclass(frozen=True)
class RolloutConfig:
    """Rollout and curriculum: the student's self-generated videos that distillation trains on.

    Args:
        min_chunks: shortest rollout, in chunks; each step draws a length between this and the
            curriculum's current longest.
        max_chunks: longest rollout once the curriculum is done (a recipe's clip length follows it).
        curriculum_steps: steps (in ``optimization.schedule_unit``) over which the longest allowed
            rollout grows linearly from ``min_chunks`` to ``max_chunks``; 0 starts at ``max_chunks``.
        target_chunks: chunks at the end of the rollout that keep the graph of one randomly chosen
            denoising step and receive the DMD gradient; the chunks before them are history.
        revisit_targets: fraction of steps whose rollout length is chosen (within the curriculum's
            range) so that the DMD targets hold a return to a view older than the memory budget, where
            the batch carries ``first_visit`` (the revisit world does). Drawn uniformly, returns land
            in the targets rarely, and the student is seldom taught to recall what only memory holds.
    """

    min_chunks: int = 4
    max_chunks: int = 8
    curriculum_steps: int = 0
    target_chunks: int = 2
    revisit_targets: float = 0.0


@dataclass(frozen=True)
class TeacherConfig(TeacherWeights):
    """The real score: a frozen teacher scoring ``[clean context | noisy target]``.

    Args:
        init_from: the teacher's weights (a ``.ckpt`` of an earlier stage or a Wan checkpoint).
        backbone: the teacher's named backbone when it differs from the student's; unset, it is the
            student's ``backbone`` with the student's ``backbone_overrides``.
        backbone_overrides: config fields changed on ``backbone`` (only read when ``backbone`` is set).
        context: which history frames the teacher sees before the target: ``memory`` (what the
            student's memory policy held when the target began: Context Forcing), ``last_n`` (the last
            ``context_frames`` frames: the short-window teacher of LongLive-style distillation) or
            ``none`` (no history: plain DMD on the target chunks).
        context_frames: N for ``last_n``.
        context_positions: temporal layout of ``[context | target]`` for teacher and critic: ``student``
            (each context frame where the student read it), ``packed`` (context 0..n-1, the layout the
            earlier context teachers were trained in) or ``absolute`` (true frame indices).
        context_timestep: the clean context's timestep: ``zero``, or ``shared`` with the target (the
            reference code's teacher needs it); score the way the teacher was trained.
        guidance_scale: classifier-free guidance of the real score.
        guidance_form: read the scale as ``uncond + w (cond - uncond)`` (``uncond``) or as the
            reference code's ``cond + g (cond - uncond)`` (``cond``: g = w - 1).
        negative_prompt: embedding file of the negative prompt (``cf-data prompts`` writes it), used
            as the unconditional text instead of the all-zero null text.
    """

    context: TeacherContext = "memory"
    context_frames: int = 8
    context_positions: ContextPositions = "student"
    context_timestep: ContextTimestep = "zero"
    guidance_scale: float = 3.0
    guidance_form: GuidanceForm = "uncond"
    negative_prompt: str | None = None


@dataclass(frozen=True)
class CriticConfig:
    """The fake score: a copy of the teacher's backbone that learns the student's distribution by flow
    matching on the student's own samples.

    Args:
        init_from: the critic's starting weights; unset, the critic starts as a copy of the teacher.
    """

    init_from: str | None = None


@dataclass(frozen=True)
class OptimizationConfig:
    """Optimizers, schedules, update ratio and the student's EMA.

    Args:
        generator_optimizer: optimizer of the student's weights.
        critic_optimizer: optimizer of the critic's weights.
        generator_lr_scheduler: learning-rate schedule of the student's optimizer, counted in its own
            steps (one every ``generator_every``-th batch); unset keeps the rate constant, as the
            Context Forcing reference does.
        critic_lr_scheduler: the same for the critic (one step per batch).
        generator_every: critic updates per student update (the paper uses 5).
        accumulate: micro-batches per optimizer step (the batch size must divide evenly).
        grad_clip: gradient-norm clipping of both optimizers.
        schedule_unit: what ``rollout.curriculum_steps`` and ``ema_start`` count: ``generator`` steps,
            or ``trainer`` steps (one per batch, critic-only steps included: the reference code).
        ema_decay: decay of the student's EMA, the weights that generate and are exported.
        ema_start: the EMA copies the student until this many steps (in ``schedule_unit``) are done.
    """

    generator_optimizer: OptimizerCallable = torch.optim.AdamW
    critic_optimizer: OptimizerCallable = torch.optim.AdamW
    generator_lr_scheduler: LRSchedulerCallable | None = None
    critic_lr_scheduler: LRSchedulerCallable | None = None
    generator_every: int = 5
    accumulate: int = 1
    grad_clip: float = 2.0
    schedule_unit: ScheduleUnit = "generator"
    ema_decay: float = 0.99
    ema_start: int = 0
