"""The text encoder interface.

Models consume ``(embeddings [B, L, dim], mask [B, L])`` and never see tokenizers, so a seeded
hash encoder (tests, CPU recipes) and UMT5 (Wan) are interchangeable, and shards may carry the
embeddings precomputed by either.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from cf_lightning.components import build_component

__all__ = ["TextEncoder", "build_text_encoder"]


class TextEncoder(nn.Module, ABC):
    """Encodes prompts to ``[B, max_length, dim]`` embeddings and a ``[B, max_length]`` bool mask.

    Padded positions are zero in the embeddings and False in the mask; every prompt keeps at least
    one valid position (an end token), so attention over the text is never empty. ``name`` is the
    short name shard metadata records (:meth:`describe`) and :func:`build_text_encoder` accepts.
    """

    name: str = ""
    dim: int
    max_length: int

    @abstractmethod
    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Return ``(embeddings [B, max_length, dim] float, mask [B, max_length] bool)``."""

    @abstractmethod
    def options(self) -> dict[str, Any]:
        """Constructor arguments, so shard metadata records how embeddings were made."""

    @abstractmethod
    def num_tokens(self, prompt: str) -> int:
        """Tokens ``prompt`` makes before truncation (end token included): above ``max_length`` it is cut."""

    def describe(self) -> dict[str, Any]:
        """``{"name", "dim", "max_length", **options}`` for shard metadata."""
        return {"name": self.name, "dim": self.dim, "max_length": self.max_length, **self.options()}


def build_text_encoder(spec: str | Mapping[str, Any] | TextEncoder, **options: Any) -> TextEncoder:
    """A text encoder from a ``class_path``/``init_args`` spec, a class path or name, or a short name
    such as ``"hash"`` with ``options``; see :mod:`cf_lightning.components`."""
    return build_component(TextEncoder, spec, **options)
