"""Shared helpers for the data tests: tiny worlds and shard writers (sizes chosen for speed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cf_lightning.codecs import PixelCodec, uint8_to_unit
from cf_lightning.data.revisit_world import RevisitWorldConfig, generate_video, latent_truth
from cf_lightning.data.shards import encode_sample, open_shard_writer

# No test may reach the Hugging Face hub; set before huggingface_hub reads its constants.
os.environ["HF_HUB_OFFLINE"] = "1"

TINY_WORLD = RevisitWorldConfig(
    frame_height=16,
    frame_width=16,
    canvas_height=64,
    canvas_width=64,
    num_frames=24,
    num_places=4,
    segment_min=4,
    segment_max=8,
    gap_min=4,
    gap_max=16,
    block_size=4,
    object_size=6,
    num_objects=3,
)


def _write_world_shards(folder: Path, num_shards: int, per_shard: int, prefix: str = "shard") -> list[Path]:
    """Write ``num_shards * per_shard`` tiny revisit-world samples (seed = sample index), patch 4."""
    codec = PixelCodec(patch=4)
    groups = codec.frame_groups(TINY_WORLD.num_frames)
    with open_shard_writer(folder, per_shard, prefix) as sink:
        for seed in range(num_shards * per_shard):
            video = generate_video(TINY_WORLD, seed)
            latents = codec.encode(uint8_to_unit(video.frames).permute(1, 0, 2, 3)[None])[0]
            truth = latent_truth(video, groups)
            meta = {"source": "revisit_world", "seed": seed, "codec": codec.describe()}
            sink.write(
                encode_sample(
                    f"world-{seed:05d}",
                    latents,
                    video.prompt,
                    meta,
                    camera=truth.camera,
                    view=truth.view,
                    place=truth.place,
                )
            )
    return sorted(folder.glob(f"{prefix}-*.tar"))


@pytest.fixture
def tiny_world() -> RevisitWorldConfig:
    """A 16x16-frame, 24-frame world (4 places) for fast shard tests."""
    return TINY_WORLD


@pytest.fixture
def write_world_shards():
    """``write(folder, num_shards, per_shard, prefix="shard") -> shard paths`` (seed = sample index, patch
    4)."""
    return _write_world_shards


@pytest.fixture(scope="session")
def wan_vae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Wan VAE (z_dim 4, 8x spatial, 4x temporal) saved as <root>/vae."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[2.0, 1.5, 1.0, 0.5],
    )
    root = tmp_path_factory.mktemp("wan")
    vae.save_pretrained(root / "vae")  # diffusers pipeline layout: <root>/vae
    return root
