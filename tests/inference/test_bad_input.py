"""cf-gen refuses bad input with a message naming the value and what is allowed, before generating."""

from __future__ import annotations

import json
import logging

import pytest

from cf_lightning.cli.generate import main as cf_gen
from cf_lightning.inference import read_prompt_switches, text_conditions
from cf_lightning.inference.loading import load_generator
from cf_lightning.models.checkpoint import save_wan
from cf_lightning.text import UMT5TextEncoder
from tests.stand_ins import write_wan_vae

pytest.importorskip("diffusers")
pytest.importorskip("transformers")


@pytest.fixture
def gen(student_run, wan_release, tmp_path):
    """cf-gen on the stand-in run with the release's encoder and VAE; returns the SystemExit message."""

    def run(*extra: str, checkpoint: str | None = None, out: str | None = None, umt5: bool = True,
            frames: str | None = "2") -> str:
        base = {"--checkpoint": checkpoint or str(student_run), "--out": out or str(tmp_path / "out"),
                "--height": "32", "--width": "32"}
        if umt5:
            base["--umt5"] = str(wan_release)
        if frames is not None:
            base["--frames"] = frames
        if "--vae" not in extra:
            base["--vae"] = str(wan_release)
        args = [item for pair in base.items() for item in pair]
        with pytest.raises(SystemExit) as stopped:
            cf_gen([*args, *extra])
        return str(stopped.value)

    return run


def test_unknown_preset(gen):
    assert "unknown preset 'selfforcing'; allowed: self_forcing, longlive, context_forcing, ours" in gen(
        "--prompt", "a lake", "--preset", "selfforcing")


def test_a_checkpoint_of_another_family_or_shape(gen, wan_release, student_run, tmp_path):
    assert "cannot recognise the layout" in gen("--prompt", "a lake", checkpoint=str(wan_release / "vae"))
    folder = save_wan(load_generator(student_run).model, tmp_path / "wan")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
    message = gen("--prompt", "a lake", "--preset", "self_forcing", checkpoint=str(folder))
    assert "checkpoint does not fit" in message and "missing keys" in message and "blocks.2." in message


def test_vae_and_dit_channels_must_agree(gen, tmp_path):
    other = write_wan_vae(tmp_path / "wide-vae", z_dim=8)
    assert "codec 'wan' with options" in (message := gen("--prompt", "a lake", "--vae", str(other)))
    assert "makes 8-channel latents, but the model takes 4" in message


def test_text_encoder_must_match_the_model(gen):
    assert "text encoder 'hash' makes 32-dim embeddings, but the model's text_dim is 16" in gen(
        "--prompt", "a lake", "--text_encoder", "hash", umt5=False)


def test_empty_prompt_and_prompt_files(gen, tmp_path):
    assert "empty prompt" in gen("--prompt", "   ")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "no prompts" in gen("--prompts", str(empty))
    assert "prompt file" in gen("--prompts", str(tmp_path / "missing.jsonl")) and "does not exist" in gen(
        "--prompts", str(tmp_path / "missing.jsonl"))
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"prompt": "a lake", "start_frame": 0}) + "\n"
                     + json.dumps({"prompt": "", "start_frame": 2}) + "\n")
    assert "empty prompt" in gen("--prompts", str(blank))
    assert "give --prompt or --prompts, not both" in gen("--prompt", "a", "--prompts", str(blank))


def test_over_long_prompt_is_truncated_with_a_warning(wan_release, tmp_path, caplog):
    encoder = UMT5TextEncoder(str(wan_release), max_length=4)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a calm lake at dawn the camera pans", "start_frame": 0}) + "\n")
    with caplog.at_level(logging.WARNING):
        conditions = text_conditions(encoder, read_prompt_switches(prompts), 16)
    assert conditions.segments[0][0].shape == (1, 4, 16)
    assert "has 9 tokens; truncated to the encoder's max_length=4" in caplog.text


def test_output_folder_that_cannot_be_written(gen, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert f"cannot write the output folder {blocker / 'out'}" in gen(
        "--prompt", "a lake", out=str(blocker / "out")
    )


def test_length_and_conditions_are_required(gen):
    assert "give the video length: --frames (latent frames) or --seconds" in gen(
        "--prompt", "a lake", frames=None
    )
    assert "3 latent frames is not a positive multiple of chunk_frames=2" in gen(
        "--prompt", "a lake", frames="3"
    )
    assert "nothing to condition on" in gen()
