"""Streaming text-to-video: conditions -> chunk-by-chunk rollout over a memory policy -> decoded mp4.

:func:`stream_chunks` yields the latent chunks of one video (the rollout, prompt switches with their
re-cache); :func:`generate_video` sends each chunk to a :class:`VideoOutput` as soon as it exists and
calls an optional observer, so a caller can watch the memory (which frames each chunk kept) without
touching the loop. SIGINT and SIGTERM stop generation between two operations of the loop; what was
finished is published (playable mp4 and latents) and :class:`GenerationInterrupted` says how much.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from cf_lightning.codecs import LatentCodec
from cf_lightning.inference.conditions import Conditions
from cf_lightning.inference.outputs import VideoOutput, WrittenVideo
from cf_lightning.inference.presets import InferencePreset
from cf_lightning.models import KVMemory, WanModel
from cf_lightning.rollout import randn, rollout
from memory_policies import MemoryPolicy


@dataclass(frozen=True)
class ChunkEvent:
    """What an observer sees after each chunk: the chunk, its pixels and the memory it left behind."""

    index: int  # chunk number, from 0
    start_frame: int  # first latent frame of the chunk
    latents: torch.Tensor  # [1, C, f, H, W]
    pixels: torch.Tensor | None  # [1, 3, T, H', W'] in [-1, 1], when decoded
    memory: KVMemory  # after the chunk's clean refresh: memory.states[0].kept_frames() is what it keeps


Observer = Callable[[ChunkEvent], None]


class GenerationInterrupted(Exception):
    """Generation stopped by a signal; ``written`` holds what was published."""

    def __init__(self, signum: int, written: WrittenVideo | None = None) -> None:
        self.signum = signum
        self.written = written
        frames = "no frames" if written is None else f"{written.pixel_frames} frames to {written.video}"
        super().__init__(f"interrupted by {signal.Signals(signum).name}: wrote {frames}")


@contextlib.contextmanager
def signals_raise(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Turn ``signums`` into :class:`GenerationInterrupted` while inside (main thread only; elsewhere
    Python cannot install handlers and the process's own ones stay)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupted(signum: int, frame: object) -> None:
        raise GenerationInterrupted(signum)

    previous = {signum: signal.signal(signum, raise_interrupted) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@torch.inference_mode()
def recache(model: WanModel, memory: KVMemory, history: Iterable[torch.Tensor], context: torch.Tensor,
            frame_cond: torch.Tensor | None, latent_hw: tuple[int, int]) -> KVMemory:
    """A fresh memory holding the clean history (chunks ``[1, C, f, H, W]`` in order) as if it had been
    streamed under ``context``: no key or value computed with the old prompt survives."""
    fresh = model.new_memory(memory.policy, memory.batch_size, memory.chunk_frames, latent_hw,
                             device=next(model.parameters()).device)
    start = 0
    for chunk in history:
        frames = chunk.shape[2]
        zero = torch.zeros(chunk.shape[0], frames, device=chunk.device)
        model(chunk, zero, context, memory=fresh, mode="commit",
              frame_cond=None if frame_cond is None else frame_cond[:, start:start + frames])
        start += frames
    return fresh


def check_length(num_frames: int, chunk_frames: int, conditions: Conditions) -> None:
    """A video is whole chunks, no longer than its per-frame condition."""
    if num_frames < chunk_frames or num_frames % chunk_frames:
        raise ValueError(f"{num_frames} latent frames is not a positive multiple of chunk_frames={chunk_frames}")
    if conditions.max_frames is not None and num_frames > conditions.max_frames:
        raise ValueError(f"{num_frames} latent frames exceed the {conditions.max_frames} frames of the per-frame "
                         "condition")


@torch.inference_mode()
def stream_chunks(model: WanModel, preset: InferencePreset, conditions: Conditions, num_frames: int,
                  latent_hw: tuple[int, int], policy: MemoryPolicy | None = None, seed: int = 0,
                  history: Callable[[int, int], torch.Tensor] | None = None
                  ) -> Iterator[tuple[int, torch.Tensor, KVMemory]]:
    """Yield ``(start_frame, chunk [1, C, f, H, W], memory)`` for ``num_frames`` latent frames.

    At a prompt switch the memory is re-cached from the history: ``history(start, stop)`` returns
    those finished frames (a :class:`LatentFile` reads them back from disk); without it the chunks
    are kept in memory. Switches are rounded down to a chunk boundary.
    """
    check_length(num_frames, preset.chunk_frames, conditions)
    chunk_frames = preset.chunk_frames
    policy = policy or preset.memory()
    sigmas = preset.sigmas()
    weight = next(model.parameters())
    device, dtype = weight.device, weight.dtype  # latents and text follow the model (bfloat16 on a GPU)
    kept: list[torch.Tensor] | None = [] if history is None else None
    read = history or (lambda start, stop: torch.cat(kept, dim=2)[:, :, start:stop])
    gens = [torch.Generator().manual_seed(seed)]
    memory: KVMemory | None = None
    channels = model.config.in_dim
    bounds = [start for _, start in conditions.segments[1:]] + [num_frames]
    cond = None if conditions.frame_cond is None else conditions.frame_cond.to(device)
    for (context, start), end in zip(conditions.segments, bounds):
        start, end = start - start % chunk_frames, min(end - end % chunk_frames, num_frames)
        if end <= start:
            continue
        context = context.to(device, dtype)
        if memory is not None:
            replay = (read(s, s + chunk_frames).to(device, dtype) for s in range(0, start, chunk_frames))
            memory = recache(model, memory, replay, context, cond, latent_hw)
        for chunk_start in range(start, end, chunk_frames):
            noise = randn((1, channels, chunk_frames, *latent_hw), gens).to(device, dtype)
            part = None if cond is None else cond[:, chunk_start:chunk_start + chunk_frames]
            result = rollout(model, policy, noise, context, sigmas, chunk_frames=chunk_frames, frame_cond=part,
                             generator=gens, memory=memory)
            memory = result.memory
            if kept is not None:
                kept.append(result.video)
            yield chunk_start, result.video, memory


def generate_video(model: WanModel, conditions: Conditions, out_dir: str | Path, *, preset: InferencePreset,
                   codec: LatentCodec, num_frames: int, latent_hw: tuple[int, int],
                   policy: MemoryPolicy | None = None, seed: int = 0, fps: float = 16.0,
                   observer: Observer | None = None, progress: bool = False) -> WrittenVideo:
    """Stream one video into ``out_dir/video.mp4`` (decoded chunk by chunk) and ``out_dir/latents.npy``.

    ``model``: a loaded generator's backbone (:func:`~cf_lightning.inference.load_generator`);
    ``preset``: chunking, schedule and default memory policy; ``policy`` overrides the memory;
    ``latent_hw``: latent height and width (``codec.latent_size(height, width)``). ``observer`` is called
    after every chunk with a :class:`ChunkEvent`. Raises :class:`GenerationInterrupted` on SIGINT/SIGTERM
    after publishing every finished frame; any other error also leaves the finished part published.
    """
    if codec.latent_channels != model.config.in_dim:
        raise ValueError(f"codec {codec.name!r} makes {codec.latent_channels}-channel latents, but the model takes "
                         f"{model.config.in_dim}: the VAE and the DiT do not belong together")
    check_length(num_frames, preset.chunk_frames, conditions)
    output = VideoOutput(out_dir, codec, (codec.latent_channels, *latent_hw), num_frames, fps)
    try:
        with signals_raise(), tqdm(total=num_frames // preset.chunk_frames, disable=not progress,
                                   desc="chunks") as bar:
            chunks = stream_chunks(model, preset, conditions, num_frames, latent_hw, policy, seed,
                                   output.latents.read)
            for index, (start, latents, memory) in enumerate(chunks):
                pixels = output.write(latents)
                if observer is not None:
                    observer(ChunkEvent(index, start, latents, pixels, memory))
                bar.update(1)
    except GenerationInterrupted as stop:
        raise GenerationInterrupted(stop.signum, output.close()) from None
    finally:
        written = output.close()
    return written
