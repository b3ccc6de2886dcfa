"""Attention backends behind one function: SDPA (default) and xformers (optional, CUDA).

Masks are boolean ``[B, Lq, Lk]`` (True = may attend) or ``None``. SDPA with a dense mask is the
only path with a CPU backward, so it is the default everywhere; xformers is an acceleration that must
give the same numbers.

There is no FlexAttention backend: on CPU, compiled ``flex_attention`` with its block mask built once
is 2.6 to 21 times slower than SDPA with a dense mask at the shapes these models attend over (a
streamed chunk reading its memory, the stage-1 teacher-forcing mask; 48 to 384 keys), costs 16 to 39 s
of compilation per shape and has no CPU backward (``benchmarks/attention.py``). These sequences are
no longer than a few of flex's 128-token blocks, so its block sparsity has little to skip.
"""

from __future__ import annotations

import functools
import logging
from typing import Literal

import torch
import torch.nn.functional as F

Backend = Literal["sdpa", "xformers"]
BACKENDS: tuple[str, ...] = ("sdpa", "xformers")
log = logging.getLogger(__name__)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              backend: Backend = "sdpa") -> torch.Tensor:
    """``q [B, Lq, H, D]``, ``k, v [B, Lk, H, D]`` -> ``[B, Lq, H, D]``."""
    if backend == "xformers" and _xformers_usable(q):
        return _xformers(q, k, v, mask)
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    attn_mask = None if mask is None else mask[:, None]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask)
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
