"""Reading real videos with PyAV and fitting them to a codec's frame size (no torchvision)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["probe_size", "read_video", "resize_center_crop"]


def probe_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of the first video stream, read from the header without decoding."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{str(path)!r} has no video stream")
        context = container.streams.video[0].codec_context
        return context.height, context.width


def read_video(path: str | Path, max_frames: int | None = None) -> tuple[Tensor, float]:
    """Decode the first video stream of ``path`` to ``uint8 [T, 3, H, W]`` RGB and its frame rate.

    Decoding stops after ``max_frames`` frames so long files cost only what is used.
    """
    frames: list[np.ndarray] = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{str(path)!r} has no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError(f"{str(path)!r} has no decodable frames")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous(), fps


def resize_center_crop(frames: Tensor, height: int, width: int) -> Tensor:
    """Crop ``uint8 [T, 3, H, W]`` to the target aspect ratio around the centre, then resize.

    Cropping first keeps objects undistorted; the antialiased bilinear resize avoids aliasing
    when shrinking, which a VAE would otherwise encode as texture.
    """
    _, _, h, w = frames.shape
    if (h, w) == (height, width):
        return frames
    scale = min(h / height, w / width)
    crop_h, crop_w = round(height * scale), round(width * scale)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    cropped = frames[:, :, top : top + crop_h, left : left + crop_w].float()
    resized = F.interpolate(
        cropped, size=(height, width), mode="bilinear", antialias=True, align_corners=False
    )
    return resized.round().clamp(0, 255).to(torch.uint8)
