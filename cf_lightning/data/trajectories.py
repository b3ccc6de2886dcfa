"""Teacher ODE trajectories written as shards: the data of ODE-regression student init (no Lightning here).

Integrating the teacher costs ``2 * ode_steps`` forwards per sample. Doing it once here, instead of in
every training step, makes ODE regression as cheap to train as teacher forcing, lets student runs share
the pairs, and frees the training job from holding the teacher. Each written sample keeps its source's
prompt, text embeddings and per-frame truth (so existing readers and conditions work unchanged),
replaces ``latents`` by the teacher's endpoint, and adds the teacher's states at the student's
denoising levels (``ode_trajectory``) with the levels, settings and noise seed in ``json["ode"]``.

A context teacher is integrated chunk by chunk instead (:class:`ChunkContext`): each chunk starts from
its own noise after the clip's data frames before it, as the teacher's context (``memory`` or
``last_n``) picks them. That is how such a teacher generates, and it makes the student's init learn
what the teacher does at a return to an earlier view: a context teacher restores the view its context
holds, a short teacher cannot. Such samples keep the data ``latents`` (the history the student is
forced with, as the teacher saw it) and store the teacher's endpoint as ``ode_endpoint``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from cf_lightning.data.prompts import load_negative_prompt
from cf_lightning.data.shards import collate_samples, encode_sample, open_shard_writer, per_frame_truth
from cf_lightning.diffusion import denoising_sigmas, guided, guided_velocity, ode_trajectory, sampling_sigmas
from cf_lightning.models import WanModel, latent_summaries
from cf_lightning.models.context import (
    CONTEXT_POSITIONS,
    ContextPositions,
    build_context_sequence,
    choose_context,
    context_layout,
)
from cf_lightning.text import TextEncoder
from memory_policies import MemoryPolicy, canonical_name

__all__ = ["ChunkContext", "OdeSettings", "chunkwise_trajectory", "sample_noise", "write_trajectories"]


@dataclass(frozen=True)
class OdeSettings:
    """How the teacher is integrated and where its states are kept (recorded in every sample)."""

    denoising_steps: int
    shift: float
    ode_steps: int
    guidance_scale: float
    noise_seed: int
    teacher: str
    negative_prompt: str | None = None  # embedding file (cf-data prompts) for the unconditional branch

    def __post_init__(self) -> None:
        """Bad steps or shift fail here, before the teacher loads (the schedules name the bad value)."""
        denoising_sigmas(self.denoising_steps, self.shift)
        sampling_sigmas(self.ode_steps, self.shift)

    @property
    def levels(self) -> Tensor:
        """The student's denoising sigmas: the states a StudentModule with these settings regresses from."""
        return denoising_sigmas(self.denoising_steps, self.shift)

    def describe(self, sample_seed: int) -> dict[str, Any]:
        return {
            "sigmas": self.levels.tolist(),
            "denoising_steps": self.denoising_steps,
            "shift": self.shift,
            "ode_steps": self.ode_steps,
            "guidance_scale": self.guidance_scale,
            "noise_seed": sample_seed,
            "teacher": self.teacher,
            "negative_prompt": self.negative_prompt,
        }


