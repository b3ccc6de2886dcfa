"""Per-frame attention statistics for memory policies that rank what they keep by use (Deep Forcing's
participative compression): how much attention the committed chunk put on each memory frame.

Measured in one layer, once per chunk, on the clean refresh pass and only for a policy whose
:meth:`~memory_policies.MemoryPolicy.attention_spec` asks for it. The attention kernel is not touched:
the layer's self-attention input is captured with a forward pre-hook on its key projection (which runs
on the full and the keys-only refresh alike), and the scores are recomputed from it here. The cost is
one layer's attention scores per chunk, nothing for every other policy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from memory_policies import AttentionSpec


@contextmanager
def capture_attention_input(
    blocks: nn.ModuleList, spec: AttentionSpec | None
) -> Iterator[list[torch.Tensor]]:
    """Collect the self-attention input of block ``spec.layer`` while the context is open (nothing when
    ``spec`` is None)."""
    captured: list[torch.Tensor] = []
    if spec is None:
        yield captured
        return
    if not -len(blocks) <= spec.layer < len(blocks):
        raise ValueError(f"attention statistics layer {spec.layer} outside the model's {len(blocks)} layers")
    projection = blocks[spec.layer].self_attn.k
    handle = projection.register_forward_pre_hook(lambda _module, args: captured.append(args[0].detach()))
    try:
        yield captured
    finally:
        handle.remove()


def frame_attention(queries: torch.Tensor, memory_keys: torch.Tensor, chunk_keys: torch.Tensor,
                    memory_valid: torch.Tensor | None, tokens_per_frame: int, per_token: bool = False
                    ) -> torch.Tensor:
    """Mean softmax attention mass ``[B, n]`` the chunk's queries put on each of ``n`` memory frames
    (``[B, n, tokens_per_frame]``, per token row, with ``per_token``).

    ``queries`` ``[B, Lq, H, D]`` and ``chunk_keys`` ``[B, Lq, H, D]`` rotated to the chunk's positions,
    ``memory_keys`` ``[B, n * tokens_per_frame, H, D]`` rotated to their read positions; ``memory_valid``
    ``[B, n * tokens_per_frame]`` marks padded or pruned token rows (None: all valid). The softmax runs
    over memory and chunk keys, as the model's attention does, so the masses of a video's frames sum
    to at most 1.
    """
    keys = torch.cat([memory_keys, chunk_keys.to(memory_keys.dtype)], dim=1).float()
    logits = torch.einsum("bqhd,bkhd->bhqk", queries.float(), keys) * queries.shape[-1] ** -0.5
    if memory_valid is not None:
        chunk_valid = memory_valid.new_ones(chunk_keys.shape[0], chunk_keys.shape[1])
        valid = torch.cat([memory_valid, chunk_valid], dim=1)
        logits = logits.masked_fill(~valid[:, None, None, :], float("-inf"))
    mass = logits.softmax(-1).mean(dim=(1, 2))  # [B, memory + chunk tokens]
    per_row = mass[:, :memory_keys.shape[1]].unflatten(1, (-1, tokens_per_frame))
    return per_row if per_token else per_row.sum(-1)
