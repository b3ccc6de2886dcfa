"""Tiny random stand-ins for Wan's VAE and UMT5 text encoder, saved in diffusers' pipeline layout.

Built offline from small configs (nothing is downloaded), so data and training code can be run on
the real file formats in seconds. One root folder can hold both (``vae/``, ``text_encoder/``,
``tokenizer/``), as a diffusers Wan pipeline folder does.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch


def save_tiny_wan_vae(root: Path) -> Path:
    """A random Wan VAE (z_dim 4, 8x spatial, 4x temporal) saved as ``root/vae``; returns ``root``."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[2.0, 1.5, 1.0, 0.5],
    )
    vae.save_pretrained(root / "vae")
    return root


def save_tiny_umt5(root: Path, texts: Iterable[str]) -> Path:
    """A random UMT5 encoder (d_model 16) and a word-level tokenizer over the words of ``texts``, saved as
    ``root/text_encoder`` and ``root/tokenizer``; returns ``root``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in " ".join(texts).split():
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = UMT5Config(
        vocab_size=len(vocab),
        d_model=16,
        d_kv=4,
        d_ff=32,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.5,
    )
    UMT5EncoderModel(config).save_pretrained(root / "text_encoder")
    tokenizer.save_pretrained(root / "tokenizer")
    return root
