"""cf-gen: re-cache equals streaming under the new prompt; a switched long video is written."""

from __future__ import annotations

import json

import av
import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cf_lightning.cli.generate import main as cf_gen
from cf_lightning.inference import (
    Conditions,
    InferencePreset,
    parse_policy,
    read_prompt_switches,
    recache,
    stream_chunks,
)
from cf_lightning.models import build_wan
from cf_lightning.stages import ContextForcingModule, RolloutConfig
from memory_policies import SlidingWindow, SlowFast

POLICY = SlowFast(sink=1, slow=2, fast=4, threshold=0.9, interval=1, rope_length=7)


def stream_clean(model, policy, history, context, cond):
    memory = model.new_memory(policy, 1, 2, (4, 4))
    for start in range(0, history.shape[2], 2):
        model(history[:, :, start:start + 2], torch.zeros(1, 2), context, memory=memory,
              frame_cond=cond[:, start:start + 2], mode="predict_commit")
    return memory


@torch.no_grad()
def test_recache_equals_streaming_the_history_under_the_new_prompt():
    torch.manual_seed(0)
    model = build_wan("tiny", frame_cond_dim=2).eval()
    history, cond = torch.randn(1, 4, 10, 4, 4), torch.randn(1, 10, 2)
    old, new = torch.randn(1, 3, 16), torch.randn(1, 3, 16)
    memory = stream_clean(model, POLICY, history, old, cond)
    fresh = recache(model, memory, history.split(2, dim=2), new, cond, (4, 4))
    reference = stream_clean(model, POLICY, history, new, cond)
    read, expected = fresh.read(), reference.read()
    assert read.views == expected.views
    for layer in range(2):
        assert torch.equal(fresh.gather(layer, read)[0], reference.gather(layer, expected)[0])
    # layer 0 keys come before any cross-attention; deeper ones carry the old prompt until re-cached
    assert not torch.allclose(fresh.gather(1, read)[0], memory.gather(1, memory.read())[0])


def test_prompt_switch_file_is_validated(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "a", "start_frame": 0}\n{"prompt": "b", "start_frame": 6}\n')
    assert [s.start_frame for s in read_prompt_switches(good)] == [0, 6]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "start_frame": 4}\n')
    with pytest.raises(ValueError, match="must begin at 0"):
        read_prompt_switches(bad)
    bad.write_text('{"text": "a"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_prompt_switches(bad)


def test_policy_override_parses_like_a_recipe():
    policy = parse_policy('{"class_path": "sliding_window", "init_args": {"sink": 1, "window": 4}}')
    assert isinstance(policy, SlidingWindow) and policy.window == 4


@torch.no_grad()
def test_stream_video_with_a_switch_has_the_requested_length():
    torch.manual_seed(0)
    model = build_wan("tiny", frame_cond_dim=2).eval()
    conditions = Conditions([(torch.randn(1, 3, 16), 0), (torch.randn(1, 3, 16), 6)], torch.randn(1, 10, 2))
    preset = InferencePreset("test", chunk_frames=2, denoising_steps=2, shift=5.0, make_memory=lambda: POLICY,
                             source="this test")
    chunks = list(stream_chunks(model, preset, conditions, 10, (4, 4)))
    assert [start for start, _, _ in chunks] == [0, 2, 4, 6, 8]
    assert torch.cat([chunk for _, chunk, _ in chunks], dim=2).shape == (1, 4, 10, 4, 4)


WORLD = {"frame_height": 16, "frame_width": 16, "canvas_height": 64, "canvas_width": 64, "num_frames": 16,
         "segment_min": 2, "segment_max": 4, "num_places": 4, "gap_min": 2, "gap_max": 8, "object_size": 8,
         "block_size": 4}


def tiny_checkpoint(tmp_path):
    """A ContextForcingModule checkpoint for 48-channel latents (pixel codec, patch 4), no data module."""
    torch.manual_seed(0)
    module = ContextForcingModule(backbone="tiny", latent_channels=48, text_dim=32, frame_cond_dim=2,
                                  memory=POLICY, denoising_steps=2,
                                  rollout=RolloutConfig(min_chunks=2, max_chunks=2, target_chunks=1))
    trainer = L.Trainer(max_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(module, DataLoader([{"latents": torch.zeros(48, 4, 4, 4)}]))
    checkpoint = tmp_path / "cf.ckpt"
    trainer.save_checkpoint(checkpoint)
    return checkpoint


def test_cf_gen_writes_a_long_video_from_a_checkpoint(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path)
    switches = tmp_path / "switch.jsonl"
    switches.write_text(json.dumps({"prompt": "a calm loop", "start_frame": 0}) + "\n"
                        + json.dumps({"prompt": "now wander", "start_frame": 8}) + "\n")
    cf_gen(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), "--world_seed", "3",
            "--world", json.dumps(WORLD), "--codec_options", '{"patch": 4}', "--prompts", str(switches),
            "--memory", "sliding_window"])
    latents = np.load(tmp_path / "out" / "latents.npy")
    assert latents.shape == (48, 16, 4, 4)
    with av.open(str(tmp_path / "out" / "video.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 16
    with Image.open(tmp_path / "out" / "memory_timeline.png") as timeline:
        assert timeline.size[0] > 100 and timeline.size[1] > 100


#: Data module settings as cf-fit saves them (class_path specs), and as checkpoints made before
#: codecs and text encoders were chosen by class_path recorded them (short names + options).
TRAINED_DATA = {
    "class_path": {
        "codec": {"class_path": "cf_lightning.codecs.PixelCodec", "init_args": {"patch": 4}},
        "text_encoder": {"class_path": "cf_lightning.text.HashTextEncoder", "init_args": {"dim": 32}},
    },
    "short_name": {"codec": "pixel", "codec_options": {"patch": 4}, "text_encoder": "hash",
                   "text_encoder_options": None},
}


@pytest.mark.parametrize("recorded", sorted(TRAINED_DATA))
def test_cf_gen_defaults_to_the_data_the_run_trained_on(recorded, tmp_path):
    """The data module's settings saved by cf-fit pick the world, codec and text encoder; --world
    overrides single fields of that world."""
    checkpoint = tiny_checkpoint(tmp_path)
    saved = torch.load(checkpoint, weights_only=False)
    saved["datamodule_hyper_parameters"] = {**TRAINED_DATA[recorded], "world": {**WORLD, "num_frames": 12}}
    torch.save(saved, checkpoint)
    cf_gen(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "trained"), "--world_seed", "3"])
    assert np.load(tmp_path / "trained" / "latents.npy").shape == (48, 12, 4, 4)
    cf_gen(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "longer"), "--world_seed", "3",
            "--world", '{"num_frames": 16}'])
    assert np.load(tmp_path / "longer" / "latents.npy").shape == (48, 16, 4, 4)
    with pytest.raises(
        SystemExit, match="makes 192-channel latents, but the model takes 48; the run trained with codec"
    ):
        cf_gen(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "wrong"), "--world_seed", "3",
                "--codec_options", '{"patch": 8}'])
