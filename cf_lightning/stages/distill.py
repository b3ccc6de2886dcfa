"""Stage 2 (and Self-Forcing stage 1): Contextual DMD on long student rollouts.

Per step: the causal few-step student rolls out a video chunk by chunk through its memory policy
(the rollout length follows a curriculum); only the last ``rollout.target_chunks`` keep the graph of
one randomly chosen denoising step. The teacher (real score, with CFG) and the critic (fake score) see
``[clean context | noisy target]``, where the context is what the student's memory held when the
target began (``teacher.context: memory``), the last ``teacher.context_frames`` frames (``last_n``:
the LongLive-style baseline whose teacher only sees its short window) or nothing (``none``). The
settings are grouped (:mod:`cf_lightning.stages.distill_config`). The critic learns the student's
distribution by flow matching on the same samples. Manual optimization: two optimizers, accumulation by
micro-batches, every random draw that shapes the graph made on rank 0 and broadcast.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from cf_lightning.data.prompts import load_negative_prompt
from cf_lightning.diffusion import (
    add_noise,
    denoising_sigmas,
    dmd_loss,
    guided,
    sample_sigmas,
    velocity_target,
    x0_from_velocity,
)
from cf_lightning.distributed import shard_backbones
from cf_lightning.ema import EMA
from cf_lightning.metrics import RevisitError, return_frames
from cf_lightning.models.attention import Backend
from cf_lightning.models.context import (
    build_context_sequence,
    check_teacher_contexts,
    choose_context,
    context_layout,
)
from cf_lightning.rollout import RolloutResult, randn, rollout
from cf_lightning.stages.common import (
    Condition,
    as_group,
    batch_condition,
    build_backbone,
    check_finite,
    load_backbone_weights,
    optimizer_config,
    record_groups,
)
from cf_lightning.stages.distill_config import (
    SCHEDULE_UNITS,
    CriticConfig,
    OptimizationConfig,
    RolloutConfig,
    TeacherConfig,
)
from cf_lightning.stages.moved_settings import RefusesMovedSettings
from memory_policies import MemoryPolicy, SlowFast


@dataclass(frozen=True)
class StepDraws:
    """Random choices that shape the graph; identical on every rank."""

    num_chunks: int
    exit_step: int
    seeds: list[int]  # one per video of the global batch position, for noise independent of micro-batching


def curriculum_max_chunks(step: int, min_chunks: int, max_chunks: int, ramp_steps: int) -> int:
    """Longest rollout allowed at generator ``step``: grows linearly from min to max over ``ramp_steps``."""
    if ramp_steps <= 0:
        return max_chunks
    return min_chunks + round((max_chunks - min_chunks) * min(1.0, step / ramp_steps))


def revisit_rollout_lengths(first_visit: torch.Tensor, lengths: list[int], target_chunks: int,
                            chunk_frames: int, older_than: int) -> list[int]:
    """The rollout lengths (in chunks) whose DMD target window holds a *return* for the most videos.

    A return is a frame whose view differs from the frame before and was first seen more than
    ``older_than`` frames before the target window begins: only memory beyond a recent window of that
    size can supply it, so those are the frames where the context teacher's recall becomes the
    student's gradient. Returns an empty list when no length puts a return in any video's targets.
    ``first_visit``: ``[B, F]``, the earliest frame showing the same view, -1 on a first view.
    """
    frames = first_visit.shape[1]
    returns = return_frames(first_visit)
    scores = []
    for length in lengths:
        start, end = (length - target_chunks) * chunk_frames, min(length * chunk_frames, frames)
        older = returns[:, start:end] & (first_visit[:, start:end] < start - older_than)
        scores.append(int(older.any(dim=1).sum()))
    best = max(scores, default=0)
    return [n for n, score in zip(lengths, scores) if best > 0 and score == best]


class ContextForcingModule(RefusesMovedSettings):
    """Contextual DMD distillation of a causal student (see module docstring).

    The plain arguments are the ones every stage shares; the four groups are documented field by field
    in :mod:`cf_lightning.stages.distill_config` (``rollout``, ``teacher``, ``critic``, ``optimization``).

    Args:
        backbone, backbone_overrides: the student's named Wan config and the fields changed on it.
        latent_channels, text_dim, frame_cond_dim: shapes the data gives (``cf-fit`` links them).
        init_from: the student's starting weights (``.ckpt`` of stage 1 or a Wan checkpoint).
        memory: the student's memory policy (also what ``teacher.context: memory`` shows the teacher).
        chunk_frames, denoising_steps, shift: the student's chunking and few-step schedule.
        eval_bucket_edges: revisit-gap buckets of the validation measure (the last edge is the longest
            gap counted).
        attention_backend, gradient_checkpointing: how the backbones compute attention and whether the
            student and critic recompute activations in the backward pass.
    """

    def __init__(
        self,
        backbone: str = "tiny",
        backbone_overrides: dict[str, Any] | None = None,
        latent_channels: int = 16,
        text_dim: int = 32,
        frame_cond_dim: int = 0,
        init_from: str | None = None,
        memory: MemoryPolicy | None = None,
        chunk_frames: int = 2,
        denoising_steps: int = 4,
        shift: float = 5.0,
        rollout: RolloutConfig = RolloutConfig(),
        teacher: TeacherConfig = TeacherConfig(),
        critic: CriticConfig = CriticConfig(),
        optimization: OptimizationConfig = OptimizationConfig(),
        eval_bucket_edges: list[int] | None = None,
        attention_backend: Backend = "sdpa",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.rollout_config = rollout = as_group(RolloutConfig, rollout, "rollout")
        self.teacher_config = teacher = as_group(TeacherConfig, teacher, "teacher")
        self.critic_config = critic = as_group(CriticConfig, critic, "critic")
        self.optimization = optim = as_group(OptimizationConfig, optimization, "optimization")
        record_groups(self, rollout=rollout, teacher=teacher, critic=critic, optimization=optim)
        self.automatic_optimization = False
        if not 1 <= rollout.target_chunks <= rollout.min_chunks <= rollout.max_chunks:
            raise ValueError(
                "need 1 <= rollout.target_chunks <= rollout.min_chunks <= rollout.max_chunks, got "
                f"{rollout.target_chunks}, {rollout.min_chunks}, {rollout.max_chunks}"
            )
        if optim.generator_every < 1 or optim.accumulate < 1:
            raise ValueError("optimization.generator_every and optimization.accumulate must be >= 1, got "
                             f"{optim.generator_every}, {optim.accumulate}")
        if optim.schedule_unit not in SCHEDULE_UNITS:
            raise ValueError(f"unknown optimization.schedule_unit {optim.schedule_unit!r}; allowed: "
                             f"{', '.join(SCHEDULE_UNITS)}")
        check_teacher_contexts([teacher.context], "teacher.context")
        self.memory: MemoryPolicy = memory if memory is not None else SlowFast()
        self.memory.new_state(chunk_frames)  # fail now, with the policy's message, if the budget cannot work
        self.context_layout = context_layout(teacher.context_positions, self.memory, chunk_frames)
        shapes = (latent_channels, text_dim, frame_cond_dim)
        self.student = build_backbone(backbone, *shapes, backbone_overrides, attention_backend,
                                      gradient_checkpointing)
        self.teacher = teacher.build(backbone, backbone_overrides, *shapes, attention_backend)
        self.critic = teacher.build(backbone, backbone_overrides, *shapes, attention_backend,
                                    gradient_checkpointing)
        if init_from:
            load_backbone_weights(self.student, init_from)
        if teacher.init_from:
            load_backbone_weights(self.teacher, teacher.init_from)
        if critic.init_from:
            load_backbone_weights(self.critic, critic.init_from)
        else:
            self.critic.load_state_dict(self.teacher.state_dict())
        self.teacher.requires_grad_(False).eval()
        self.ema = copy.deepcopy(self.student).requires_grad_(False).eval()
        self.ema_rule = EMA(optim.ema_decay, optim.ema_start)
        self.register_buffer("generator_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("critic_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("sigmas", denoising_sigmas(denoising_steps, shift), persistent=False)
        negative = None
        if teacher.negative_prompt:
            negative = load_negative_prompt(teacher.negative_prompt, text_dim)
        self.register_buffer("negative_prompt", negative, persistent=False)
        self._draw_generator = torch.Generator()
        edges = eval_bucket_edges or [0, 8, 16, 32, 96]
        self.revisit = RevisitError(max_gap=edges[-1], bucket_edges=edges)

    # ------------------------------------------------------------------ randomness
    def setup(self, stage: str) -> None:
        self._draw_generator.manual_seed(torch.initial_seed())

    def draw(self, batch_size: int, first_visit: torch.Tensor | None = None) -> StepDraws:
        """Rollout length, exit step and per-video seeds: drawn on rank 0 (from rank 0's ``first_visit``
        with ``rollout.revisit_targets``), broadcast to all ranks."""
        h, plan = self.hparams, self.rollout_config
        longest = curriculum_max_chunks(self.schedule_step(), plan.min_chunks, plan.max_chunks,
                                        plan.curriculum_steps)
        g = self._draw_generator
        num_chunks = int(torch.randint(plan.min_chunks, longest + 1, (1,), generator=g))
        if plan.revisit_targets > 0 and first_visit is not None \
                and float(torch.rand((), generator=g)) < plan.revisit_targets:
            allowed = list(range(plan.min_chunks, longest + 1))
            older_than = self.memory.budget(h.chunk_frames) or 0
            lengths = revisit_rollout_lengths(first_visit.cpu(), allowed, plan.target_chunks, h.chunk_frames,
                                              older_than)
            if lengths:
                num_chunks = lengths[int(torch.randint(len(lengths), (1,), generator=g))]
        draws = StepDraws(
            num_chunks=num_chunks,
            exit_step=int(torch.randint(0, h.denoising_steps, (1,), generator=g)),
            seeds=torch.randint(0, 2**62, (batch_size * self.trainer.world_size,), generator=g).tolist(),
        )
        return self.trainer.strategy.broadcast(draws, src=0)

    def schedule_step(self) -> int:
        """Steps done so far in the unit the curriculum and the EMA start count
        (``optimization.schedule_unit``)."""
        by_generator = self.optimization.schedule_unit == "generator"
        return int(self.generator_steps if by_generator else self.critic_steps)

    # ------------------------------------------------------------------ scores
    def context_frames(self, history_len: int, memory_frames: list[list[int]]) -> list[list[int]]:
        """Each video's context for the teacher and the critic (``teacher.context``)."""
        teacher = self.teacher_config
        return [choose_context(teacher.context, history_len, teacher.context_frames, lambda kept=kept: kept)
                for kept in memory_frames]

    # ------------------------------------------------------------------ one micro-batch
    def student_rollout(self, cond: Condition, shape: tuple[int, ...], draws: StepDraws, seeds: list[int],
                        with_grad: bool) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        """History (no graph) then target chunks (graph of one step); returns history, target, memory
        frames."""
        h = self.hparams
        chunk = h.chunk_frames
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        frames = draws.num_chunks * chunk
        noise = randn((shape[0], shape[1], frames, *shape[3:]), gens).to(self.device)
        split = (draws.num_chunks - self.rollout_config.target_chunks) * chunk
        history_run = (
            rollout(
                self.student,
                self.memory,
                noise[:, :, :split],
                cond.context,
                self.sigmas,
                chunk_frames=chunk,
                context_mask=cond.context_mask,
                frame_cond=cond.frames(slice(0, split)),
                exit_step=None,
                generator=gens,
            )
            if split
            else None
        )
        memory = history_run.memory if history_run is not None else None
        memory_frames = [s.kept_frames() for s in memory.states] if memory is not None else [[]] * shape[0]
        target_run = rollout(self.student, self.memory, noise[:, :, split:], cond.context, self.sigmas,
                             chunk_frames=chunk, context_mask=cond.context_mask,
                             frame_cond=cond.frames(slice(split, frames)), exit_step=draws.exit_step,
                             grad_from_chunk=0 if with_grad else None, generator=gens, memory=memory)
        history = history_run.video if history_run is not None else noise[:, :, :0]
        return history, target_run.video, memory_frames

    def micro_step(self, batch: dict[str, Any], draws: StepDraws, seeds: list[int], generator_step: bool,
                   scale: float) -> dict[str, torch.Tensor]:
        """Rollout, DMD loss (generator steps only) and critic loss for one micro-batch; backward both."""
        h, teacher = self.hparams, self.teacher_config
        cond = batch_condition(batch)
        latents = batch["latents"]
        needed = draws.num_chunks * h.chunk_frames
        if cond.frame_cond is not None and cond.frame_cond.shape[1] < needed:
            raise ValueError(
                f"rollout of {needed} frames needs a per-frame condition that long; the data gives "
                f"{cond.frame_cond.shape[1]} (raise the clip length or lower rollout.max_chunks)"
            )
        with torch.enable_grad() if generator_step else torch.no_grad():
            history, target, memory_frames = self.student_rollout(cond, tuple(latents.shape), draws, seeds,
                                                                  generator_step)
        frames = self.context_frames(history.shape[2], memory_frames)
        history_cond = cond.frames(slice(0, history.shape[2]))
        target_cond = cond.frames(slice(history.shape[2], history.shape[2] + target.shape[2]))
        sequence = build_context_sequence(
            history.detach(),
            frames,
            target.detach(),
            history_cond=history_cond,
            target_cond=target_cond,
            layout=self.context_layout,
            context_timestep=teacher.context_timestep,
        )
        gens = [torch.Generator().manual_seed(s + 1) for s in seeds]
        logs: dict[str, torch.Tensor] = {}
        if generator_step:
            sigma = torch.stack([sample_sigmas(1, g, h.shift)[0] for g in gens]).to(self.device)
            noisy = add_noise(target.detach(), randn(target.shape, gens).to(target), sigma)
            with torch.no_grad():
                real_v = guided(
                    partial(sequence.velocity, self.teacher),
                    cond.context,
                    teacher.guidance_scale,
                    cond.context_mask,
                    form=teacher.guidance_form,
                    negative=self.negative_prompt,
                )(noisy, sigma)
                fake_v = sequence.velocity(self.critic, noisy, sigma, cond.context, cond.context_mask)
            loss, diagnostics = dmd_loss(target, x0_from_velocity(noisy, real_v, sigma),
                                         x0_from_velocity(noisy, fake_v, sigma))
            check_finite(self.global_step, dmd_loss=loss)
            self.manual_backward(loss * scale)
            logs["train/dmd_loss"] = loss.detach().float()
            logs["train/dmd_grad_norm"] = diagnostics["grad_norm"].float()
        sigma_c = torch.stack([sample_sigmas(1, g, h.shift)[0] for g in gens]).to(self.device)
        eps = randn(target.shape, gens).to(target)
        pred = sequence.velocity(self.critic, add_noise(target.detach(), eps, sigma_c), sigma_c, cond.context,
                                 cond.context_mask)
        critic_loss = (pred.float() - velocity_target(target.detach(), eps).float()).square().mean()
        check_finite(self.global_step, critic_loss=critic_loss)
        self.manual_backward(critic_loss * scale)
        logs["train/critic_loss"] = critic_loss.detach()
        return logs

    # ------------------------------------------------------------------ Lightning hooks
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        h = self.optimization
        opt_g, opt_c = self.optimizers()
        batch_size = batch["latents"].shape[0]
        if batch_size % h.accumulate:
            raise ValueError(f"batch size {batch_size} is not divisible by accumulate={h.accumulate}")
        draws = self.draw(batch_size, batch.get("first_visit"))
        generator_step = int(self.critic_steps) % h.generator_every == 0
        opt_g.zero_grad(set_to_none=True)
        opt_c.zero_grad(set_to_none=True)
        micro = batch_size // h.accumulate
        rank_seeds = draws.seeds[self.global_rank * batch_size:(self.global_rank + 1) * batch_size]
        totals: dict[str, torch.Tensor] = {}
        for i in range(h.accumulate):
            rows = slice(i * micro, (i + 1) * micro)
            part = {k: (v[rows] if isinstance(v, (torch.Tensor, list)) else v) for k, v in batch.items()}
            last = i == h.accumulate - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.trainer.model, "no_sync") \
                else self.trainer.model.no_sync()
            with sync:
                logs = self.micro_step(part, draws, rank_seeds[rows], generator_step, 1.0 / h.accumulate)
            for key, value in logs.items():
                totals[key] = totals.get(key, 0) + value / h.accumulate
        if generator_step:
            self.clip_gradients(opt_g, gradient_clip_val=h.grad_clip, gradient_clip_algorithm="norm")
            opt_g.step()
            self.generator_steps += 1
            # the step count once this step is done, in the schedule's unit
            done = int(self.generator_steps) if h.schedule_unit == "generator" else int(self.critic_steps) + 1
            self.ema_rule.update(self.ema, self.student, done)
        self.clip_gradients(opt_c, gradient_clip_val=h.grad_clip, gradient_clip_algorithm="norm")
        opt_c.step()
        self.critic_steps += 1
        totals["train/rollout_chunks"] = torch.tensor(float(draws.num_chunks))
        totals["train/exit_step"] = torch.tensor(float(draws.exit_step))
        totals["train/generator_steps"] = self.generator_steps.float()
        self.log_dict(totals, prog_bar=False, batch_size=batch_size)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Self-rollout of whole held-out videos; revisit error against the model's own first visits."""
        video = self.generate_for(batch, seed=batch_idx)
        if "first_visit" in batch:
            self.revisit.update(video.float(), None, batch["first_visit"][:, :video.shape[2]])

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """``cf-fit test``: the validation measure on the test videos, so a checkpoint is scored alone."""
        self.validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self.log_revisit("val")

    def on_test_epoch_end(self) -> None:
        self.log_revisit("test")

    def log_revisit(self, split: str) -> None:
        """Log the epoch's revisit error, effective context and AUC under ``split/`` and start afresh."""
        if not self.revisit.update_count:
            return
        result = self.revisit.compute()
        edges = self.revisit.bucket_edges
        metrics = {
            f"{split}/effective_context": float(result["effective_context"]),
            f"{split}/revisit_auc": float(result["auc"]),
        }
        for lo, hi, error, control in zip(
            edges[:-1], edges[1:], result["error"].tolist(), result["control"].tolist()
        ):
            metrics[f"{split}/revisit_error/gap_{lo + 1}-{hi}"] = error
            metrics[f"{split}/revisit_control/gap_{lo + 1}-{hi}"] = control
        self.log_dict(metrics, sync_dist=False)
        self.revisit.reset()

    def generate_for(self, batch: dict[str, Any], seed: int = 0, policy: MemoryPolicy | None = None,
                     num_frames: int | None = None) -> torch.Tensor:
        """Generate as many whole chunks as the batch's conditions cover (its camera path and prompt)."""
        cond = batch_condition(batch)
        latents = batch["latents"]
        frames = num_frames or latents.shape[2]
        frames -= frames % self.hparams.chunk_frames
        cond = Condition(cond.context, cond.context_mask, cond.frames(slice(0, frames)))
        chunks = frames // self.hparams.chunk_frames
        return self.generate(cond, tuple(latents.shape), chunks, seed=seed, policy=policy).video

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy`` (FSDP2) every backbone is sharded block by block."""
        if self.device_mesh is not None:
            shard_backbones(self.device_mesh, [self.student, self.critic, self.teacher, self.ema])

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """``cf-fit predict``: stream one video from the EMA student (cf_lightning.inference.predict)."""
        from cf_lightning.inference.predict import predict_latents

        return predict_latents(self.ema, self.hparams, self.memory, batch)

    def configure_optimizers(self) -> list[dict[str, Any]]:
        optim = self.optimization
        generator = optim.generator_optimizer(self.student.parameters())
        critic = optim.critic_optimizer(self.critic.parameters())
        return [optimizer_config(generator, optim.generator_lr_scheduler),
                optimizer_config(critic, optim.critic_lr_scheduler)]

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Bring each scheduler to its optimizer's step count before the batch steps it (manual
        optimization steps no scheduler by itself); a resumed run catches up here as well."""
        generator, critic = self.trainer.optimizers
        steps = {id(generator): int(self.generator_steps), id(critic): int(self.critic_steps)}
        for config in self.trainer.lr_scheduler_configs:
            while config.scheduler.last_epoch < steps[id(config.scheduler.optimizer)]:
                config.scheduler.step()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["draw_generator"] = self._draw_generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "draw_generator" in checkpoint:
            self._draw_generator.set_state(checkpoint["draw_generator"])

    def ablation_hparams(self) -> dict[str, object]:
        return {
            **self.memory.ablation_hparams(),
            "teacher/context": self.teacher_config.context,
            "rollout/max_chunks": self.rollout_config.max_chunks,
            "rollout/target_chunks": self.rollout_config.target_chunks,
            "dmd/guidance": self.teacher_config.guidance_scale,
        }

    @torch.no_grad()
    def generate(self, cond: Condition, shape: tuple[int, ...], num_chunks: int, seed: int = 0,
                 policy: MemoryPolicy | None = None, use_ema: bool = True) -> RolloutResult:
        """A long video from the (EMA) student: ``num_chunks`` chunks, all denoising steps; video ``b``
        draws its noise from seed ``seed + b``. The result keeps the final memory for inspection."""
        chunk = self.hparams.chunk_frames
        gens = [torch.Generator().manual_seed(seed + b) for b in range(shape[0])]
        noise = randn((shape[0], shape[1], num_chunks * chunk, *shape[3:]), gens).to(self.device)
        return rollout(
            self.ema if use_ema else self.student,
            policy or self.memory,
            noise,
            cond.context,
            self.sigmas,
            chunk_frames=chunk,
            context_mask=cond.context_mask,
            frame_cond=cond.frame_cond,
            generator=gens,
        )
