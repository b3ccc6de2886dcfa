"""Random-weight text-to-video parts for the generation benchmarks (nothing downloaded).

The DiT is a named :class:`WanConfig` with 16-channel latents; the VAE a random diffusers
``AutoencoderKLWan`` (the released architecture for ``--config wan2.1-1.3b``, a narrow one otherwise)
saved to a temporary folder and loaded through the ``wan`` codec; the text encoder the weight-free
``hash`` encoder at the DiT's text width (UMT5 runs once per prompt, outside the per-chunk loop).
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cf_lightning.codecs import LatentCodec, build_codec
from cf_lightning.inference import Conditions, PromptSegment, text_conditions
from cf_lightning.models import WanModel, build_wan
from cf_lightning.text import build_text_encoder

LATENT_CHANNELS = 16
NARROW_VAE = {"base_dim": 16, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1}
"""A narrow VAE with Wan's structure (4x temporal, 8x spatial, causal) for CPU-sized runs."""


@dataclass
class Parts:
    model: WanModel
    codec: LatentCodec
    conditions: Conditions


def build_parts(config: str, device: str = "cpu", prompt: str = "a fox runs through fresh snow") -> Parts:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    model = build_wan(config, in_dim=LATENT_CHANNELS, out_dim=LATENT_CHANNELS).eval().to(device)
    vae_options = {} if config.startswith("wan") else NARROW_VAE
    folder = Path(tempfile.mkdtemp(prefix="cf-bench-vae-"))
    AutoencoderKLWan(z_dim=LATENT_CHANNELS, **vae_options).save_pretrained(folder / "vae")
    codec = build_codec("wan", path=str(folder)).to(device)
    text = build_text_encoder("hash", dim=model.config.text_dim, max_length=512)
    return Parts(model, codec, text_conditions(text, [PromptSegment(prompt, 0)], model.config.text_dim))


def interleaved(rounds: int, variants: dict[str, Callable[[], dict[str, float]]]) -> dict[str, list[dict[str, float]]]:
    """Each variant once per round, in turn, so machine load drifts over all of them alike."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            results[name].append(run())
    return results


def medians(results: list[dict[str, float]]) -> dict[str, float]:
    """Per-key median over repeated runs."""
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table, the first column left-aligned and the numbers right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
