"""Assemble ``[clean context | noisy target]`` sequences for the context teacher and the critic.

What history a teacher sees has one vocabulary in every stage (:data:`TeacherContext`): ``memory`` (the
frames a memory policy holds), ``last_n`` (the last N frames) or ``none``; :func:`choose_context` turns
one of them into frame indices. The context is a per-video list of history frames, so videos of one
batch may carry different numbers of context frames. They are left-padded to a common length and the
padding is masked out as keys, so the target always sits at the end of the sequence at the same index.

Temporal positions follow a layout (:func:`context_layout`). ``student`` (the default) places each
context frame where the student read it from its memory (:meth:`MemoryPolicy.context_positions`, the
same function student streaming uses), so teacher and critic score the student's context in the
student's own layout. ``packed`` (context at 0..n-1, target after it) is the layout the earlier
context teachers were trained in, kept to compare the two (docs/results.md); ``absolute`` uses
true frame indices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import nn

from cf_lightning.diffusion.flow import timestep_from_sigma
from memory_policies import MemoryPolicy

TeacherContext = Literal["memory", "last_n", "none"]
TEACHER_CONTEXTS: tuple[str, ...] = ("memory", "last_n", "none")
ContextPositions = Literal["student", "packed", "absolute"]
ContextTimestep = Literal["zero", "shared"]
CONTEXT_TIMESTEPS: tuple[str, ...] = ("zero", "shared")
CONTEXT_POSITIONS: tuple[str, ...] = ("student", "packed", "absolute")
# What checkpoints written before the student layout existed saved for the packed layout; accepted so
# they still load (resume, export) and score as they were trained.
LEGACY_PACKED = "bounded"
# (context frames, history length, target length) -> positions of context + target
PositionFn = Callable[[list[int], int, int], list[int]]


def packed_positions(frames: list[int], history_frames: int, target_frames: int) -> list[int]:
    """Context at 0..n-1 and the target right after it (the earlier teachers' layout)."""
    return list(range(len(frames) + target_frames))


def absolute_positions(frames: list[int], history_frames: int, target_frames: int) -> list[int]:
    """True frame indices: the context where it happened, the target after the whole history."""
    return frames + list(range(history_frames, history_frames + target_frames))


def context_layout(
    mode: ContextPositions, policy: MemoryPolicy | None = None, chunk_frames: int = 1
) -> PositionFn:
    """The position function of layout ``mode``; ``student`` follows ``policy`` read in ``chunk_frames``
    chunks."""
    if mode in ("packed", LEGACY_PACKED):
        return packed_positions
    if mode == "absolute":
        return absolute_positions
    if mode != "student":
        raise ValueError(f"unknown context positions {mode!r}; allowed: {', '.join(CONTEXT_POSITIONS)}")
    if policy is None:
        raise ValueError("context positions 'student' follow a memory policy's layout, but none was given; "
                         "set the memory policy or use 'packed'")
    return partial(policy.context_positions, chunk_frames=chunk_frames)


@dataclass(frozen=True)
class ContextSequence:
    x: torch.Tensor  # [B, C, n + T, H, W]: context (left-padded) then target
    positions: torch.Tensor  # [B, n + T] temporal positions
    frame_mask: torch.Tensor | None  # [B, n + T, n + T] True = may attend; None when nothing is padded
    frame_cond: torch.Tensor | None  # [B, n + T, k] per-frame condition, when given
    context_frames: int  # n: padded context length; the target is x[:, :, n:]
    context_timestep: ContextTimestep = "zero"

    def velocity(
        self,
        model: nn.Module,
        noisy_target: torch.Tensor,
        sigma: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``model``'s velocity for the target when it sits, at noise ``sigma [B]``, after the clean context,
        which is how teachers and critics score a sample given its history.

        The clean context's timestep is 0 (``zero``, what a clean frame is) or the target's
        (``shared``: one timestep for the whole sequence, as the reference code and its released
        teacher do); a model must be scored the way it was trained."""
        x = self.x.clone()
        x[:, :, self.context_frames:] = noisy_target
        steps = torch.zeros(x.shape[0], x.shape[2], device=x.device)
        first = 0 if self.context_timestep == "shared" else self.context_frames
        steps[:, first:] = timestep_from_sigma(sigma)[:, None]
        out = model(x, steps, context, context_mask=context_mask, frame_cond=self.frame_cond,
                    positions=self.positions, frame_mask=self.frame_mask)
        return out[:, :, self.context_frames:]

    @property
    def target_mask(self) -> torch.Tensor:
        """``[B, n + T]``: True on the target frames (where losses apply)."""
        batch, length = self.positions.shape
        mask = torch.zeros(batch, length, dtype=torch.bool, device=self.positions.device)
        mask[:, self.context_frames:] = True
        return mask


def last_frames(history_frames: int, count: int, batch: int) -> list[list[int]]:
    """The reference context: the ``count`` frames right before the target, for every video."""
    return [list(range(max(0, history_frames - count), history_frames))] * batch


def check_teacher_contexts(values: list[str], name: str = "teacher context") -> None:
    """Refuse a value that is not a :data:`TeacherContext`, naming ``name``, the value and the words."""
    for value in values:
        if value not in TEACHER_CONTEXTS:
            raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(TEACHER_CONTEXTS)}")


def choose_context(source: TeacherContext, history_frames: int, last_n: int,
                   memory_frames: Callable[[], list[int]]) -> list[int]:
    """One video's context frames before a target that follows ``history_frames`` frames of history.

    ``source`` names them (:data:`TeacherContext`); ``memory_frames`` is called only for ``memory``,
    since working out what a policy holds may cost a pass over the history. No history, no context.
    """
    check_teacher_contexts([source])
    if source == "none" or history_frames == 0:
        return []
    if source == "last_n":
        return last_frames(history_frames, last_n, 1)[0]
    return memory_frames()


def build_context_sequence(history: torch.Tensor, frames: list[list[int]], target: torch.Tensor, *,
                           history_cond: torch.Tensor | None = None, target_cond: torch.Tensor | None = None,
                           layout: PositionFn = packed_positions,
                           context_timestep: ContextTimestep = "zero") -> ContextSequence:
    """Gather the chosen history frames of each video in front of its target.

    ``history``: ``[B, C, Fh, H, W]`` clean frames; ``frames[b]``: sorted indices into it;
    ``target``: ``[B, C, T, H, W]`` (noisy) target that follows frame ``Fh - 1``.
    ``layout`` gives each video's temporal positions (see :func:`context_layout`);
    ``context_timestep`` how :meth:`ContextSequence.velocity` times the context (``zero`` | ``shared``).
    """
    batch, channels, history_len, height, width = history.shape
    if context_timestep not in CONTEXT_TIMESTEPS:
        raise ValueError(
            f"unknown context timestep {context_timestep!r}; allowed: {', '.join(CONTEXT_TIMESTEPS)}"
        )
    if len(frames) != batch:
        raise ValueError(f"frames has {len(frames)} lists for a batch of {batch}")
    if target.shape[:2] != history.shape[:2] or target.shape[3:] != history.shape[3:]:
        raise ValueError(f"target {tuple(target.shape)} does not match history {tuple(history.shape)}")
    for chosen in frames:
        if chosen and (min(chosen) < 0 or max(chosen) >= history_len):
            raise ValueError(f"context frames {chosen} outside a history of {history_len} frames")
    target_len = target.shape[2]
    width_ctx = max((len(chosen) for chosen in frames), default=0)
    length = width_ctx + target_len
    device = history.device
    x = history.new_zeros(batch, channels, length, height, width)
    x[:, :, width_ctx:] = target
    pos = torch.zeros(batch, length, dtype=torch.long)
    valid = torch.ones(batch, length, dtype=torch.bool)
    cond = None
    if history_cond is not None and target_cond is not None:
        cond = history_cond.new_zeros(batch, length, history_cond.shape[-1])
        cond[:, width_ctx:] = target_cond
    for b, chosen in enumerate(frames):
        pad = width_ctx - len(chosen)
        valid[b, :pad] = False
        index = torch.tensor(chosen, dtype=torch.long, device=device)
        x[b, :, pad:width_ctx] = history[b, :, index]
        if cond is not None and history_cond is not None:
            cond[b, pad:width_ctx] = history_cond[b, index]
        pos[b, pad:] = torch.tensor(layout(list(chosen), history_len, target_len), dtype=torch.long)
    mask = None
    if not bool(valid.all()):
        keys = valid[:, None, :].expand(batch, length, length).clone()
        keys |= torch.eye(length, dtype=torch.bool)[None]  # padded queries see themselves: no empty rows
        mask = keys.to(device)
    return ContextSequence(x, pos.to(device), mask, cond, width_ctx, context_timestep)
