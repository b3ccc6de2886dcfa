"""The DataModules under Lightning: YAML construction, the in-memory world, a fit over shards."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from jsonargparse import ArgumentParser

from cf_lightning.data import RevisitWorldConfig, RevisitWorldDataModule, ShardDataModule, generate_video

SMALL = RevisitWorldConfig(num_frames=32)


def test_revisit_world_module_batches() -> None:
    dm = RevisitWorldDataModule(
        world=SMALL, num_videos=8, batch_size=4, clip_frames=8, val_num_frames=48, num_val_videos=2
    )
    train = next(iter(dm.train_dataloader()))
    assert train["latents"].shape == (4, 192, 8, 4, 4)
    assert train["camera"].shape == (4, 8, 2) and train["first_visit"].shape == (4, 8)
    assert train["text_emb"].shape == (4, 16, 32) and train["text_mask"].any(1).all()
    assert len(train["prompt"]) == 4
    val = next(iter(dm.val_dataloader()))
    assert val["latents"].shape == (2, 192, 48, 4, 4), "evaluation: whole, longer videos"
    assert val["key"] == [f"world-{10**9}", f"world-{10**9 + 1}"]
    video = generate_video(dm.val_world, 10**9)
    assert torch.equal(val["first_visit"][0], video.first_visit) and torch.equal(
        val["camera"][0], video.camera
    )


def test_revisit_world_module_rejects_overlapping_seeds() -> None:
    with pytest.raises(ValueError, match=r"val_seeds overlap.*\[3, 5\]"):
        RevisitWorldDataModule(num_videos=8, batch_size=2, val_seeds=[3, 5, 100])
    with pytest.raises(ValueError, match="clip_frames=99"):
        RevisitWorldDataModule(world=SMALL, num_videos=2, batch_size=2, clip_frames=99)


def test_modules_build_from_yaml(tmp_path: Path, write_world_shards) -> None:
    write_world_shards(tmp_path, num_shards=1, per_shard=2)
    parser = ArgumentParser()
    parser.add_class_arguments(RevisitWorldDataModule, "world_data")
    parser.add_class_arguments(ShardDataModule, "shard_data")
    cfg = parser.parse_string(
        f"""
        world_data:
          world: {{num_frames: 24, trajectories: [loop]}}
          num_videos: 4
          batch_size: 2
          codec: {{class_path: PixelCodec, init_args: {{patch: 4}}}}
          text_encoder: null
        shard_data:
          train_urls: {tmp_path}
          batch_size: 2
          clip_frames: 6
          text_encoder:
            class_path: cf_lightning.text.HashTextEncoder
            init_args: {{dim: 4, max_length: 8}}
        """
    )
    built = parser.instantiate(cfg)
    world, shards = built.world_data, built.shard_data
    assert world.world.trajectories == ("loop",) and world.codec.patch == 4 and world.text_encoder is None
    batch = next(iter(shards.train_dataloader()))
    assert batch["latents"].shape[2] == 6 and batch["text_emb"].shape == (2, 8, 4)


class _Probe(L.LightningModule):
    """Fits a scalar to the latents' mean: enough to run Lightning's loops over our loaders."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[str] = []

    def training_step(self, batch, _):
        self.seen += batch["key"]
        return (batch["latents"].mean() - self.w) ** 2

    def validation_step(self, batch, _):
        self.log("val_loss", (batch["latents"].mean() - self.w) ** 2, batch_size=len(batch["key"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_fit_over_shards_counts_and_logs_skipped_samples(tmp_path: Path, write_world_shards) -> None:
    shards = write_world_shards(tmp_path / "data", num_shards=4, per_shard=2)
    shards[2].write_bytes(b"\0garbage" * 100)
    dm = ShardDataModule(str(tmp_path / "data"), val_urls=str(shards[0]), batch_size=2, samples_per_epoch=6)
    model = _Probe()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=L.pytorch.loggers.CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    with pytest.warns(UserWarning, match="shard-000002.tar"):
        trainer.fit(model, dm)
    assert trainer.global_step == 6, "3 batches per epoch from len(loader), 2 epochs"
    assert dm.num_skipped >= 1 and not any(k in {"world-00004", "world-00005"} for k in model.seen)
    with open(next(tmp_path.rglob("metrics.csv"))) as f:
        logged = [float(row["data/skipped"]) for row in csv.DictReader(f) if row.get("data/skipped")]
    assert logged and logged[-1] == dm.num_skipped
