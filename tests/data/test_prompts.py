"""``cf-data prompts``: prompt lists -> prompt shards (embeddings, latent shape) + the negative prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cf_lightning.cli.data import main
from cf_lightning.data import ShardDataModule
from cf_lightning.data.prompts import load_negative_prompt, read_prompts
from cf_lightning.text import HashTextEncoder

PROMPTS = ["a red car in the rain", "a cat on a wall", "waves at dusk"]


def test_prompts_command_writes_embeddings_latent_shape_and_negative_prompt(tmp_path: Path) -> None:
    source = tmp_path / "prompts.jsonl"
    source.write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS) + "\n", encoding="utf-8")
    out = tmp_path / "prompts"
    code = main(["prompts", "--input", str(source), "--output", str(out), "--height", "32", "--width", "48",
                 "--codec_options", '{"patch": 8}', "--text_encoder", "hash", "--text_encoder_options",
                 '{"dim": 8}', "--negative_prompt", "blurry, static", "--shard_size", "2"])
    assert code == 0 and len(list(out.glob("prompts-*.tar"))) == 2
    batch = next(iter(ShardDataModule(str(out), batch_size=3, shuffle_buffer=0).train_dataloader()))
    encoder = HashTextEncoder(dim=8)
    order = [PROMPTS[int(key.split("-")[1])] for key in batch["key"]]  # shards are read in shuffled order
    emb, mask = encoder.encode(order)
    assert batch["prompt"] == order
    assert batch["latents"].shape == (3, 3 * 8 * 8, 0, 4, 6)  # pixel codec, patch 8: C = 3 * 8 * 8, no frames
    assert torch.allclose(batch["text_emb"], emb, atol=1e-3) and torch.equal(batch["text_mask"], mask)
    negative = load_negative_prompt(out / "negative_prompt.safetensors", text_dim=8)
    neg, neg_mask = encoder.encode(["blurry, static"])
    assert torch.allclose(negative, neg[0, neg_mask[0]])
    with pytest.raises(ValueError, match="text width is 16"):
        load_negative_prompt(out / "negative_prompt.safetensors", text_dim=16)


def test_prompt_lists_text_and_bad_jsonl(tmp_path: Path, capsys) -> None:
    text = tmp_path / "p.txt"
    text.write_text("first prompt\n\n  second  \n", encoding="utf-8")
    assert read_prompts(text) == ["first prompt", "second"]
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"caption": "no"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 has no non-empty 'prompt'"):
        read_prompts(bad)
    with pytest.raises(SystemExit):
        main(
            [
                "prompts",
                "--input",
                str(text),
                "--output",
                str(tmp_path / "o"),
                "--height",
                "32",
                "--width",
                "48",
            ]
        )
    assert "need --text_encoder" in capsys.readouterr().err