@dataclass(frozen=True)
class ChunkContext:
    """What a context teacher sees of the clip's data frames when it integrates one chunk.

    ``source`` is ``memory`` (the frames ``memory`` holds once the frames before the chunk were
    committed, with surprisal decided from the data latents themselves, as the student's teacher-forcing
    init decides it) or ``last_n`` (the ``context_frames`` frames right before the chunk: a short
    teacher). ``positions`` is the layout the teacher was trained in.
    """

    source: str
    chunk_frames: int
    context_frames: int = 8
    memory: MemoryPolicy | None = None
    positions: ContextPositions = "packed"

    def __post_init__(self) -> None:
        if self.source not in ("memory", "last_n"):
            raise ValueError(f"unknown chunk context {self.source!r}; allowed: memory, last_n")
        if self.source == "memory" and self.memory is None:
            raise ValueError("chunk context 'memory' needs a memory policy (--memory)")
        if self.chunk_frames < 1 or self.context_frames < 1:
            raise ValueError(
                f"chunk_frames and context_frames must be >= 1, got {self.chunk_frames} and "
                f"{self.context_frames}"
            )
        if self.positions not in CONTEXT_POSITIONS:
            raise ValueError(
                f"unknown context positions {self.positions!r}; allowed: {', '.join(CONTEXT_POSITIONS)}"
            )
        if self.memory is not None:
            self.memory.new_state(self.chunk_frames)  # a policy that cannot stream these chunks fails here

    def kept(self, clean: Tensor) -> list[list[list[int]]]:
        """Per video, per chunk: the history frames the teacher sees before that chunk."""
        batch, _, frames = clean.shape[:3]
        chunk = self.chunk_frames
        if frames % chunk:
            raise ValueError(f"clips of {frames} latent frames do not split into chunks of {chunk}")
        starts = range(0, frames, chunk)
        if self.source == "last_n":
            chosen = [choose_context("last_n", start, self.context_frames, list) for start in starts]
            return [chosen] * batch
        assert self.memory is not None
        out = []
        for video in latent_summaries(clean):
            mask = self.memory.frame_mask(frames, chunk, video if self.memory.needs_summaries() else None)
            out.append([[j for j in range(start) if mask[start, j]] for start in starts])
        return out

    def describe(self) -> dict[str, Any]:
        """The settings as stored in each sample's ``json["ode"]["chunk_context"]``."""
        memory = None
        if self.memory is not None:
            settings = {k: v for k, v in vars(self.memory).items()
                        if not k.startswith("_") and isinstance(v, (bool, int, float, str))}
            memory = {"name": canonical_name(self.memory), **settings}
        return {
            "source": self.source,
            "chunk_frames": self.chunk_frames,
            "context_frames": self.context_frames,
            "positions": self.positions,
            "memory": memory,
        }


def chunkwise_trajectory(
    teacher: WanModel,
    clean: Tensor,
    noise: Tensor,
    text: Tensor,
    text_mask: Tensor | None,
    frame_cond: Tensor | None,
    settings: OdeSettings,
    context: ChunkContext,
    negative: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The teacher's ODE for every chunk of ``clean [B, C, F, h, w]`` after the data frames before it.

    Chunk ``c`` starts from ``noise[:, :, c]`` and sees, as clean context, the frames of ``clean`` that
    ``context`` picks; chunks do not see each other's endpoints, so each is what the teacher makes
    after that history. Returns the endpoints ``[B, C, F, h, w]`` and the states at the student's
    levels ``[B, S, C, F, h, w]``.
    """
    chunk = context.chunk_frames
    kept = context.kept(clean)
    layout = context_layout(context.positions, context.memory, chunk)
    endpoints, states = [], []
    for index, start in enumerate(range(0, clean.shape[2], chunk)):
        part = slice(start, start + chunk)
        sequence = build_context_sequence(
            clean[:, :, :start],
            [video[index] for video in kept],
            noise[:, :, part],
            history_cond=None if frame_cond is None else frame_cond[:, :start],
            target_cond=None if frame_cond is None else frame_cond[:, part],
            layout=layout,
        )
        velocity = guided(
            partial(sequence.velocity, teacher), text, settings.guidance_scale, text_mask, negative=negative
        )
        endpoint, levels = ode_trajectory(velocity, noise[:, :, part], settings.levels, settings.ode_steps,
                                          settings.shift)
        endpoints.append(endpoint)
        states.append(levels)
    return torch.cat(endpoints, dim=2), torch.cat(states, dim=3)


def sample_noise(shape: torch.Size | tuple[int, ...], seed: int) -> Tensor:
    """The starting noise of one sample: its own CPU generator, so it does not depend on batching or
    device."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _batches(
    samples: Iterable[dict[str, Any]], batch_size: int, text: TextEncoder | None, teacher: WanModel
) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """Consecutive samples of equal latent shape, with their collated conditions checked against the
    teacher."""
    group: list[dict[str, Any]] = []
    for sample in chain(samples, [None]):
        full = len(group) == batch_size
        if group and (sample is None or full or sample["latents"].shape != group[0]["latents"].shape):
            conditions = collate_samples(group, text_encoder=text)
            if "text_emb" not in conditions:
                raise ValueError(
                    f"samples {conditions['key']} carry no prompt embeddings and no --text_encoder "
                    "is set; give one (e.g. hash) that matches the teacher's text_dim"
                )
            _check_fit(teacher, conditions)
            yield group, conditions
            group = []
        if sample is not None:
            group.append(sample)


