"""Attention backends agree with SDPA; xformers falls back to SDPA off CUDA with one log line."""

from __future__ import annotations

import logging

import pytest
import torch

from cf_lightning.models.attention import attention


def inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 24, 2, 8, generator=gen) for _ in range(3))
    mask = torch.rand(2, 24, 24, generator=gen) > 0.4
    mask |= torch.eye(24, dtype=torch.bool)
    return q, k, v, mask


def test_xformers_falls_back_to_sdpa_on_cpu(caplog):
    q, k, v, mask = inputs(1)
    with caplog.at_level(logging.WARNING):
        out = attention(q, k, v, mask, "xformers")
    assert torch.allclose(out, attention(q, k, v, mask, "sdpa"))
    assert sum("xformers" in r.message for r in caplog.records) <= 1


def test_unknown_backend_is_named():
    q, k, v, mask = inputs()
    with pytest.raises(ValueError, match="'cudnn'.*sdpa, xformers"):
        attention(q, k, v, mask, "cudnn")  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="xformers runs on CUDA only")
def test_xformers_matches_sdpa_on_cuda():
    pytest.importorskip("xformers.ops")
    q, k, v, mask = (t.cuda() for t in inputs(2))
    # xformers wants head dims and bias rows it can tile: 8 heads of 64 over 32 tokens
    q, k, v = (t.repeat(1, 1, 4, 8) for t in (q, k, v))
    assert torch.allclose(attention(q, k, v, mask, "xformers"), attention(q, k, v, mask, "sdpa"), atol=1e-4)
