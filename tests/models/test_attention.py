"""Attention backends agree with SDPA; xformers falls back to SDPA off CUDA with one log line."""

from __future__ import annotations

import logging

import pytest
import torch

from cf_lightning.models import build_wan, teacher_forcing_mask
from cf_lightning.models.attention import attention
from memory_policies import SlowFast


def inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 24, 2, 8, generator=gen) for _ in range(3))
    mask = torch.rand(2, 24, 24, generator=gen) > 0.4
    mask |= torch.eye(24, dtype=torch.bool)
    return q, k, v, mask


@torch.no_grad()
def test_flex_forward_matches_sdpa():
    q, k, v, mask = inputs()
    assert torch.allclose(attention(q, k, v, mask, "flex"), attention(q, k, v, mask, "sdpa"), atol=1e-5)


@torch.no_grad()
def test_flex_backend_model_matches_sdpa_on_a_policy_mask():
    torch.manual_seed(0)
    sdpa, flex = build_wan("tiny").eval(), build_wan("tiny", attention_backend="flex").eval()
    flex.load_state_dict(sdpa.state_dict())
    x, ctx = torch.randn(1, 4, 12, 4, 4), torch.randn(1, 3, 16)
    mask = teacher_forcing_mask(SlowFast(sink=1, slow=2, fast=4, admission="uniform", rope_length=7), 6, 2)
    steps = torch.cat([torch.zeros(1, 6), torch.full((1, 6), 500.0)], 1)
    positions = torch.cat([torch.arange(6)] * 2)
    a = sdpa(x, steps, ctx, positions=positions, frame_mask=mask)
    b = flex(x, steps, ctx, positions=positions, frame_mask=mask)
    assert torch.allclose(a, b, atol=1e-4)


def test_xformers_falls_back_to_sdpa_on_cpu(caplog):
    q, k, v, mask = inputs(1)
    with caplog.at_level(logging.WARNING):
        out = attention(q, k, v, mask, "xformers")
    assert torch.allclose(out, attention(q, k, v, mask, "sdpa"))
    assert sum("xformers" in r.message for r in caplog.records) <= 1


def test_unknown_backend_is_named():
    q, k, v, mask = inputs()
    with pytest.raises(ValueError, match="'cudnn'.*sdpa, flex, xformers"):
        attention(q, k, v, mask, "cudnn")  # type: ignore[arg-type]
