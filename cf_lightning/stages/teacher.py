"""Stage 0: the flow-matching teacher, short or context-aware, with Error-Recycling Fine-Tuning.

A short teacher learns clips on their own. A context teacher learns to continue a video: its input
is ``[clean context | noisy target]``, the loss covers the target only, and the context is named in
the same words distillation uses (:data:`~cf_lightning.models.context.TeacherContext`): ``memory``
(what a memory policy over the clip's history keeps, as the student's memory will), ``last_n`` (the
last N frames) or ``none``. ERFT banks the model's own prediction errors and re-injects them into the
target and the recent context, so the teacher stays reliable when the history it is shown has drifted.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from cf_lightning.diffusion import (
    ErrorBank,
    ErrorInjection,
    add_noise,
    eps_from_velocity,
    flow_matching_loss,
    inject_errors,
    sample_sigmas,
    velocity_from_x0,
    x0_from_velocity,
)
from cf_lightning.ema import EMA
from cf_lightning.lora import inject_lora, lora_parameters, merge_lora
from cf_lightning.models import WanModel
from cf_lightning.models.attention import Backend
from cf_lightning.models.context import (
    ContextPositions,
    ContextSequence,
    ContextTimestep,
    TeacherContext,
    build_context_sequence,
    check_teacher_contexts,
    choose_context,
    context_layout,
)
from cf_lightning.rollout import randn
from cf_lightning.stages.common import (
    Condition,
    EMAAfterStep,
    batch_condition,
    build_backbone,
    check_finite,
    load_backbone_weights,
    optimizer_config,
)
from memory_policies import MemoryPolicy


def policy_context(policy: MemoryPolicy, history: torch.Tensor, chunk_frames: int) -> list[list[int]]:
    """Frames each video's memory would hold after streaming ``history`` chunk by chunk.

    Surprisal policies get per-frame mean latents as summaries (the teacher has no student keys
    during its own training); at distillation time the student's real memory decides instead.
    """
    frames = history.shape[2] - history.shape[2] % chunk_frames
    chosen = []
    for video in history[:, :, :frames]:
        state = policy.new_state(chunk_frames)
        summaries = video.float().mean(dim=(2, 3)).T if policy.needs_summaries() else None
        for start in range(0, frames, chunk_frames):
            policy.commit(state, None if summaries is None else summaries[start:start + chunk_frames])
        chosen.append(state.kept_frames())
    return chosen


class TeacherModule(EMAAfterStep):
    """Flow-matching training of the bidirectional Wan backbone, optionally in context mode.

    Args:
        backbone: named model config; ``latent_channels``/``text_dim``/``frame_cond_dim`` come from data.
        target_frames: latent frames the loss covers: a window placed after some history inside a
            longer data clip when there are contexts (the whole clip for a short teacher). Not the
            student's ``clip_frames``, which is the whole sequence its masked forward trains on.
        contexts: the teacher contexts to train with, one drawn uniformly per sample: ``memory``,
            ``last_n``, ``none`` (the words and type ``teacher.context`` of distillation uses).
        context_frames: N for ``last_n``. memory: the policy whose kept frames make ``memory`` contexts.
        context_positions: temporal layout of ``[context | target]``: ``student`` (where a student
            streaming with ``memory`` reads each frame; needs ``memory``), ``packed`` or ``absolute``.
        context_timestep: timestep of the clean context, ``zero`` or ``shared`` with the target (the
            reference code's teacher); distillation must score with the same setting.
        min_history_frames: targets start at least this many frames into the clip (with contexts), so
            every context is drawn from at least that much history.
        revisit_targets: fraction of steps whose target window is chosen at a revisit of a view first
            seen before the last N frames (needs ``first_visit`` in the batch, as the revisit world gives).
        erft: Error-Recycling Fine-Tuning probabilities (``None`` disables it).
        lora_rank: > 0 trains LoRA adapters on ``lora_targets`` only (fine-tuning a large teacher).
        init_from: backbone weights to start from (Lightning ``.ckpt`` or a Wan checkpoint).
        optimizer, lr_scheduler: the optimizer and its learning-rate schedule, stepped per optimizer step
            (``None``: constant rate).
    """

    def __init__(
        self,
        backbone: str = "tiny",
        backbone_overrides: dict[str, Any] | None = None,
        latent_channels: int = 16,
        text_dim: int = 32,
        frame_cond_dim: int = 0,
        chunk_frames: int = 2,
        target_frames: int = 8,
        contexts: list[TeacherContext] | None = None,
        context_frames: int = 8,
        memory: MemoryPolicy | None = None,
        context_positions: ContextPositions = "student",
        context_timestep: ContextTimestep = "zero",
        min_history_frames: int = 0,
        revisit_targets: float = 0.0,
        shift: float = 5.0,
        cfg_dropout: float = 0.1,
        erft: ErrorInjection | None = None,
        erft_bins: int = 50,
        erft_capacity: int = 500,
        lora_rank: int = 0,
        lora_alpha: float = 1.0,
        lora_targets: list[str] | None = None,
        init_from: str | None = None,
        ema_decay: float = 0.999,
        ema_start: int = 0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        attention_backend: Backend = "sdpa",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        modes = contexts or ["none"]
        check_teacher_contexts(modes)
        if "memory" in modes and memory is None:
            raise ValueError("teacher context 'memory' needs a memory policy (model.memory)")
        if target_frames % chunk_frames:
            raise ValueError(
                f"target_frames={target_frames} must be a multiple of chunk_frames={chunk_frames}"
            )
        self.contexts = modes
        self.layout = context_layout(
            "packed" if modes == ["none"] else context_positions, memory, chunk_frames
        )
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.memory = memory
        self.model = build_backbone(backbone, latent_channels, text_dim, frame_cond_dim, backbone_overrides,
                                    attention_backend, gradient_checkpointing)
        if init_from:
            load_backbone_weights(self.model, init_from)
        if lora_rank > 0:
            self.model.requires_grad_(False)
            inject_lora(
                self.model,
                lora_targets
                or ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "ffn.0", "ffn.2"],
                rank=lora_rank,
                alpha=lora_alpha,
            )
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.ema_rule = EMA(ema_decay, ema_start)
        self.x0_errors = ErrorBank(erft_bins, erft_capacity, shift) if erft else None
        self.noise_errors = ErrorBank(erft_bins, erft_capacity, shift) if erft else None
        self.erft = erft
        self._generator = torch.Generator()

    # ------------------------------------------------------------------ scoring
    def velocity(
        self,
        model: WanModel,
        sequence: ContextSequence,
        noisy_target: torch.Tensor,
        sigma: torch.Tensor,
        cond: Condition,
    ) -> torch.Tensor:
        """Velocity for the target part of ``[clean context | noisy target]`` at noise ``sigma [B]``."""
        return sequence.velocity(model, noisy_target, sigma, cond.context, cond.context_mask)

    def sequence(self, history: torch.Tensor, target: torch.Tensor, frames: list[list[int]],
                 cond: Condition) -> ContextSequence:
        hist_len = history.shape[2]
        return build_context_sequence(history, frames, target, history_cond=cond.frames(slice(0, hist_len)),
                                      target_cond=cond.frames(slice(hist_len, hist_len + target.shape[2])),
                                      layout=self.layout, context_timestep=self.hparams.context_timestep)

    # ------------------------------------------------------------------ training
    def _split(
        self,
        latents: torch.Tensor,
        generator: torch.Generator,
        first_visit: torch.Tensor | None = None,
        video_generators: list[torch.Generator] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        """Pick a target window in the clip and, per video, the context frames before it (video ``b``
        draws its context from ``video_generators[b]`` when given, else from ``generator``).

        With ``revisit_targets`` > 0 and ground truth in the batch, that fraction of steps picks a
        window that revisits views first seen before the recent context, so recall from distant
        context is trained often instead of rarely."""
        chunk, target_len = self.hparams.chunk_frames, self.hparams.target_frames
        total = latents.shape[2]
        if total < target_len:
            raise ValueError(f"clips have {total} latent frames, fewer than target_frames={target_len}")
        starts = list(range(0, total - target_len + 1, chunk))
        if self.contexts != ["none"]:
            starts = [s for s in starts if s > 0] or starts
            least = self.hparams.min_history_frames
            if least and not [s for s in starts if s >= least]:
                raise ValueError(
                    f"clips of {total} latent frames leave no target after min_history_frames={least} "
                    f"(target_frames={target_len}); use clips of >= {least + target_len} frames"
                )
            starts = [s for s in starts if s >= least]
        draw = float(torch.rand((), generator=generator))
        if first_visit is not None and draw < self.hparams.revisit_targets:
            starts = self._revisit_starts(first_visit, starts) or starts
        start = starts[int(torch.randint(len(starts), (1,), generator=generator))]
        history, target = latents[:, :, :start], latents[:, :, start:start + target_len]
        frames = []
        for b in range(latents.shape[0]):
            video_generator = generator if video_generators is None else video_generators[b]
            source = self.contexts[int(torch.randint(len(self.contexts), (1,), generator=video_generator))]
            frames.append(choose_context(source, start, self.hparams.context_frames,
                                         lambda b=b: self.kept_frames(history[b:b + 1])))
        return history, target, frames

    def kept_frames(self, history: torch.Tensor) -> list[int]:
        """The frames this teacher's memory policy keeps of one video's ``history`` (``memory`` contexts)."""
        assert self.memory is not None
        return policy_context(self.memory, history, self.hparams.chunk_frames)[0]

    def _revisit_starts(self, first_visit: torch.Tensor, starts: list[int]) -> list[int]:
        """Starts where most videos' targets revisit views first seen before the last-N context."""
        target_len, recent = self.hparams.target_frames, self.hparams.context_frames
        scores = []
        for start in starts:
            window = first_visit[:, start:start + target_len]
            distant = ((window >= 0) & (window < start - recent)).all(dim=1)
            scores.append(int(distant.sum()))
        best = max(scores, default=0)
        return [s for s, score in zip(starts, scores) if best > 0 and score == best]

    def video_generators(self, batch_size: int) -> list[torch.Generator]:
        """One generator per video of this rank's rows of the global batch, seeded from a stream every
        rank draws alike: a video's noise, noise level, text dropout and context mode then do not depend
        on how the global batch is split over ranks (two ranks equal one on the doubled batch)."""
        world = self.trainer.world_size if self._trainer is not None else 1
        seeds = torch.randint(0, 2**62, (batch_size * world,), generator=self._generator)
        mine = seeds[self.global_rank * batch_size:(self.global_rank + 1) * batch_size]
        return [torch.Generator().manual_seed(int(seed)) for seed in mine]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        latents = batch["latents"].float()
        gens = self.video_generators(latents.shape[0])
        cond = batch_condition(batch, self.hparams.cfg_dropout, gens)
        history, target, frames = self._split(latents, self._generator, batch.get("first_visit"), gens)
        sigma = torch.cat([sample_sigmas(1, g, shift=self.hparams.shift, max_sigma=1.0) for g in gens]).to(
            self.device
        )
        noise = randn(target.shape, gens).to(target)
        clean_target = target
        if self.erft is not None:
            assert self.x0_errors is not None and self.noise_errors is not None
            motion_len = min(self.hparams.chunk_frames * 2, history.shape[2])
            motion = history[:, :, history.shape[2] - motion_len:] if motion_len else None
            injected = inject_errors(target, motion, noise, sigma.cpu(), self.x0_errors, self.noise_errors,
                                     self.erft, self._generator)
            target, noise = injected.x0, injected.noise
            if motion is not None and injected.motion is not None:
                history = torch.cat([history[:, :, :history.shape[2] - motion_len], injected.motion], dim=2)
        sequence = self.sequence(history, target, frames, cond)
        noisy = add_noise(target, noise, sigma)
        pred = self.velocity(self.model, sequence, noisy, sigma, cond)
        # The velocity towards the *clean* target: eps - x0 without ERFT, and still the way back to
        # the clean target when ERFT perturbed the inputs (sigma >= 0.02 keeps the division tame).
        loss = (pred.float() - velocity_from_x0(noisy, clean_target, sigma).float()).square().mean()
        if self.erft is not None:
            self._bank_errors(pred.detach(), noisy, clean_target, noise, sigma)
        check_finite(self.global_step, loss=loss)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/context_frames", float(sequence.context_frames))
        return loss

    def _bank_errors(self, pred: torch.Tensor, noisy: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
                     sigma: torch.Tensor) -> None:
        assert self.x0_errors is not None and self.noise_errors is not None
        self.x0_errors.add(sigma.cpu(), (x0_from_velocity(noisy, pred, sigma) - x0).cpu())
        self.noise_errors.add(sigma.cpu(), (eps_from_velocity(noisy, pred, sigma) - noise).cpu())

    def setup(self, stage: str) -> None:
        # Seeded from seed_everything alike on every rank: ranks draw their videos' seeds from their own
        # rows of the global batch (video_generators); a resumed run overwrites this state in
        # on_load_checkpoint.
        self._generator.manual_seed(torch.initial_seed())

    def held_out_loss(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Flow-matching loss of the EMA teacher at sigma 0.5, with the window, contexts and noise
        fixed by the batch index, so the number only moves when the model does."""
        latents = batch["latents"].float()
        cond = batch_condition(batch)
        generator = torch.Generator().manual_seed(batch_idx)
        history, target, frames = self._split(latents, generator)
        sigma = torch.full((target.shape[0],), 0.5, device=self.device)
        noise = torch.randn(target.shape, generator=generator).to(target)
        pred = self.velocity(
            self.ema,
            self.sequence(history, target, frames, cond),
            add_noise(target, noise, sigma),
            sigma,
            cond,
        )
        return flow_matching_loss(pred, target, noise)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("val/loss", self.held_out_loss(batch, batch_idx), prog_bar=True,
                 batch_size=len(batch["latents"]))

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("test/loss", self.held_out_loss(batch, batch_idx), batch_size=len(batch["latents"]))

    def configure_optimizers(self) -> dict[str, Any]:
        params = lora_parameters(self.model) if self.hparams.lora_rank > 0 else self.model.parameters()
        return optimizer_config(self.optimizer(params), self.lr_scheduler)

    # ------------------------------------------------------------------ checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.x0_errors is not None and self.noise_errors is not None:
            checkpoint["erft"] = {"x0": self.x0_errors.state_dict(), "noise": self.noise_errors.state_dict()}
        checkpoint["teacher_generator"] = self._generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.x0_errors is not None and self.noise_errors is not None:
            if "erft" not in checkpoint:
                raise KeyError("checkpoint has no 'erft' error buffers but this teacher trains with ERFT")
            self.x0_errors.load_state_dict(checkpoint["erft"]["x0"])
            self.noise_errors.load_state_dict(checkpoint["erft"]["noise"])
        if "teacher_generator" in checkpoint:
            self._generator.set_state(checkpoint["teacher_generator"])

    def merged_backbone(self, use_ema: bool = True) -> WanModel:
        """A plain backbone with LoRA folded in, for distillation or export."""
        return merge_lora(copy.deepcopy(self.ema if use_ema else self.model))
