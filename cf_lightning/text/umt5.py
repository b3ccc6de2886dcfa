"""UMT5 (Wan's text encoder) through transformers, loaded from a local directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cf_lightning.codecs.base import resolve_dtype
from cf_lightning.text.base import TextEncoder

__all__ = ["UMT5TextEncoder"]


class UMT5TextEncoder(TextEncoder):
    """Frozen ``UMT5EncoderModel`` + its tokenizer; embeddings past each prompt's end are zero.

    ``path`` is either one folder holding both model and tokenizer files, or a diffusers Wan
    pipeline folder with ``text_encoder/`` and ``tokenizer/`` subfolders. Prompts are padded to
    ``max_length`` (Wan uses 512) and the padded positions zeroed, as Wan's pipelines do, so stored
    and live embeddings agree. Nothing is downloaded (``local_files_only``).
    """

    name = "umt5"

    def __init__(self, path: str, max_length: int = 512, dtype: str | torch.dtype = "float32") -> None:
        super().__init__()
        from transformers import AutoTokenizer, UMT5EncoderModel  # optional dependency: import on use

        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"UMT5 directory {path!r} does not exist")
        split = (root / "text_encoder").is_dir() and (root / "tokenizer").is_dir()
        model_dir, tokenizer_dir = (root / "text_encoder", root / "tokenizer") if split else (root, root)
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.path = path
        self.max_length = max_length
        self.dtype = resolve_dtype(dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        self.model = UMT5EncoderModel.from_pretrained(str(model_dir), dtype=self.dtype, local_files_only=True)
        self.model.requires_grad_(False).eval()
        self.dim = int(self.model.config.d_model)

    def options(self) -> dict[str, Any]:
        return {"path": self.path, "dtype": str(self.dtype).removeprefix("torch.")}

    def train(self, mode: bool = True) -> UMT5TextEncoder:
        """Keep UMT5 in eval mode (its config has dropout): it is frozen, never trained."""
        super().train(mode)
        self.model.eval()
        return self

    def num_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=True).input_ids)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        mask = tokens.attention_mask.to(device).bool()
        hidden = self.model(
            input_ids=tokens.input_ids.to(device), attention_mask=mask.long()
        ).last_hidden_state
        return hidden.float() * mask.unsqueeze(-1), mask
