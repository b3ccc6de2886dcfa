"""The text encoder interface and its registry.

Models consume ``(embeddings [B, L, dim], mask [B, L])`` and never see tokenizers, so a seeded
hash encoder (tests, CPU recipes) and UMT5 (Wan) are interchangeable, and shards may carry the
embeddings precomputed by either.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from cf_lightning.registry import Registry

__all__ = ["TEXT_ENCODERS", "TextEncoder", "build_text_encoder", "register_text_encoder"]


class TextEncoder(nn.Module, ABC):
    """Encodes prompts to ``[B, max_length, dim]`` embeddings and a ``[B, max_length]`` bool mask.

    Padded positions are zero in the embeddings and False in the mask; every prompt keeps at least
    one valid position (an end token), so attention over the text is never empty.
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


_REGISTRY: Registry[TextEncoder] = Registry("text encoder")
TEXT_ENCODERS = _REGISTRY.classes


def register_text_encoder(name: str) -> Callable[[type[TextEncoder]], type[TextEncoder]]:
    """Class decorator adding a text encoder under ``name`` for configs and ``cf-data``."""
    return _REGISTRY.register(name)


def build_text_encoder(name: str, **options: Any) -> TextEncoder:
    """Instantiate the text encoder registered as ``name`` with ``options``."""
    return _REGISTRY.build(name, **options)
