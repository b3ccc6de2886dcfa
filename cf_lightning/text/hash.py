"""A deterministic, weight-free text encoder for tests and CPU recipes."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import torch
from torch import Tensor

from cf_lightning.text.base import TextEncoder

__all__ = ["HashTextEncoder"]

_WORD = re.compile(r"[a-z0-9]+")


class HashTextEncoder(TextEncoder):
    """Lower-cased words hashed into a fixed table of seeded random vectors, plus an end token.

    Same prompt, seed and sizes give the same output on every machine (blake2b word hashes and a
    seeded CPU generator), so text conditioning is exercised without any download. The table is a
    non-persistent buffer: it is rebuilt from the seed, never trained or checkpointed.
    """

    name = "hash"

    END = 0

    def __init__(self, dim: int = 32, max_length: int = 16, seed: int = 0, vocab_size: int = 4096) -> None:
        super().__init__()
        if dim < 1 or max_length < 1:
            raise ValueError(f"dim and max_length must be positive, got dim={dim}, max_length={max_length}")
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (id 0 is the end token), got {vocab_size}")
        self.dim = dim
        self.max_length = max_length
        self.seed = seed
        self.vocab_size = vocab_size
        generator = torch.Generator().manual_seed(seed)
        table = torch.randn(vocab_size, dim, generator=generator)
        self.register_buffer("table", table, persistent=False)

    def options(self) -> dict[str, Any]:
        return {"seed": self.seed, "vocab_size": self.vocab_size}

    def num_tokens(self, prompt: str) -> int:
        return len(_WORD.findall(prompt.lower())) + 1

    def token_ids(self, prompt: str) -> list[int]:
        """Word ids (1..vocab_size-1) truncated so the end token (id 0) always fits."""
        ids = [
            1
            + int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            % (self.vocab_size - 1)
            for word in _WORD.findall(prompt.lower())
        ]
        return ids[: self.max_length - 1] + [self.END]

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            tokens = self.token_ids(prompt)
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = True
        ids, mask = ids.to(self.table.device), mask.to(self.table.device)
        return self.table[ids] * mask.unsqueeze(-1), mask
