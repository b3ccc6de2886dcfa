"""Tiny random DINOv2 / CLIP checkpoints written to a directory, loaded offline like real ones."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
_CHARS = list(string.ascii_lowercase + string.digits + ".,!?'-")
BOS, EOS = 2 * len(_CHARS), 2 * len(_CHARS) + 1


def tiny_dinov2(path: Path) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                          image_size=32, patch_size=8)
    Dinov2Model(config).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": 36},
        "do_center_crop": True, "crop_size": {"height": 32, "width": 32}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, **IMAGENET}))
    return path


def _character_tokenizer(path: Path) -> None:
    """A CLIP BPE tokenizer with one token per character (no merges): enough for test prompts."""
    from transformers import CLIPTokenizer

    vocab = {c: i for i, c in enumerate(_CHARS)}
    vocab.update({c + "</w>": len(_CHARS) + i for i, c in enumerate(_CHARS)})
    vocab.update({"<|startoftext|>": BOS, "<|endoftext|>": EOS})
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt")).save_pretrained(path)


def tiny_clip(path: Path, projection_dim: int = 12) -> Path:
    """A random CLIP (image and text towers, projections) with its processor and tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    path.mkdir(parents=True, exist_ok=True)
    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": EOS + 1, "bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": EOS},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=projection_dim)
    CLIPModel(config).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 32},
        "crop_size": {"height": 32, "width": 32}, "do_center_crop": True, **IMAGENET}))
    _character_tokenizer(path)
    return path


@torch.no_grad()
def aligned_clip(path: Path, pairs: dict[str, torch.Tensor]) -> Path:
    """A tiny CLIP whose projections are solved so that image ``pairs[prompt]`` (``[3, H, W]`` in [0, 1])
    embeds exactly onto the text embedding of ``prompt``, and the pairs' embeddings are orthonormal:
    each image agrees with its own prompt (cosine 1) and not with the others (cosine 0)."""
    from cf_lightning.metrics import HFImageExtractor, HFTextExtractor

    tiny_clip(path, projection_dim=max(4, len(pairs)))
    images = HFImageExtractor(path)
    texts = HFTextExtractor(path, model=images.model)
    model = images.model
    pixels = images.preprocess(torch.stack(list(pairs.values())))
    pooled_images = model.vision_model(pixel_values=pixels).pooler_output  # [P, hidden]
    tokens = texts.tokenizer(list(pairs), padding=True, return_tensors="pt")
    pooled_texts = model.text_model(**tokens).pooler_output
    targets = torch.eye(model.config.projection_dim)[:len(pairs)]  # [P, D] orthonormal embeddings
    model.visual_projection.weight.copy_(targets.T @ torch.linalg.pinv(pooled_images.T))
    model.text_projection.weight.copy_(targets.T @ torch.linalg.pinv(pooled_texts.T))
    model.save_pretrained(path)
    return path
