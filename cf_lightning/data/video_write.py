"""Write uint8 videos to mp4 with PyAV (no torchvision, no moviepy), whole or frame batch by frame batch."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import av
import torch

if TYPE_CHECKING:
    from typing_extensions import Self


class Mp4Writer:
    """An H.264 mp4 written incrementally: :meth:`write` encodes frames as they come, :meth:`close`
    flushes the encoder and renames the file into place.

    Frames go to a hidden ``.partial`` sibling first, so the target name only ever holds a complete,
    playable video: closing after an interruption publishes every frame written so far. Odd sizes are
    padded by one pixel, as H.264 needs even sizes.
    """

    def __init__(self, path: str | Path, fps: float = 16.0) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(f".{self.path.name}.partial")
        self.fps = fps
        self.frames_written = 0
        self._container = av.open(str(self.partial), mode="w", format="mp4")
        self._stream = None

    def write(self, frames: torch.Tensor) -> None:
        """``frames``: uint8 ``[T, 3, H, W]``, all of one size."""
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be uint8 [T, 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
        pad_h, pad_w = frames.shape[2] % 2, frames.shape[3] % 2
        if pad_h or pad_w:
            frames = torch.nn.functional.pad(frames, (0, pad_w, 0, pad_h), mode="replicate")
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=round(self.fps))
            self._stream.width, self._stream.height = frames.shape[3], frames.shape[2]
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": "12"}
        elif (frames.shape[3], frames.shape[2]) != (self._stream.width, self._stream.height):
            raise ValueError(f"frames of {frames.shape[3]}x{frames.shape[2]} in a {self._stream.width}x"
                             f"{self._stream.height} video")
        for frame in frames.permute(0, 2, 3, 1).contiguous().numpy():
            self._container.mux(self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        self.frames_written += frames.shape[0]

    def close(self) -> Path:
        """Flush and publish the video under its name (idempotent); without any frame nothing is written."""
        if self._container is None:
            return self.path
        if self._stream is not None:
            self._container.mux(self._stream.encode())
        self._container.close()
        self._container = None
        if self._stream is None:  # no frame came: there is no video to publish
            self.partial.unlink(missing_ok=True)
        else:
            self.partial.replace(self.path)
        return self.path

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def write_mp4(path: str | Path, frames: torch.Tensor, fps: float = 8.0) -> Path:
    """``frames``: uint8 ``[T, 3, H, W]``, written in one go (see :class:`Mp4Writer`).

    A frame tensor that fails the checks leaves no file behind, and a crash never leaves a
    half-written video under ``path``.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be uint8 [T, 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
    with Mp4Writer(path, fps) as writer:
        writer.write(frames)
    return writer.path
