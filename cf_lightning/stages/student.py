"""Stage 1: initialise the causal few-step student.

Both objectives train the same thing: from a clean history the memory policy keeps, predict a
chunk's clean latents from its noisy version at one of the student's few denoising levels. They
differ in where the (noisy, clean) pairs come from:

- ``teacher_forcing``: data latents, noised on the straight flow path (diffusion forcing);
- ``ode``: the teacher's own ODE trajectories (CausVid-style ODE regression): noise is integrated by
  the teacher with CFG, and the student regresses the trajectory's endpoint from its points at the
  student's denoising levels, so its few steps follow the teacher's deterministic map. The trajectories
  come from shards written once by ``cf-data trajectories`` (batch keys ``ode_trajectory`` and
  ``ode_sigmas``, no teacher needed here), or, as the alternative, are integrated on the fly from
  ``teacher.init_from`` at ``2 * ode_steps`` teacher forwards per training step. Shards of a context
  teacher integrated chunk by chunk (``ode_endpoint``) keep the data latents the teacher saw: the
  student is forced with that history and regresses the teacher's endpoint, so it learns what the
  teacher does with the history, e.g. restore a view the memory holds at a return.

One masked full-sequence forward over ``[clean | noisy]`` covers every chunk at once and sees exactly
what streaming will (``teacher_forcing_mask``). A policy that admits frames by surprisal (slow memory
of scene changes) decides here from the clean latents themselves, one mask per video: the model's keys,
which streaming uses, do not exist before the forward, and a summary-free stand-in (uniform admission)
would never show the student a frame from before its recent past, so it would not learn to recall one.

Short-window DMD (Self-Forcing) is the :class:`ContextForcingModule` with short rollouts and
``teacher.context: last_n``.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from cf_lightning.diffusion import (
    add_noise,
    denoising_sigmas,
    guided_velocity,
    ode_trajectory,
    timestep_from_sigma,
    x0_from_velocity,
)
from cf_lightning.ema import EMA
from cf_lightning.models import WanModel, latent_summaries, teacher_forcing_mask
from cf_lightning.models.attention import Backend
from cf_lightning.stages.common import (
    Condition,
    EMAAfterStep,
    TeacherWeights,
    as_group,
    batch_condition,
    build_backbone,
    check_finite,
    load_backbone_weights,
    optimizer_config,
    record_groups,
)
from memory_policies import MemoryPolicy, SlowFast

Objective = Literal["teacher_forcing", "ode"]


class StudentModule(EMAAfterStep):
    """Causal student init by teacher forcing or ODE regression (see module docstring).

    Args:
        clip_frames: latent frames of one training sequence, all of them scored: the masked forward
            streams the whole clip chunk by chunk. (The teacher stage's ``target_frames`` differs: the
            window its loss covers after some context, inside a longer clip.)
        init_from: the student's starting weights (``.ckpt`` or Wan checkpoint).

    Args (ODE regression):
        teacher: the teacher that integrates trajectories on the fly: ``init_from`` (``.ckpt`` or Wan),
            and ``backbone`` / ``backbone_overrides`` when its config differs from the student's; leave
            ``teacher.init_from`` unset to train from ``cf-data trajectories`` shards.
        ode_steps, guidance_scale: the on-the-fly integration (shards record their own).
        denoising_steps, shift: the student's levels; stored trajectories must have been taken there.

    Args (optimisation):
        optimizer: the optimizer of the student's weights.
        lr_scheduler: its learning-rate schedule, stepped per optimizer step (e.g.
            :class:`cf_lightning.lr_schedules.WarmupCosineLR`); ``None`` keeps the rate constant.
    """

    def __init__(
        self,
        backbone: str = "tiny",
        backbone_overrides: dict[str, Any] | None = None,
        latent_channels: int = 16,
        text_dim: int = 32,
        frame_cond_dim: int = 0,
        objective: Objective = "teacher_forcing",
        teacher: TeacherWeights = TeacherWeights(),
        init_from: str | None = None,
        memory: MemoryPolicy | None = None,
        chunk_frames: int = 2,
        clip_frames: int = 8,
        denoising_steps: int = 4,
        shift: float = 5.0,
        ode_steps: int = 20,
        guidance_scale: float = 3.0,
        cfg_dropout: float = 0.1,
        ema_decay: float = 0.999,
        ema_start: int = 0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        attention_backend: Backend = "sdpa",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        teacher = as_group(TeacherWeights, teacher, "teacher")
        record_groups(self, teacher=teacher)
        if objective not in ("teacher_forcing", "ode"):
            raise ValueError(f"unknown objective {objective!r}; allowed: teacher_forcing, ode")
        if clip_frames % chunk_frames:
            raise ValueError(f"clip_frames={clip_frames} must be a multiple of chunk_frames={chunk_frames}")
        self.memory: MemoryPolicy = memory if memory is not None else SlowFast()
        self.memory.new_state(chunk_frames)
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        shapes = (latent_channels, text_dim, frame_cond_dim)
        self.model = build_backbone(
            backbone, *shapes, backbone_overrides, attention_backend, gradient_checkpointing
        )
        if init_from:
            load_backbone_weights(self.model, init_from)
        self.teacher: WanModel | None = None
        if objective == "ode" and teacher.init_from is not None:
            self.teacher = teacher.build(backbone, backbone_overrides, *shapes, attention_backend)
            load_backbone_weights(self.teacher, teacher.init_from)
            self.teacher.requires_grad_(False).eval()
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.ema_rule = EMA(ema_decay, ema_start)
        self.register_buffer("sigmas", denoising_sigmas(denoising_steps, shift), persistent=False)
        self._generator = torch.Generator()

    def setup(self, stage: str) -> None:
        self._generator.manual_seed(torch.initial_seed() + self.global_rank)

    @torch.no_grad()
    def ode_pairs(self, batch: dict[str, Any], cond: Condition
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher trajectories of the clip: the clean history the student is forced with, the endpoint
        ``[B, C, F, H, W]`` and the states at every student level ``[B, S, C, F, H, W]``, read from the
        batch (``cf-data trajectories`` shards) or integrated here. The history is the endpoint itself
        unless the shards hold chunk-by-chunk trajectories, whose history is the data the teacher saw."""
        h = self.hparams
        frames = h.clip_frames
        if "ode_trajectory" in batch:
            if self.teacher is not None:
                raise ValueError(
                    f"the batch carries stored teacher trajectories ('ode_trajectory') and "
                    f"model.teacher.init_from={h.teacher['init_from']!r} is set too; unset it to train from "
                    "the shards, or train on shards without trajectories to integrate the teacher here"
                )
            self.check_levels(batch)
            states = batch["ode_trajectory"].float()[:, :, :, :frames]
            if "ode_endpoint" in batch:
                return self.clip(batch), batch["ode_endpoint"].float()[:, :, :frames], states
            endpoint = batch["latents"].float()[:, :, :frames]
            return endpoint, endpoint, states
        if self.teacher is None:
            raise ValueError(f"objective 'ode' needs teacher trajectories: the batch has no 'ode_trajectory' "
                             f"(keys: {sorted(batch)}) and model.teacher.init_from is unset; read shards "
                             "written by `cf-data trajectories`, or set model.teacher.init_from to integrate "
                             "on the fly")
        shape = batch["latents"][:, :, :frames].shape
        noise = torch.randn(shape, generator=self._generator).to(self.device)
        velocity = guided_velocity(
            self.teacher, cond.context, cond.context_mask, cond.frame_cond, h.guidance_scale
        )
        endpoint, states = ode_trajectory(velocity, noise, self.sigmas.cpu(), h.ode_steps, h.shift)
        return endpoint, endpoint, states

    def check_levels(self, batch: dict[str, Any]) -> None:
        """Stored trajectory states must sit at this student's levels, or it would learn the wrong steps."""
        h = self.hparams
        expected = self.sigmas.cpu()
        for row, stored in enumerate(batch["ode_sigmas"].float().cpu()):
            if stored.shape != expected.shape or not torch.allclose(stored, expected, rtol=0.0, atol=1e-6):
                key = batch["key"][row] if "key" in batch else row
                raise ValueError(
                    f"sample {key!r} stores teacher trajectories at sigmas {stored.tolist()}, but this "
                    f"student's levels are {expected.tolist()} (denoising_steps={h.denoising_steps}, "
                    f"shift={h.shift}); rewrite the shards with `cf-data trajectories --denoising_steps "
                    f"{h.denoising_steps} --shift {h.shift}`, or set model.denoising_steps and model.shift "
                    f"to the shards' values"
                )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        h = self.hparams
        latents = self.clip(batch)
        frames = h.clip_frames
        cond = batch_condition(batch, h.cfg_dropout, self._generator)
        cond = Condition(cond.context, cond.context_mask, cond.frames(slice(0, frames)))
        level, sigma = self.draw_levels(latents.shape[0], self._generator)
        if h.objective == "ode":
            history, clean, trajectory = self.ode_pairs(batch, cond)
            index = level.repeat_interleave(h.chunk_frames, dim=1).to(self.device)
            index = index[:, None, None, :, None, None].expand(-1, 1, *trajectory.shape[2:])
            noisy = trajectory.gather(1, index).squeeze(1)
        else:
            noise = torch.randn(latents.shape, generator=self._generator).to(latents)
            history, clean, noisy = latents, latents, add_noise(latents, noise, sigma)
        pred_x0 = self.causal_x0(self.model, history, noisy, sigma, cond)
        loss = (pred_x0.float() - clean.float()).square().mean()
        check_finite(self.global_step, loss=loss)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def clip(self, batch: dict[str, Any]) -> torch.Tensor:
        """The first ``clip_frames`` latent frames of the batch, refused when the clips are shorter."""
        frames = self.hparams.clip_frames
        latents = batch["latents"].float()[:, :, :frames]
        if latents.shape[2] < frames:
            raise ValueError(f"clips have {latents.shape[2]} latent frames, fewer than clip_frames={frames}")
        return latents

    def draw_levels(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One of the student's denoising levels per chunk: indices ``[B, chunks]`` and per-frame sigmas."""
        h = self.hparams
        chunks = h.clip_frames // h.chunk_frames
        level = torch.randint(len(self.sigmas), (batch_size, chunks), generator=generator)
        return level, self.sigmas.cpu()[level].repeat_interleave(h.chunk_frames, dim=1).to(self.device)

    def held_out_loss(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """x0 error of the EMA student on held-out clips under teacher forcing (data latents noised at
        the student's levels, whatever the training objective): noise and levels follow the batch index,
        so the number only moves when the model does."""
        latents = self.clip(batch)
        cond = batch_condition(batch)
        cond = Condition(cond.context, cond.context_mask, cond.frames(slice(0, latents.shape[2])))
        generator = torch.Generator().manual_seed(batch_idx)
        _, sigma = self.draw_levels(latents.shape[0], generator)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        pred_x0 = self.causal_x0(self.ema, latents, add_noise(latents, noise, sigma), sigma, cond)
        return (pred_x0.float() - latents).square().mean()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("val/loss", self.held_out_loss(batch, batch_idx), prog_bar=True,
                 batch_size=len(batch["latents"]))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("test/loss", self.held_out_loss(batch, batch_idx), batch_size=len(batch["latents"]))

    def causal_x0(self, model: WanModel, clean: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor,
                  cond: Condition) -> torch.Tensor:
        """x0 of every noisy chunk given the clean history the memory keeps (one masked forward)."""
        frames = clean.shape[2]
        mask = self.memory_mask(clean).to(clean.device)
        steps = torch.cat([torch.zeros_like(sigma), timestep_from_sigma(sigma)], dim=1)
        positions = torch.cat([torch.arange(frames)] * 2).to(clean.device)
        frame_cond = None if cond.frame_cond is None else torch.cat([cond.frame_cond] * 2, dim=1)
        out = model(torch.cat([clean, noisy], dim=2), steps, cond.context, context_mask=cond.context_mask,
                    frame_cond=frame_cond, positions=positions, frame_mask=mask)
        return x0_from_velocity(noisy, out[:, :, frames:], sigma)

    def memory_mask(self, clean: torch.Tensor) -> torch.Tensor:
        """The teacher-forcing mask, ``[2F, 2F]`` for a summary-free policy (the same for every video), or
        ``[B, 2F, 2F]`` from each video's clean latents (one flattened frame per summary) for a policy
        that needs summaries."""
        frames, chunk = clean.shape[2], self.hparams.chunk_frames
        if not self.memory.needs_summaries():
            return teacher_forcing_mask(self.memory, frames, chunk)
        return torch.stack([teacher_forcing_mask(self.memory, frames, chunk, video)
                            for video in latent_summaries(clean)])

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """``cf-fit predict``: stream one video from the EMA student (cf_lightning.inference.predict)."""
        from cf_lightning.inference.predict import predict_latents

        return predict_latents(self.ema, self.hparams, self.memory, batch)

    def configure_optimizers(self) -> dict[str, Any]:
        return optimizer_config(self.optimizer(self.model.parameters()), self.lr_scheduler)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["student_generator"] = self._generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "student_generator" in checkpoint:
            self._generator.set_state(checkpoint["student_generator"])
