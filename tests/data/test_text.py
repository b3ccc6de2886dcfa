"""Text encoders: the deterministic hash encoder and UMT5 loaded from a local folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cf_lightning.text import HashTextEncoder, UMT5TextEncoder, build_text_encoder

PROMPTS = ["the camera circles through 4 places in a loop", "a short one", ""]


def test_hash_encoder_is_deterministic_and_masked() -> None:
    a, b = HashTextEncoder(dim=8, max_length=6, seed=1), HashTextEncoder(dim=8, max_length=6, seed=1)
    emb, mask = a.encode(PROMPTS)
    emb2, mask2 = b.encode(PROMPTS)
    assert emb.shape == (3, 6, 8) and mask.shape == (3, 6) and mask.dtype == torch.bool
    assert torch.equal(emb, emb2) and torch.equal(mask, mask2)
    assert mask.sum(1).tolist() == [6, 4, 1], "truncated, 3 words + end, end token only"
    assert (emb[~mask] == 0).all()
    other, _ = HashTextEncoder(dim=8, max_length=6, seed=2).encode(PROMPTS)
    assert not torch.equal(emb, other)
    # same word, same vector wherever it appears; case and punctuation ignored
    x, _ = a.encode(["Loop, places!", "places loop"])
    assert torch.equal(x[0, 0], x[1, 1]) and torch.equal(x[0, 1], x[1, 0])


@pytest.fixture(scope="module")
def umt5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random UMT5 encoder and a word-level tokenizer, saved in diffusers' Wan layout."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in " ".join(PROMPTS).split():
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
    root = tmp_path_factory.mktemp("umt5")
    UMT5EncoderModel(config).save_pretrained(root / "text_encoder")
    tokenizer.save_pretrained(root / "tokenizer")
    return root


def test_umt5_encoder_matches_transformers_and_zeroes_padding(umt5_dir: Path) -> None:
    from transformers import AutoTokenizer, UMT5EncoderModel

    encoder = build_text_encoder("umt5", path=str(umt5_dir), max_length=12)
    assert isinstance(encoder, UMT5TextEncoder) and encoder.dim == 16 and encoder.max_length == 12
    encoder.train()  # must stay deterministic: UMT5 keeps dropout off
    emb, mask = encoder.encode(PROMPTS)
    assert emb.shape == (3, 12, 16) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [10, 4, 1]
    assert (emb[~mask] == 0).all()
    tokenizer = AutoTokenizer.from_pretrained(str(umt5_dir / "tokenizer"))
    model = UMT5EncoderModel.from_pretrained(str(umt5_dir / "text_encoder")).eval()
    tokens = tokenizer(PROMPTS[:1], return_tensors="pt")
    with torch.no_grad():
        reference = model(**tokens).last_hidden_state
    torch.testing.assert_close(emb[0, :10], reference[0], rtol=1e-4, atol=1e-5)
    assert torch.equal(encoder.encode(PROMPTS)[0], emb)


def test_umt5_single_folder_and_missing_folder(umt5_dir: Path, tmp_path: Path) -> None:
    import shutil

    flat = tmp_path / "flat"
    shutil.copytree(umt5_dir / "text_encoder", flat)
    shutil.copytree(umt5_dir / "tokenizer", flat, dirs_exist_ok=True)
    assert UMT5TextEncoder(str(flat), max_length=4).encode(["loop"])[0].shape == (1, 4, 16)
    with pytest.raises(FileNotFoundError, match="missing-dir"):
        UMT5TextEncoder(str(tmp_path / "missing-dir"))
