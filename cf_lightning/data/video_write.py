"""Write uint8 videos to mp4 with PyAV (no torchvision, no moviepy)."""

from __future__ import annotations

from pathlib import Path

import av
import torch


def write_mp4(path: str | Path, frames: torch.Tensor, fps: float = 8.0) -> Path:
    """``frames``: uint8 ``[T, 3, H, W]``. Odd sizes are padded by one pixel, as H.264 needs even sizes.

    Written to a temporary name first and renamed, so a crash never leaves a half-written video.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be uint8 [T, 3, H, W], got {frames.dtype} {tuple(frames.shape)}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pad_h, pad_w = frames.shape[2] % 2, frames.shape[3] % 2
    if pad_h or pad_w:
        frames = torch.nn.functional.pad(frames, (0, pad_w, 0, pad_h), mode="replicate")
    partial = out.with_name(f".{out.name}.partial")
    with av.open(str(partial), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height = frames.shape[3], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12"}
        for frame in frames.permute(0, 2, 3, 1).contiguous().numpy():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    partial.replace(out)
    return out
