"""Attention backends behind one function: SDPA (default) and xformers (optional, CUDA).

A mask says which keys each query may see. The model builds it once, where its structure is known,
as a :class:`BlockMask` (frame-level for masked full-sequence forwards, key padding for a streamed
chunk reading a partly filled memory or for padded text) and every layer of that forward shares it.
Each backend derives the form it needs on first use and keeps it: SDPA a boolean mask (a broadcast
view when all queries share one row), xformers an additive bias in the query's dtype, memory-aligned
as its kernels require and broadcast over heads. Where a mask lets every query see every key, xformers
gets no bias at all; a forward without padding (a streamed chunk over a full memory) passes no mask.
A plain boolean ``[B, Lq, Lk]`` tensor is accepted too (True = may attend).

SDPA is the only path with a CPU backward, so it is the default everywhere; xformers is an
acceleration that must give the same numbers, and falls back to SDPA (one log line) without CUDA or
without the package.

There is no FlexAttention backend: on CPU, compiled ``flex_attention`` with its block mask built once
is 2.6 to 21 times slower than SDPA with a dense mask at the shapes these models attend over (a
streamed chunk reading its memory, the stage-1 teacher-forcing mask; 48 to 384 keys), costs 16 to 39 s
of compilation per shape and has no CPU backward (``benchmarks/attention.py``). These sequences are
no longer than a few of flex's 128-token blocks, so its block sparsity has little to skip.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

Backend = Literal["sdpa", "xformers"]
BACKENDS: tuple[str, ...] = ("sdpa", "xformers")
#: xformers reads a tensor bias in rows of 128 bits: every stride but the last a multiple of this many bits.
XFORMERS_ALIGN_BITS = 128
log = logging.getLogger(__name__)


@dataclass(eq=False)
class BlockMask:
    """Who may attend to whom, block by block: ``blocks[b, i, j]`` lets query block ``i`` of video ``b``
    see key block ``j``; query blocks are ``query_block`` tokens long, key blocks ``key_block`` tokens.

    A video's frames are blocks of its tokens, so a frame mask is a block mask with the frame's token
    count on both sides; key padding is one query block spanning every query. ``blocks`` may have a
    batch of 1, shared by every video.
    """

    blocks: torch.Tensor  # [B or 1, query blocks, key blocks], bool
    query_block: int
    key_block: int
    _forms: dict[object, torch.Tensor] = field(default_factory=dict, repr=False)
    _allows_all: bool | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.blocks.ndim != 3 or self.blocks.dtype != torch.bool:
            raise ValueError(f"blocks must be a boolean [B, query blocks, key blocks] tensor, got "
                             f"{self.blocks.dtype} {tuple(self.blocks.shape)}")
        if self.query_block < 1 or self.key_block < 1:
            raise ValueError(f"block sizes must be >= 1, got {self.query_block}, {self.key_block}")

    @classmethod
    def frames(cls, frame_mask: torch.Tensor, tokens_per_frame: int) -> BlockMask:
        """A frame mask ``[F, F]`` or ``[B, F, F]`` (True where query frame i sees key frame j) over videos
        of ``tokens_per_frame`` tokens per frame."""
        blocks = frame_mask if frame_mask.ndim == 3 else frame_mask[None]
        return cls(blocks.bool(), tokens_per_frame, tokens_per_frame)

    @classmethod
    def keys(cls, valid: torch.Tensor, queries: int, key_block: int = 1) -> BlockMask:
        """Key padding: every one of ``queries`` queries sees the keys whose block is ``valid [B, key
        blocks]`` (blocks of ``key_block`` tokens)."""
        return cls(valid.bool()[:, None, :], queries, key_block)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(batch of the blocks, query tokens, key tokens)``."""
        batch, query_blocks, key_blocks = self.blocks.shape
        return batch, query_blocks * self.query_block, key_blocks * self.key_block

    def allows_all(self) -> bool:
        """Whether every query may see every key (then a backend needs no mask)."""
        if self._allows_all is None:
            self._allows_all = bool(self.blocks.all())
        return self._allows_all

    def dense(self, batch: int | None = None) -> torch.Tensor:
        """The boolean ``[B, Lq, Lk]`` token mask (True = may attend); a broadcast view over the queries
        when they share one block, and over the batch when the blocks do (``batch`` sets its size)."""
        key = ("dense", batch)
        if key not in self._forms:
            keys = self.blocks.repeat_interleave(self.key_block, dim=2)
            _, queries, _ = self.shape
            if self.blocks.shape[1] == 1:
                dense = keys.expand(-1, queries, -1)
            else:
                dense = keys.repeat_interleave(self.query_block, dim=1)
            self._forms[key] = dense if batch is None else dense.expand(batch, -1, -1)
        return self._forms[key]

    def xformers_bias(self, q: torch.Tensor) -> torch.Tensor | None:
        """The additive bias xformers reads for queries ``q [B, Lq, H, D]``: ``[B, H, Lq, Lk]`` in ``q``'s
        dtype, 0 where attention is allowed and -inf elsewhere, or ``None`` when everything is allowed.

        Rows are allocated at a multiple of xformers' alignment and sliced back to ``Lk`` (the layout its
        kernels require); heads, shared query rows and a shared batch are stride-0 broadcasts, so the
        stored bias is ``[B, 1, Lq or 1, Lk]``."""
        if self.allows_all():
            return None
        batch, _, heads, _ = q.shape
        key = ("xformers", q.dtype, q.device, batch, heads)
        if key not in self._forms:
            self._forms[key] = aligned_bias(self.blocks, self.query_block, self.key_block, q.dtype,
                                            q.device).expand(batch, heads, self.shape[1], -1)
        return self._forms[key]


def aligned_bias(blocks: torch.Tensor, query_block: int, key_block: int, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
    """``[B, 1, Lq or 1, Lk]`` additive bias of a block mask (one query row when all queries share a
    block), its rows padded to xformers' alignment in memory and sliced back."""
    batch, query_blocks, key_blocks = blocks.shape
    keys = key_blocks * key_block
    align = max(1, XFORMERS_ALIGN_BITS // torch.finfo(dtype).bits)
    padded = -(-keys // align) * align
    rows = 1 if query_blocks == 1 else query_blocks * query_block
    storage = torch.zeros(batch, 1, rows, padded, dtype=dtype, device=device)
    allowed = blocks.to(device).repeat_interleave(key_block, dim=2)
    if query_blocks > 1:
        allowed = allowed.repeat_interleave(query_block, dim=1)
    bias = storage[..., :keys]
    bias.masked_fill_(~allowed[:, None], float("-inf"))
    return bias


Mask = torch.Tensor | BlockMask | None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Mask = None,
              backend: Backend = "sdpa") -> torch.Tensor:
    """``q [B, Lq, H, D]``, ``k, v [B, Lk, H, D]`` -> ``[B, Lq, H, D]``; ``mask`` as the module docstring
    says."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if backend == "xformers" and _xformers_usable(q):
        structured = mask if not isinstance(mask, torch.Tensor) else BlockMask(mask.bool(), 1, 1)
        return _xformers(q, k, v, None if structured is None else structured.xformers_bias(q))
    dense = mask.dense(q.shape[0]) if isinstance(mask, BlockMask) else mask
    attn_mask = None if dense is None else dense[:, None]
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask
    )
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


def _xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    import xformers.ops as xops

    return xops.memory_efficient_attention(q, k, v, attn_bias=bias)
