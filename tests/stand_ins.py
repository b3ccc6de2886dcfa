"""Tiny real-architecture stand-ins for Wan2.1's parts, written to a folder as the releases lay them out.

The DiT is our ``tiny`` config saved in the original Wan and in the diffusers layout, the VAE a
random diffusers ``AutoencoderKLWan`` and the text encoder a random transformers ``UMT5EncoderModel``
with a word-level tokenizer built offline: the loaders read them exactly as they read the released
weights, with nothing downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

UMT5_DIM = 16
VAE_CHANNELS = 4
PROMPT_TEXT = "a calm lake at dawn the camera pans to a forest then rain starts falling on city streets"
WORDS = PROMPT_TEXT.split()


def write_wan_vae(root: Path, z_dim: int = VAE_CHANNELS) -> Path:
    """A random causal Wan VAE (8x spatial, 4x temporal) saved as ``root/vae``; returns ``root``."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True],
                           latents_mean=[0.1 * i for i in range(z_dim)], latents_std=[1.0 + 0.5 * i for i in range(z_dim)])
    vae.save_pretrained(root / "vae")
    return root


def write_umt5(root: Path, words: list[str] = WORDS) -> Path:
    """A random UMT5 encoder (d_model 16) and a word-level tokenizer in diffusers' ``text_encoder/``
    and ``tokenizer/`` folders; returns ``root``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")
    torch.manual_seed(0)
    config = UMT5Config(vocab_size=len(vocab), d_model=UMT5_DIM, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=8)
    UMT5EncoderModel(config).save_pretrained(root / "text_encoder")
    tokenizer.save_pretrained(root / "tokenizer")
    return root
