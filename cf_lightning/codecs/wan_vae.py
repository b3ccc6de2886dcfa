"""The Wan VAE (diffusers ``AutoencoderKLWan``) behind the :class:`LatentCodec` interface."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cf_lightning.codecs.base import LatentCodec, resolve_dtype

__all__ = ["WanChunkDecoder", "WanVAECodec"]


class WanVAECodec(LatentCodec):
    """Frozen Wan 2.x VAE loaded from a local directory; latents are normalised per channel.

    ``path`` is either the VAE folder itself (``config.json`` + weights) or a diffusers pipeline
    folder with a ``vae/`` subfolder. Latents are ``(z - latents_mean) / latents_std`` with the
    statistics from the VAE config, the scaling Wan's diffusion models were trained on, and the
    posterior mode is used so that encoding a dataset is deterministic. Nothing is downloaded.
    """

    name = "wan"

    def __init__(self, path: str, dtype: str | torch.dtype = "float32") -> None:
        super().__init__()
        from diffusers import AutoencoderKLWan  # optional dependency (extra "wan"): import on use

        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"Wan VAE directory {path!r} does not exist")
        folder = root / "vae" if (root / "vae" / "config.json").is_file() else root
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no config.json in {str(root)!r} or {str(root / 'vae')!r}")
        self.path = path
        self.dtype = resolve_dtype(dtype)
        self.vae = AutoencoderKLWan.from_pretrained(
            str(folder), torch_dtype=self.dtype, local_files_only=True
        )
        self.vae.requires_grad_(False).eval()
        config = self.vae.config
        self.latent_channels = int(config.z_dim)
        self.temporal_factor = int(config.scale_factor_temporal or 2 ** sum(config.temperal_downsample))
        self.spatial_factor = int(
            config.scale_factor_spatial or 2 ** (len(config.dim_mult) - 1) * (config.patch_size or 1)
        )
        self.causal_first_frame = True
        mean = torch.tensor(config.latents_mean or [0.0] * self.latent_channels, dtype=torch.float32)
        std = torch.tensor(config.latents_std or [1.0] * self.latent_channels, dtype=torch.float32)
        if mean.numel() != self.latent_channels or std.numel() != self.latent_channels:
            raise ValueError(
                f"latents_mean/latents_std in {str(folder)!r} have {mean.numel()}/{std.numel()} values, "
                f"z_dim is {self.latent_channels}"
            )
        self.register_buffer("latents_mean", mean.view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latents_std", std.view(1, -1, 1, 1, 1), persistent=False)

    def options(self) -> dict[str, Any]:
        return {"path": self.path, "dtype": str(self.dtype).removeprefix("torch.")}

    def train(self, mode: bool = True) -> WanVAECodec:
        """Keep the VAE in eval mode: it is a frozen feature map, never a trained module."""
        super().train(mode)
        self.vae.eval()
        return self

    def encode(self, video: Tensor) -> Tensor:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected video [B, 3, T, H, W], got shape {tuple(video.shape)}")
        self.latent_frames(video.shape[2])
        self.latent_size(video.shape[3], video.shape[4])
        x = video.to(device=self.latents_mean.device, dtype=self.dtype)
        z = self.vae.encode(x).latent_dist.mode().float()
        return (z - self.latents_mean) / self.latents_std

    def denormalize(self, latents: Tensor) -> Tensor:
        """Normalised latents back to the VAE's own scale, in its dtype, after checking their shape."""
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"expected latents [B, {self.latent_channels}, F, h, w], got shape {tuple(latents.shape)}"
            )
        z = latents.to(self.latents_mean.device).float() * self.latents_std + self.latents_mean
        return z.to(self.dtype)

    def decode(self, latents: Tensor) -> Tensor:
        return self.vae.decode(self.denormalize(latents)).sample.float().clamp(-1.0, 1.0)

    def chunk_decoder(self) -> WanChunkDecoder:
        return WanChunkDecoder(self)


class WanChunkDecoder:
    """Decodes one video chunk by chunk with the causal VAE's own convolution cache.

    ``AutoencoderKLWan.decode`` runs its decoder one latent frame at a time, each causal 3-D
    convolution reading the last frames of the previous call from a cache; it clears that cache at
    the start and end of every call. Keeping the cache here, across chunks, makes the chunked decode
    the same computation as decoding the whole latent video at once, while memory holds one chunk
    and the cache (a few frames per convolution) instead of the whole video.
    """

    def __init__(self, codec: WanVAECodec) -> None:
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        self.codec = codec
        convolutions = sum(isinstance(m, WanCausalConv3d) for m in codec.vae.decoder.modules())
        self.cache: list[Tensor | None] = [None] * convolutions
        self.frames_decoded = 0

    @torch.no_grad()
    def __call__(self, latents: Tensor) -> Tensor:
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        vae = self.codec.vae
        x = vae.post_quant_conv(self.codec.denormalize(latents))
        frames = []
        for i in range(x.shape[2]):
            frames.append(vae.decoder(x[:, :, i:i + 1], feat_cache=self.cache, feat_idx=[0],
                                      first_chunk=self.frames_decoded == 0))
            self.frames_decoded += 1
        out = torch.cat(frames, dim=2)
        if vae.config.patch_size is not None:
            out = unpatchify(out, patch_size=vae.config.patch_size)
        return out.float().clamp(-1.0, 1.0)
