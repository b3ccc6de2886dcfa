"""Attention backends behind one function: SDPA (default), FlexAttention, xformers (optional).

Masks are boolean ``[B, Lq, Lk]`` (True = may attend) or ``None``. SDPA with a dense mask is the
only path with a CPU backward, so it is the default everywhere; FlexAttention and xformers are
accelerations that must give the same numbers.
"""

from __future__ import annotations

import functools
import logging
from typing import Literal

import torch
import torch.nn.functional as F

Backend = Literal["sdpa", "flex", "xformers"]
BACKENDS: tuple[str, ...] = ("sdpa", "flex", "xformers")
log = logging.getLogger(__name__)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              backend: Backend = "sdpa") -> torch.Tensor:
    """``q [B, Lq, H, D]``, ``k, v [B, Lk, H, D]`` -> ``[B, Lq, H, D]``."""
    if backend == "xformers" and _xformers_usable(q):
        return _xformers(q, k, v, mask)
    if backend == "flex" and not (torch.is_grad_enabled() and q.requires_grad and q.device.type == "cpu"):
        return _flex(q, k, v, mask)
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    attn_mask = None if mask is None else mask[:, None]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask)
    return out.transpose(1, 2)


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    block_mask = None
    if mask is not None:
        dense = mask

        def mask_mod(b, h, q_idx, kv_idx):
            return dense[b, q_idx, kv_idx]

        block_mask = create_block_mask(mask_mod, B=mask.shape[0], H=None, Q_LEN=q.shape[1], KV_LEN=k.shape[1],
                                       device=q.device)
    out = flex_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask)
    return out.transpose(1, 2)


@functools.cache
def _xformers_available_on(device_type: str) -> bool:
    if device_type != "cuda":
        log.warning("attention backend 'xformers' needs CUDA (got %s); falling back to sdpa", device_type)
        return False
    try:
        import xformers.ops  # noqa: F401
    except Exception as error:  # noqa: BLE001 - any import failure means "not usable here"
        log.warning("attention backend 'xformers' unavailable (%s); falling back to sdpa", error)
        return False
    return True


def _xformers_usable(q: torch.Tensor) -> bool:
    return _xformers_available_on(q.device.type)


def _xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    import xformers.ops as xops

    bias = None
    if mask is not None:
        heads = q.shape[2]
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
        bias = bias[:, None].expand(-1, heads, -1, -1)
    return xops.memory_efficient_attention(q, k, v, attn_bias=bias)
