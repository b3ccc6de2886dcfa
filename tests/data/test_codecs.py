"""Latent codecs: exact pixel codec, the Wan VAE loaded from a local folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cf_lightning.codecs import (
    LatentCodec,
    PixelCodec,
    WanVAECodec,
    build_codec,
    uint8_to_unit,
    unit_to_uint8,
)


def test_uint8_mapping_is_exact_on_all_values() -> None:
    values = torch.arange(256, dtype=torch.uint8)
    unit = uint8_to_unit(values)
    assert unit.min() == -1 and unit.max() == 1
    assert torch.equal(unit_to_uint8(unit), values)
    assert torch.equal(unit_to_uint8(unit.half().float()), values), "survives the fp16 shard storage"


@pytest.mark.parametrize("patch", [1, 2, 8])
def test_pixel_codec_is_an_exact_inverse(patch: int) -> None:
    codec = PixelCodec(patch)
    video = uint8_to_unit(torch.randint(0, 256, (2, 3, 5, 16, 24), dtype=torch.uint8))
    latents = codec.encode(video)
    assert (
        latents.shape
        == (2, 3 * patch * patch, 5, 16 // patch, 24 // patch)
        == (2, codec.latent_channels, codec.latent_frames(5), *codec.latent_size(16, 24))
    )
    assert torch.equal(codec.decode(latents), video)
    # one latent position holds exactly one patch of one frame
    assert torch.equal(
        latents[0, :, 2, 0, 1].view(3, patch, patch), video[0, :, 2, :patch, patch : 2 * patch]
    )


def test_pixel_codec_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="divisible by 8, got 30x32"):
        PixelCodec(8).encode(torch.zeros(1, 3, 2, 30, 32))
    with pytest.raises(ValueError, match="patch"):
        PixelCodec(0)


def test_causal_frame_arithmetic() -> None:
    class Causal(PixelCodec):
        temporal_factor = 4
        causal_first_frame = True

    codec = Causal(1)
    assert codec.latent_frames(9) == 3 and codec.usable_frames(12) == 9
    assert codec.frame_groups(9) == [range(1), range(1, 5), range(5, 9)]
    with pytest.raises(ValueError, match="1 \\+ 4 \\* k.*got 8"):
        codec.latent_frames(8)


def test_wan_vae_codec_loads_local_folder_and_normalises(wan_vae_dir: Path) -> None:
    from diffusers import AutoencoderKLWan

    codec = build_codec("wan", path=str(wan_vae_dir))
    assert isinstance(codec, WanVAECodec) and isinstance(codec, LatentCodec)
    assert (codec.latent_channels, codec.temporal_factor, codec.spatial_factor) == (4, 4, 8)
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    with torch.no_grad():
        latents = codec.encode(video)
        reference = AutoencoderKLWan.from_pretrained(str(wan_vae_dir / "vae")).eval()
        z = reference.encode(video).latent_dist.mode()
    assert latents.shape == (1, 4, codec.latent_frames(9), *codec.latent_size(32, 32)) == (1, 4, 3, 4, 4)
    mean = torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, 4, 1, 1, 1)
    std = torch.tensor([2.0, 1.5, 1.0, 0.5]).view(1, 4, 1, 1, 1)
    torch.testing.assert_close(latents, (z - mean) / std)
    with torch.no_grad():
        decoded = codec.decode(latents)
    assert decoded.shape == video.shape and decoded.abs().max() <= 1
    assert codec.describe() == {"name": "wan", "path": str(wan_vae_dir), "dtype": "float32"}
    assert not any(p.requires_grad for p in codec.parameters())
    codec.train()
    assert not codec.vae.training, "the frozen VAE stays in eval mode"
    # the VAE folder itself is accepted too
    assert WanVAECodec(str(wan_vae_dir / "vae")).latent_channels == 4


def test_wan_vae_codec_errors_name_the_value(wan_vae_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        WanVAECodec(str(tmp_path / "nowhere"))
    codec = WanVAECodec(str(wan_vae_dir))
    with pytest.raises(ValueError, match="got 8"):
        codec.encode(torch.zeros(1, 3, 8, 32, 32))


def test_pooled_pixel_codec_is_exact_on_block_constant_video():
    from cf_lightning.codecs import build_codec

    codec = build_codec("pooled_pixel", patch=4)
    blocks = torch.rand(2, 3, 5, 2, 3) * 2 - 1
    video = blocks.repeat_interleave(4, dim=3).repeat_interleave(4, dim=4)
    latents = codec.encode(video)
    assert latents.shape == (2, 3, 5, 2, 3) and codec.latent_channels == 3
    assert torch.allclose(latents, blocks) and torch.allclose(codec.decode(latents), video)
    with pytest.raises(ValueError, match="divisible by 4"):
        codec.encode(torch.zeros(1, 3, 1, 6, 8))


def test_wan_vae_chunked_decode_equals_whole_video_decode(wan_vae_dir: Path) -> None:
    """Decoding chunk by chunk with the causal cache carried over is the whole-video decode, for uneven
    chunk sizes too (the first chunk holds the frame the VAE decodes alone)."""
    codec = build_codec("wan", path=str(wan_vae_dir))
    latents = torch.randn(1, 4, 7, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = codec.decode(latents)
        for sizes in ([3, 3, 1], [1, 2, 4], [7]):
            decode = codec.chunk_decoder()
            parts = torch.cat([decode(chunk) for chunk in latents.split(sizes, dim=2)], dim=2)
            assert parts.shape == whole.shape == (1, 3, 25, 32, 32)
            torch.testing.assert_close(parts, whole, rtol=0, atol=1e-6)
        fresh = codec.chunk_decoder()(latents[:, :, 3:])
    assert not torch.allclose(fresh[:, :, -12:], whole[:, :, -12:]), "a chunk needs the cache of the frames before it"
