"""Chunk-by-chunk generation over a memory policy, for training (Self-Forcing style) and inference.

Each chunk is denoised in a few steps (predict x0, re-noise to the next level), then one clean
refresh pass at t = 0 writes its keys/values into the memory (``mode="commit"``: its output is never
read, so the model stops at the last block's keys and values). The refresh never carries
gradient. During training the chunk may stop at a randomly drawn *exit step* and only the chunks from
``grad_from_chunk`` on keep the graph of that one step, which is what makes long rollouts
affordable in stage 2.

The text context is projected to cross-attention keys/values once per call and reused by every
no-grad forward; the step that keeps a graph re-projects it, so gradients reach those weights.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from cf_lightning.diffusion import add_noise, timestep_from_sigma, x0_from_velocity
from cf_lightning.models import KVMemory, WanModel
from memory_policies import MemoryPolicy


@dataclass
class RolloutResult:
    video: torch.Tensor  # [B, C, F, H, W] clean estimate of every chunk
    memory: KVMemory  # the memory after the last refresh, ready to continue the video
    exit_sigmas: torch.Tensor  # [num_chunks] noise level of the step each chunk stopped at


def rollout(model: WanModel, policy: MemoryPolicy, noise: torch.Tensor, context: torch.Tensor, sigmas: torch.Tensor,
            *, chunk_frames: int, context_mask: torch.Tensor | None = None, frame_cond: torch.Tensor | None = None,
            exit_step: int | None = None, grad_from_chunk: int | None = None,
            generator: torch.Generator | list[torch.Generator] | None = None,
            memory: KVMemory | None = None) -> RolloutResult:
    """Generate ``noise.shape[2]`` latent frames chunk by chunk.

    Args:
        noise: ``[B, C, F, H, W]`` starting noise; ``F`` must be a multiple of ``chunk_frames``.
        sigmas: the few-step schedule (e.g. :func:`cf_lightning.diffusion.denoising_sigmas`).
        exit_step: stop every chunk after this step (training); ``None`` runs all steps (inference).
        grad_from_chunk: chunks with this index or later keep the graph of their exit step; ``None``
            means no gradient anywhere.
        generator: drives the re-noising draws, so a rollout is reproducible; one generator per video
            makes a video's draws independent of how the batch is split into micro-batches.
        memory: continue an existing video instead of starting a new one.
    """
    batch, _, frames, height, width = noise.shape
    if frames % chunk_frames:
        raise ValueError(f"rollout of {frames} frames is not a multiple of chunk_frames={chunk_frames}")
    steps = len(sigmas)
    last_step = steps - 1 if exit_step is None else exit_step
    if not 0 <= last_step < steps:
        raise ValueError(f"exit_step={exit_step} outside the {steps}-step schedule")
    if memory is None:
        memory = model.new_memory(policy, batch, chunk_frames, (height, width), device=noise.device)
    with torch.no_grad():  # the prompt is fixed for the whole rollout: project it once for the no-grad forwards
        context_kv = model(None, None, context, mode="context_kv")
    chunks, exits = [], []
    for index, start in enumerate(range(0, frames, chunk_frames)):
        part = slice(start, start + chunk_frames)
        cond = None if frame_cond is None else frame_cond[:, part]
        x = noise[:, :, part]
        track = grad_from_chunk is not None and index >= grad_from_chunk
        for step in range(last_step + 1):
            sigma = float(sigmas[step])
            keep_graph = track and step == last_step
            with contextlib.nullcontext() if keep_graph else torch.no_grad():
                t = torch.full((batch, chunk_frames), timestep_from_sigma(sigma), device=noise.device)
                velocity = model(x, t, context, memory=memory, context_mask=context_mask, frame_cond=cond,
                                 context_kv=None if keep_graph else context_kv)
                x0 = x0_from_velocity(x, velocity, sigma)
            if step < last_step:
                fresh = _to_device(randn(x0.shape, generator), x0)
                x = add_noise(x0.detach(), fresh, float(sigmas[step + 1]))
        with torch.no_grad():
            zero = torch.zeros(batch, chunk_frames, device=noise.device)
            model(x0.detach(), zero, context, memory=memory, context_mask=context_mask, frame_cond=cond,
                  context_kv=context_kv, mode="commit")
        chunks.append(x0)
        exits.append(float(sigmas[last_step]))
    return RolloutResult(torch.cat(chunks, dim=2), memory, torch.tensor(exits))


def _to_device(draws: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Noise drawn by CPU generators, moved without blocking the host (pinned, non-blocking on CUDA)."""
    if like.device.type == "cuda" and draws.device.type == "cpu":
        draws = draws.pin_memory()
    return draws.to(like.device, like.dtype, non_blocking=True)


def randn(shape: torch.Size | tuple[int, ...], generator: torch.Generator | list[torch.Generator] | None
          ) -> torch.Tensor:
    """Standard normal draws; with a list, video ``b`` of the batch draws from ``generator[b]``."""
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=g.device) for g in generator])
    return torch.randn(tuple(shape), generator=generator, device=generator.device if generator else None)