def _check_fit(teacher: WanModel, conditions: dict[str, Any]) -> None:
    """Fail before integrating when the conditions do not have the input sizes the teacher was trained on."""
    config = teacher.config
    have = {
        "latent channels": conditions["latents"].shape[1],
        "text_dim": conditions["text_emb"].shape[-1],
        "frame_cond_dim (camera)": conditions["camera"].shape[-1] if "camera" in conditions else 0,
    }
    want = {
        "latent channels": config.in_dim,
        "text_dim": config.text_dim,
        "frame_cond_dim (camera)": config.frame_cond_dim,
    }
    wrong = [f"{name} {have[name]} (teacher: {want[name]})" for name in want if have[name] != want[name]]
    if wrong:
        raise ValueError(
            f"samples {conditions['key']} do not fit the teacher: {', '.join(wrong)}; use the "
            "codec, text encoder and world (camera) the teacher was trained with"
        )


def write_trajectories(
    samples: Iterable[dict[str, Any]],
    teacher: WanModel,
    settings: OdeSettings,
    *,
    output: str,
    shard_size: int,
    batch_size: int,
    text: TextEncoder | None,
    device: str,
    total: int | None = None,
    chunk_context: ChunkContext | None = None,
) -> int:
    """Integrate ``teacher`` for every condition sample (decoded-shard form) and write trajectory shards.

    Sample ``i`` (in input order) starts from ``sample_noise(shape, settings.noise_seed + i)``: the same
    seed gives the same shards, and another ``batch_size`` the same noise (the teacher's arithmetic may
    then differ in the last bits). With ``chunk_context`` the teacher is integrated chunk by chunk after
    each sample's data frames (:func:`chunkwise_trajectory`) and the samples keep their data latents.
    Prints progress to stderr; returns the count.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    levels = settings.levels
    negative = None
    if settings.negative_prompt:
        negative = load_negative_prompt(settings.negative_prompt, teacher.config.text_dim).to(device)
    batches = _batches(samples, batch_size, text, teacher)
    first = next(batches, None)  # inputs are checked before any shard is opened
    if first is None:
        raise ValueError("no condition samples to integrate (the input shards hold no readable sample)")
    contextual = chunk_context is not None
    context_meta = chunk_context.describe() if chunk_context is not None else None
    count, start = 0, time.monotonic()
    with open_shard_writer(output, shard_size) as sink, torch.no_grad():
        for group, conditions in chain([first], batches):
            seeds = [settings.noise_seed + count + row for row in range(len(group))]
            noise = torch.stack([sample_noise(s["latents"].shape, seed) for s, seed in zip(group, seeds)])
            camera = conditions.get("camera")
            camera = None if camera is None else camera.to(device)
            text_emb, text_mask = conditions["text_emb"].to(device), conditions["text_mask"].to(device)
            if chunk_context is None:
                velocity = guided_velocity(
                    teacher, text_emb, text_mask, camera, settings.guidance_scale, negative
                )
                endpoint, states = ode_trajectory(
                    velocity, noise.to(device), levels, settings.ode_steps, settings.shift
                )
            else:
                endpoint, states = chunkwise_trajectory(
                    teacher, conditions["latents"].to(device), noise.to(device), text_emb, text_mask, camera,
                    settings, chunk_context, negative,
                )
            stored_text = all("text_emb" in s for s in group)
            for row, (sample, seed) in enumerate(zip(group, seeds)):
                meta = {**sample["meta"], "ode": settings.describe(seed)}
                if contextual:
                    meta["ode"]["chunk_context"] = context_meta
                if not stored_text and text is not None:
                    meta["text_encoder"] = text.describe()
                sink.write(
                    encode_sample(
                        sample["key"],
                        sample["latents"] if contextual else endpoint[row].cpu(),
                        sample["prompt"],
                        meta,
                        text_emb=conditions["text_emb"][row, conditions["text_mask"][row]],
                        ode_trajectory=states[row].cpu(),
                        ode_endpoint=endpoint[row].cpu() if contextual else None,
                        **per_frame_truth(sample),
                    )
                )
            count += len(group)
            print(
                f"trajectories: {count}{'' if total is None else f'/{total}'} samples, "
                f"{time.monotonic() - start:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    return count
