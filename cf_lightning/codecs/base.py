"""The latent codec interface and the uint8 <-> [-1, 1] pixel mapping.

Every model in the library works on latents ``[B, C, F, h, w]`` and never needs to know whether
they came from a weight-free patchifier (CPU recipes, tests) or the Wan VAE (real runs). The codec
also owns the time alignment between pixel frames and latent frames (``frame_groups``) because
ground truth such as camera positions must follow the codec's temporal compression.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from cf_lightning.components import build_component

__all__ = [
    "LatentCodec",
    "build_codec",
    "resolve_dtype",
    "uint8_to_unit",
    "unit_to_uint8",
]


DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Accept a dtype or its name, so YAML configs can say ``dtype: bfloat16``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def uint8_to_unit(video: Tensor) -> Tensor:
    """Map uint8 pixels in [0, 255] to float32 in [-1, 1], the range every codec expects."""
    if video.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 tensor, got dtype {video.dtype}")
    return video.to(torch.float32) / 127.5 - 1.0


def unit_to_uint8(video: Tensor) -> Tensor:
    """Inverse of :func:`uint8_to_unit`; rounds and clamps, so it is exact on its outputs."""
    return ((video.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


class LatentCodec(nn.Module, ABC):
    """Maps videos ``[B, 3, T, H, W]`` in [-1, 1] to latents ``[B, C, F, h, w]`` and back.

    Subclasses set ``latent_channels``, ``temporal_factor``, ``spatial_factor`` and
    ``causal_first_frame`` (Wan's causal VAE encodes frame 0 alone and then groups of
    ``temporal_factor`` frames); the frame/size arithmetic below follows from those. ``name`` is the
    short name shard metadata records (:meth:`describe`) and :func:`build_codec` accepts.
    """

    name: str = ""
    latent_channels: int
    temporal_factor: int = 1
    spatial_factor: int = 1
    causal_first_frame: bool = False

    @abstractmethod
    def encode(self, video: Tensor) -> Tensor:
        """Encode ``[B, 3, T, H, W]`` floats in [-1, 1] to latents ``[B, C, F, h, w]``."""

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """Decode latents ``[B, C, F, h, w]`` to a video ``[B, 3, T, H, W]`` in [-1, 1]."""

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """Constructor arguments, so shard metadata records how latents were made."""

    def chunk_decoder(self) -> Callable[[Tensor], Tensor]:
        """A decoder for the consecutive latent chunks of one video, called as each chunk is produced.

        The whole video's decode must equal the concatenation of the chunks' decodes. The default
        decodes each chunk on its own, which is exact for codecs that decode every latent frame
        independently; a codec with temporal context (the causal Wan VAE) carries it across calls.
        """
        return self.decode

    def describe(self) -> dict[str, Any]:
        """``{"name": ..., **options}``: enough to rebuild this codec with :func:`build_codec`."""
        return {"name": self.name, **self.options()}

    def latent_frames(self, num_frames: int) -> int:
        """Number of latent frames for ``num_frames`` pixel frames; raises if the count is unusable."""
        tf = self.temporal_factor
        if self.causal_first_frame:
            if num_frames < 1 or (num_frames - 1) % tf:
                raise ValueError(
                    f"{type(self).__name__} needs num_frames = 1 + {tf} * k (k >= 0), got {num_frames}"
                )
            return 1 + (num_frames - 1) // tf
        if num_frames < 1 or num_frames % tf:
            raise ValueError(f"{type(self).__name__} needs num_frames divisible by {tf}, got {num_frames}")
        return num_frames // tf

    def usable_frames(self, num_frames: int) -> int:
        """Largest frame count <= ``num_frames`` that this codec accepts (0 if none)."""
        tf = self.temporal_factor
        if self.causal_first_frame:
            return 0 if num_frames < 1 else 1 + (num_frames - 1) // tf * tf
        return num_frames // tf * tf

    def frame_groups(self, num_frames: int) -> list[range]:
        """The pixel frames each latent frame summarises, in order (one range per latent frame)."""
        tf = self.temporal_factor
        count = self.latent_frames(num_frames)
        if self.causal_first_frame:
            return [range(1)] + [range(1 + (i - 1) * tf, 1 + i * tf) for i in range(1, count)]
        return [range(i * tf, (i + 1) * tf) for i in range(count)]

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent ``(h, w)`` for a ``height x width`` frame; raises if not divisible."""
        s = self.spatial_factor
        if height % s or width % s or height < 1 or width < 1:
            raise ValueError(
                f"{type(self).__name__} needs frame height and width divisible by {s}, got {height}x{width}"
            )
        return height // s, width // s


def build_codec(spec: str | Mapping[str, Any] | LatentCodec, **options: Any) -> LatentCodec:
    """A codec from a ``class_path``/``init_args`` spec, a class path or name, or a short name such as
    ``"pixel"`` with ``options`` (e.g. ``patch=8`` or ``path=...``); see :mod:`cf_lightning.components`."""
    return build_component(LatentCodec, spec, **options)
