"""Our backbone equals diffusers' ``WanTransformer3DModel`` through the checkpoint converters, both ways."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("accelerate")  # from_pretrained keeps fp32 modules only with accelerate installed

from diffusers.models.embeddings import get_timestep_embedding

from cf_lightning.models import WanConfig, WanModel
from cf_lightning.models.checkpoint import load_wan, save_wan, wan_to_diffusers_state_dict
from cf_lightning.models.wan import sinusoidal_embedding

TOL = 1e-5
FRAMES, HEIGHT, WIDTH = 3, 8, 6  # non-square grid: catches h/w swaps in RoPE and unpatchify
TINY_DIFFUSERS = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "in_channels": 4,
    "out_channels": 4,
    "text_dim": 16,
    "freq_dim": 16,
    "ffn_dim": 48,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 32,
}


def _perturb(module: torch.nn.Module) -> None:
    """Random init leaves norms at 1 and biases at 0, where a swapped norm or bias would go unnoticed."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, FRAMES, HEIGHT, WIDTH, generator=generator)
    return x, torch.tensor([999.0, 500.5]), torch.randn(2, 5, 16, generator=generator)


def _per_token(t: torch.Tensor) -> torch.Tensor:
    """diffusers takes per-token timesteps ``[B, L]`` (the Wan2.2 path) where we take per-frame ``[B, F]``."""
    return t[:, :, None].expand(-1, -1, (HEIGHT // 2) * (WIDTH // 2)).flatten(1)


@pytest.fixture(scope="module")
def reference() -> diffusers.WanTransformer3DModel:
    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(**TINY_DIFFUSERS)
    _perturb(model)
    return model.eval()


def _max_diff(
    ours: WanModel, theirs: diffusers.WanTransformer3DModel, t: torch.Tensor | None = None
) -> float:
    x, t_batch, context = _inputs()
    t_ours = t_batch if t is None else t
    t_theirs = t_batch if t is None else _per_token(t)
    with torch.no_grad():
        expected = theirs(x, t_theirs, context, return_dict=False)[0]
        actual = ours(x, t_ours, context)
    assert actual.shape == expected.shape
    return (actual - expected).abs().max().item()


@pytest.mark.parametrize("max_shard_size", [None, "20KB"])
def test_diffusers_save_pretrained_loads_and_matches(reference, tmp_path, max_shard_size):
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    reference.save_pretrained(tmp_path / "transformer", **kwargs)
    if max_shard_size is not None:
        assert len(list((tmp_path / "transformer").glob("*.safetensors"))) > 1
    model = load_wan(tmp_path / "transformer")
    assert model.config == WanConfig(
        dim=24, ffn_dim=48, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=16, freq_dim=16
    )
    assert _max_diff(model, reference) < TOL


def test_per_frame_timesteps_match_diffusers_per_token_timesteps(reference, tmp_path):
    reference.save_pretrained(tmp_path)
    per_frame = torch.tensor([[999.0, 800.0, 10.0], [1.0, 500.5, 250.0]])
    assert _max_diff(load_wan(tmp_path), reference, per_frame) < TOL


@pytest.mark.parametrize("max_shard_size", [None, 20_000])
def test_our_model_saved_as_diffusers_loads_in_diffusers(tmp_path, max_shard_size):
    torch.manual_seed(0)
    model = WanModel(WanConfig.from_name("tiny"))
    _perturb(model)
    model.eval()
    save_wan(model, tmp_path, layout="diffusers", max_shard_size=max_shard_size)
    theirs = diffusers.WanTransformer3DModel.from_pretrained(tmp_path).eval()
    assert set(theirs.state_dict()) == set(wan_to_diffusers_state_dict(model.state_dict()))
    assert _max_diff(model, theirs) < TOL


def test_timestep_embedding_is_wan_float64_and_diffusers_float32_is_close():
    """Wan2.1 (``sinusoidal_embedding_1d``) computes the timestep angles in float64; diffusers in float32.

    We follow Wan. The gap is ~6e-5 at freq_dim=256 over t in [0, 1000], far below bf16 resolution, and
    the end-to-end outputs above still agree to 1e-5.
    """
    t = torch.linspace(0, 1000, 1001)
    half = 128
    angles = t.double()[:, None] * torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
    wan = torch.cat([angles.cos(), angles.sin()], dim=1)
    ours = sinusoidal_embedding(2 * half, t)
    assert torch.allclose(ours, wan, rtol=0, atol=1e-12)
    theirs = get_timestep_embedding(t, 2 * half, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert (theirs.double() - wan).abs().max() < 1e-4
