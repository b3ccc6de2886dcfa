"""Latent codecs: ``pixel`` (weight-free patchify, the CPU path) and ``wan`` (diffusers Wan VAE)."""

from cf_lightning.codecs.base import (
    LatentCodec,
    build_codec,
    resolve_dtype,
    uint8_to_unit,
    unit_to_uint8,
)
from cf_lightning.codecs.pixel import PixelCodec, PooledPixelCodec
from cf_lightning.codecs.wan_vae import WanVAECodec

__all__ = [
    "LatentCodec",
    "PixelCodec",
    "PooledPixelCodec",
    "WanVAECodec",
    "build_codec",
    "resolve_dtype",
    "uint8_to_unit",
    "unit_to_uint8",
]
