"""Bad input fails before training with one clear message; NaN stops a run and keeps the last good
checkpoint. Each case here is a row of docs/reliability.md."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from cf_lightning.data.datamodules import RevisitWorldDataModule, ShardDataModule
from cf_lightning.models import build_wan
from cf_lightning.models.checkpoint import save_wan
from cf_lightning.stages import ContextForcingModule, TeacherModule
from cf_lightning.stages.common import load_backbone_weights
from memory_policies import SlowFast, build_policy
from tests.stages.conftest import CHANNELS, TEXT_DIM, RandomClips


def test_unknown_policy_name_lists_the_allowed_ones():
    with pytest.raises(KeyError, match=r"unknown memory policy 'slowfast'; available: .*slow_fast"):
        build_policy("slowfast")


def test_wrong_policy_argument_is_named():
    with pytest.raises(TypeError, match="bad init_args for memory policy 'sliding_window'.*windw"):
        build_policy("sliding_window", windw=4)


def test_budget_that_cannot_fit_names_the_numbers():
    with pytest.raises(ValueError, match="attends to up to 21 frames .* rope_length is 16"):
        ContextForcingModule(latent_channels=CHANNELS, text_dim=TEXT_DIM, chunk_frames=3,
                             memory=SlowFast(sink=3, slow=12, fast=6, rope_length=16))


def test_fast_window_below_the_chunk_is_rejected():
    with pytest.raises(ValueError, match="fast=2 must be >= chunk_frames=3"):
        ContextForcingModule(latent_channels=CHANNELS, text_dim=TEXT_DIM, chunk_frames=3,
                             memory=SlowFast(sink=1, slow=2, fast=2, rope_length=8))


def test_latents_that_do_not_match_the_model_are_named():
    model = build_wan("tiny", in_dim=CHANNELS, out_dim=CHANNELS)
    with pytest.raises(ValueError, match=r"x must be \[B, 4, F, H, W\], got \(1, 192, 2, 4, 4\)"):
        model(torch.zeros(1, 192, 2, 4, 4), torch.zeros(1), torch.zeros(1, 3, 16))


def test_codec_and_model_shapes_are_linked_from_the_data():
    data = RevisitWorldDataModule(num_videos=2, batch_size=2, num_val_videos=1)
    assert (data.latent_channels, data.text_dim, data.frame_cond_dim) == (192, 32, 2)


def test_checkpoint_of_another_architecture_names_the_parameter(tmp_path):
    small = build_wan("small", in_dim=CHANNELS, out_dim=CHANNELS, text_dim=TEXT_DIM)
    path = save_wan(small, tmp_path / "small.safetensors")
    tiny = build_wan("tiny", in_dim=CHANNELS, out_dim=CHANNELS, text_dim=TEXT_DIM)
    with pytest.raises(ValueError, match="patch_embedding.weight"):
        load_backbone_weights(tiny, str(path))


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.ckpt"):
        load_backbone_weights(build_wan("tiny"), str(tmp_path / "nowhere.ckpt"))


def test_empty_shard_list_fails_before_training():
    with pytest.raises(ValueError, match="train_urls"):
        ShardDataModule(train_urls=[])


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    module = TeacherModule(latent_channels=CHANNELS, text_dim=TEXT_DIM, frame_cond_dim=2, target_frames=4)
    good = DataLoader(RandomClips(num=2, frames=4), batch_size=2)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(module, good)
    checkpoint = tmp_path / "good.ckpt"
    trainer.save_checkpoint(checkpoint)
    saved = checkpoint.read_bytes()
    before = [p.detach().clone() for p in module.model.parameters()]
    bad = RandomClips(num=2, frames=4)
    bad.latents[0, 0, 0, 0, 0] = float("nan")
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 1: \{'loss': nan\}"):
        trainer.fit(module, DataLoader(bad, batch_size=2), ckpt_path=checkpoint, weights_only=False)
    assert checkpoint.read_bytes() == saved
    assert all(torch.equal(a, b) for a, b in zip(before, module.model.parameters()))
