"""The shard training loader resumes mid-epoch with the same batches (keys, crops) as an uninterrupted one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from cf_lightning.data import ShardDataModule
from cf_lightning.data.shards import ShardLoader

#: 3 shards x 2 samples, batch 2: 3 batches a pass; 8 samples an epoch: 4 batches, so epochs and
#: passes end at different batches.
OPTIONS = {"batch_size": 2, "shuffle_buffer": 4, "clip_frames": 4, "seed": 3}


@pytest.fixture
def shards(tmp_path: Path, write_world_shards) -> Path:
    write_world_shards(tmp_path / "shards", num_shards=3, per_shard=2)
    return tmp_path / "shards"


def take(loader: ShardLoader, count: int) -> list[dict]:
    """The next ``count`` batches, iterating the loader again at each epoch end as Lightning does; the
    last iterator is left suspended after its batch, as Lightning leaves it when it saves a checkpoint."""
    batches: list[dict] = []
    while len(batches) < count:
        for batch in loader:
            batches.append(batch)
            if len(batches) == count:
                break
    return batches


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["key"] == y["key"] and torch.equal(x["latents"], y["latents"]) for x, y in zip(a, b, strict=True)
    )


def train_loader(shards: Path, **options: int) -> ShardLoader:
    return ShardDataModule(str(shards), **OPTIONS, **options).train_dataloader()


@pytest.mark.parametrize("consumed", [2, 3, 4, 5, 7])  # mid-pass, pass end, epoch end, 2nd epoch, 3rd pass
def test_restored_loader_yields_what_the_original_yields_next(shards: Path, consumed: int) -> None:
    uninterrupted = take(train_loader(shards, samples_per_epoch=8), 12)
    assert [b["key"] for b in uninterrupted[:3]] != [b["key"] for b in uninterrupted[3:6]], "new order each pass"
    killed = train_loader(shards, samples_per_epoch=8)
    assert same(take(killed, consumed), uninterrupted[:consumed])

    resumed = train_loader(shards, samples_per_epoch=8)
    resumed.load_state_dict(killed.state_dict())
    assert same(take(resumed, 12 - consumed), uninterrupted[consumed:])


def test_restored_loader_with_workers(shards: Path) -> None:
    """Workers are re-created for every pass and read the restored pass counter from shared memory."""
    uninterrupted = take(train_loader(shards, samples_per_epoch=8, num_workers=2), 8)
    killed = train_loader(shards, samples_per_epoch=8, num_workers=2)
    take(killed, 5)
    resumed = train_loader(shards, samples_per_epoch=8, num_workers=2)
    resumed.load_state_dict(killed.state_dict())
    assert same(take(resumed, 3), uninterrupted[5:])


def test_without_a_length_the_saved_pass_restarts(shards: Path) -> None:
    """Lightning prefetches from a loader without a length, so only the pass is restored, not the batch."""
    uninterrupted = take(train_loader(shards), 6)
    killed = train_loader(shards)
    take(killed, 4)
    resumed = train_loader(shards)
    resumed.load_state_dict(killed.state_dict())
    assert same(list(resumed), uninterrupted[3:])
    resumed.load_state_dict({**killed.state_dict(), "epoch_done": True})
    assert same(list(resumed), take(train_loader(shards), 9)[6:]), "the next pass"


PASS_DIGEST = """
import sys, torch
from cf_lightning.data import ShardDataModule
loader = ShardDataModule(sys.argv[1], **{options}).train_dataloader()
for batch in loader:
    print(batch["key"], float(batch["latents"].double().sum()))
"""


def test_shuffles_and_crops_are_the_same_in_every_process(shards: Path) -> None:
    """A resumed run (or another rank) is a new process with another string-hash seed: its pass must
    still shuffle and crop as the killed run's did."""
    script = PASS_DIGEST.format(options=OPTIONS)
    outputs = [subprocess.run([sys.executable, "-c", script, str(shards)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"},
                              check=True).stdout for hash_seed in ("1", "2")]
    assert outputs[0].count("\n") == 3 and outputs[0] == outputs[1]


def test_foreign_loader_state_is_named(shards: Path) -> None:
    loader = train_loader(shards)
    with pytest.raises(KeyError, match=r"lacks \['epoch_batches', 'epoch_done'\].*not saved by a ShardLoader"):
        loader.load_state_dict({"pass": 1, "pass_batches": 2})


def test_changed_shards_are_reported_on_resume(shards: Path) -> None:
    loader = train_loader(shards, samples_per_epoch=8)
    loader.load_state_dict({"pass": 1, "pass_batches": 5, "epoch_batches": 1, "epoch_done": False})
    with pytest.raises(RuntimeError, match="produced 3 batches, but the checkpoint had consumed 5"):
        list(loader)


class Recorder(L.LightningModule):
    """Trains one weight and records the batches it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[dict] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen.append({"key": batch["key"], "latents": batch["latents"]})
        return self.weight * batch["latents"].mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(shards: Path, root: Path, ckpt_path: str | None = None) -> Recorder:
    model = Recorder()
    trainer = L.Trainer(
        max_steps=10, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root, limit_val_batches=0,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=2, save_top_k=-1)],
    )
    trainer.fit(model, ShardDataModule(str(shards), samples_per_epoch=8, **OPTIONS), ckpt_path=ckpt_path)
    return model


@pytest.mark.parametrize("step", [4, 6])  # the end of an epoch; mid-epoch in its second pass
def test_lightning_resume_trains_on_the_batches_of_an_uninterrupted_run(
    shards: Path, tmp_path: Path, step: int
) -> None:
    uninterrupted = fit(shards, tmp_path / "a").seen
    assert len(uninterrupted) == 10
    (checkpoint,) = (tmp_path / "a" / "ckpt").glob(f"*-step={step}.ckpt")
    assert same(fit(shards, tmp_path / "b", str(checkpoint)).seen, uninterrupted[step:])
