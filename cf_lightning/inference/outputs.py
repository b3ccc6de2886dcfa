"""Where a streamed video goes: decoded chunk by chunk into an mp4, latents into a ``.npy``, both on disk.

Nothing here grows with the video: each chunk is decoded as it arrives (the codec's chunk decoder
carries the causal VAE's cache across chunks), encoded into the mp4 and written into a memory-mapped
latent file, so peak memory is that of one chunk. Closing at any point, after an interruption too,
publishes a playable mp4 of every finished frame and the latents of every finished chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cf_lightning.codecs import LatentCodec, unit_to_uint8
from cf_lightning.data.video_write import Mp4Writer

VIDEO_NAME = "video.mp4"
LATENTS_NAME = "latents.npy"


@dataclass(frozen=True)
class WrittenVideo:
    video: Path
    latents: Path
    latent_frames: int  # finished latent frames
    pixel_frames: int  # frames in the mp4
    complete: bool  # False when generation stopped before the requested length


class LatentFile:
    """Latents ``[C, F, H, W]`` (float32) written chunk by chunk into a preallocated ``.npy``.

    The file is opened for each write and read, so its pages never stay mapped in this process; it
    also serves as the video's history (a prompt switch replays it) without keeping it in memory.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int, int]) -> None:
        self.path = path
        self.partial = path.with_name(f".{path.name}.partial")
        self.shape = shape
        self.frames = 0
        np.lib.format.open_memmap(self.partial, mode="w+", dtype=np.float32, shape=shape).flush()

    def append(self, chunk: torch.Tensor) -> None:
        """``chunk``: ``[1, C, f, H, W]``, the next ``f`` frames."""
        stored = np.load(self.partial, mmap_mode="r+")
        stored[:, self.frames:self.frames + chunk.shape[2]] = chunk[0].detach().float().cpu().numpy()
        stored.flush()
        del stored
        self.frames += chunk.shape[2]

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Frames ``start:stop`` as ``[1, C, f, H, W]``."""
        stored = np.load(self.partial, mmap_mode="r")
        return torch.from_numpy(np.array(stored[:, start:stop]))[None]

    def close(self) -> Path:
        """Publish the finished frames under the file's name (the whole file when all were written,
        nothing when none was)."""
        if not self.partial.exists():
            return self.path
        if self.frames == 0:
            self.partial.unlink()
            return self.path
        if self.frames == self.shape[1]:
            self.partial.replace(self.path)
            return self.path
        stored = np.load(self.partial, mmap_mode="r")
        finished = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32,
                                             shape=(self.shape[0], self.frames, *self.shape[2:]))
        for start in range(0, self.frames, max(1, self.frames // 8)):
            stop = min(self.frames, start + max(1, self.frames // 8))
            finished[:, start:stop] = stored[:, start:stop]
        finished.flush()
        del finished, stored
        self.partial.unlink()
        return self.path


class VideoOutput:
    """Decode, encode and store the latent chunks of one video as they are produced."""

    def __init__(self, folder: str | Path, codec: LatentCodec, latent_shape: tuple[int, int, int], num_frames: int,
                 fps: float = 16.0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.codec = codec
        self.num_frames = num_frames
        self.decode = codec.chunk_decoder()
        self.latents = LatentFile(self.folder / LATENTS_NAME, (latent_shape[0], num_frames, *latent_shape[1:]))
        self.mp4 = Mp4Writer(self.folder / VIDEO_NAME, fps)

    @torch.no_grad()
    def write(self, chunk: torch.Tensor) -> torch.Tensor:
        """Store, decode and encode one chunk ``[1, C, f, H, W]``; returns its pixels ``[1, 3, T, H', W']``."""
        self.latents.append(chunk)
        pixels = self.decode(chunk.float())
        self.mp4.write(unit_to_uint8(pixels[0]).permute(1, 0, 2, 3).cpu())
        return pixels

    def close(self) -> WrittenVideo:
        video, latents = self.mp4.close(), self.latents.close()
        return WrittenVideo(video, latents, self.latents.frames, self.mp4.frames_written,
                            self.latents.frames == self.num_frames)
