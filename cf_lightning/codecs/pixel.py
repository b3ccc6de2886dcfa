"""Weight-free codec: space-to-depth patchify, so CPU recipes train on "latents" with no VAE."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from cf_lightning.codecs.base import LatentCodec

__all__ = ["PixelCodec", "PooledPixelCodec"]


class PixelCodec(LatentCodec):
    """Folds each ``patch x patch`` pixel block into channels: ``[B, 3, T, H, W] -> [B, 3*p*p, T, H/p, W/p]``.

    Values stay in [-1, 1] (use :func:`~cf_lightning.codecs.uint8_to_unit` for uint8 frames); the
    channel order is ``(rgb, row in patch, column in patch)``. ``decode`` is the exact inverse, so
    revisit ground truth checked on decoded frames is as exact as on the pixels.
    """

    name = "pixel"

    def __init__(self, patch: int = 8) -> None:
        super().__init__()
        if patch < 1:
            raise ValueError(f"patch must be a positive integer, got {patch}")
        self.patch = patch
        self.spatial_factor = patch
        self.latent_channels = 3 * patch * patch

    def options(self) -> dict[str, Any]:
        return {"patch": self.patch}

    def _blocks(self, video: Tensor) -> Tensor:
        """``[B, 3, T, H, W]`` viewed as ``[B, 3, T, H/p, p, W/p, p]``, after checking the shape."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected video [B, 3, T, H, W], got shape {tuple(video.shape)}")
        b, c, t, height, width = video.shape
        h, w = self.latent_size(height, width)
        return video.reshape(b, c, t, h, self.patch, w, self.patch)

    def _check_latents(self, latents: Tensor) -> None:
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"expected latents [B, {self.latent_channels}, F, h, w], got shape {tuple(latents.shape)}"
            )

    def encode(self, video: Tensor) -> Tensor:
        x = self._blocks(video).permute(0, 1, 4, 6, 2, 3, 5)
        b, c, p, _, t, h, w = x.shape
        return x.reshape(b, c * p * p, t, h, w)

    def decode(self, latents: Tensor) -> Tensor:
        self._check_latents(latents)
        b, _, t, h, w = latents.shape
        p = self.patch
        x = latents.reshape(b, 3, p, p, t, h, w).permute(0, 1, 4, 5, 2, 6, 3)
        return x.reshape(b, 3, t, h * p, w * p)


class PooledPixelCodec(PixelCodec):
    """Average-pools each ``patch x patch`` block to its mean colour: ``[B, 3, T, H, W] -> [B, 3, T, H/p, W/p]``.

    Exact (decode = nearest upsampling) on worlds whose content is constant per block, such as the
    revisit world with block-aligned pans, and a 64x smaller latent than :class:`PixelCodec`: a
    small transformer can then carry a whole token through its width, which velocity prediction
    needs (the noise it predicts has one value per latent channel).
    """

    name = "pooled_pixel"

    def __init__(self, patch: int = 8) -> None:
        super().__init__(patch)
        self.latent_channels = 3

    def encode(self, video: Tensor) -> Tensor:
        return self._blocks(video).mean(dim=(4, 6))

    def decode(self, latents: Tensor) -> Tensor:
        self._check_latents(latents)
        return latents.repeat_interleave(self.patch, dim=3).repeat_interleave(self.patch, dim=4)
