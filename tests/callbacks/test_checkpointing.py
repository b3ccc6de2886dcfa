"""RunCheckpoint: saves on batches (never skips), writes atomically, rotates, continues its count on resume."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from cf_lightning.callbacks import RunCheckpoint
from cf_lightning.callbacks.checkpointing import publish


class TwoOptimizers(L.LightningModule):
    """Steps ``b`` every batch and ``a`` every other batch, as Context Forcing steps its critic and
    generator: ``global_step`` moves by 2, 1, 2, 1, ... per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.a, self.b = nn.Linear(2, 1), nn.Linear(2, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        opt_a, opt_b = self.optimizers()
        for net, opt, due in ((self.a, opt_a, batch_idx % 2 == 0), (self.b, opt_b, True)):
            if due:
                opt.zero_grad()
                self.manual_backward(net(batch).square().mean())
                opt.step()

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD(self.a.parameters(), lr=0.1), torch.optim.SGD(self.b.parameters(), lr=0.1)]


class Killed(Exception):
    """Stands for the process dying in the middle of writing a checkpoint."""


def fit(tmp_path: Path, batches: int, callback: RunCheckpoint,
        ckpt_path: Path | str | None = None) -> L.Trainer:
    """Train until ``batches`` batches in all are done (3 optimizer steps per 2 batches)."""
    torch.manual_seed(0)
    trainer = L.Trainer(max_steps=batches + (batches + 1) // 2, accelerator="cpu", logger=False,
                        callbacks=[callback], enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(TwoOptimizers(), DataLoader(torch.randn(16, 2), batch_size=2), ckpt_path=ckpt_path)
    return trainer


def saved(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_saves_every_n_batches_although_global_step_skips_multiples(tmp_path):
    fit(tmp_path, 6, RunCheckpoint(every_n_batches=2))
    directory = tmp_path / "checkpoints"
    assert saved(directory) == ["batch=0000002.ckpt", "batch=0000004.ckpt", "batch=0000006.ckpt", "last.ckpt"]
    steps = [torch.load(directory / f"batch=000000{n}.ckpt", weights_only=True)["global_step"] for n in (2, 4, 6)]
    assert steps == [3, 6, 9], "every_n_train_steps=2 would have missed the saves at steps 3 and 9"
    assert (directory / "last.ckpt").read_bytes() == (directory / "batch=0000006.ckpt").read_bytes()


def test_rotation_keeps_the_newest_checkpoints_and_last(tmp_path):
    fit(tmp_path / "two", 5, RunCheckpoint(every_n_batches=1, max_checkpoints=2))
    assert saved(tmp_path / "two" / "checkpoints") == ["batch=0000004.ckpt", "batch=0000005.ckpt", "last.ckpt"]
    fit(tmp_path / "none", 5, RunCheckpoint(every_n_batches=1, max_checkpoints=0))
    assert saved(tmp_path / "none" / "checkpoints") == ["last.ckpt"]
    fit(tmp_path / "under", 2, RunCheckpoint(every_n_batches=1, max_checkpoints=3))
    assert saved(tmp_path / "under" / "checkpoints") == ["batch=0000001.ckpt", "batch=0000002.ckpt", "last.ckpt"]
    fit(tmp_path / "three", 5, RunCheckpoint(every_n_batches=1, max_checkpoints=3))
    assert saved(tmp_path / "three" / "checkpoints") == [
        "batch=0000003.ckpt", "batch=0000004.ckpt", "batch=0000005.ckpt", "last.ckpt"]


def test_last_checkpoint_holds_the_final_state_between_saves(tmp_path):
    fit(tmp_path, 5, RunCheckpoint(every_n_batches=2))
    directory = tmp_path / "checkpoints"
    assert torch.load(directory / "last.ckpt", weights_only=True)["global_step"] == 8
    assert torch.load(directory / "batch=0000004.ckpt", weights_only=True)["global_step"] == 6


def test_crash_while_writing_keeps_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    fit(tmp_path, 2, RunCheckpoint(every_n_batches=1))
    directory = tmp_path / "checkpoints"
    last = directory / "last.ckpt"
    before = last.read_bytes()

    def die_halfway(io, checkpoint, path, storage_options=None):
        Path(path).write_bytes(b"PK\x03\x04 the first bytes of a checkpoint")
        raise Killed(path)

    monkeypatch.setattr("lightning.fabric.plugins.io.torch_io.TorchCheckpointIO.save_checkpoint", die_halfway)
    with pytest.raises(Killed):
        fit(tmp_path, 4, RunCheckpoint(every_n_batches=1), ckpt_path=last)
    assert last.read_bytes() == before
    assert torch.load(last, weights_only=True)["global_step"] == 3
    assert saved(directory) == ["batch=0000001.ckpt", "batch=0000002.ckpt", "batch=0000003.ckpt.partial",
                                "last.ckpt"]
    monkeypatch.undo()
    fit(tmp_path, 4, RunCheckpoint(every_n_batches=1), ckpt_path=last)
    assert saved(directory) == [f"batch=000000{n}.ckpt" for n in range(1, 5)] + ["last.ckpt"], \
        "the resumed run removed the partial file and continued the batch count"


def test_directory_checkpoints_of_sharded_strategies_are_renamed_in_whole(tmp_path):
    target, partial = tmp_path / "last.ckpt", tmp_path / "last.ckpt.partial"
    for directory, shard in ((target, "old"), (partial, "new")):
        directory.mkdir()
        (directory / "meta.pt").write_text(shard)
    publish(partial, target)
    assert saved(tmp_path) == ["last.ckpt"] and (target / "meta.pt").read_text() == "new"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"every_n_batches": 0}, "every_n_batches must be >= 1, got 0"),
    ({"max_checkpoints": -1}, r"max_checkpoints must be >= 0 \(0: last.ckpt only\) or None \(keep all\), got -1"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RunCheckpoint(**kwargs)


def test_lightning_resumes_from_its_last_checkpoint(tmp_path):
    """To Lightning a ModelCheckpoint: ``ckpt_path="last"`` finds its ``last.ckpt``; the count goes on."""
    first = fit(tmp_path, 2, RunCheckpoint(every_n_batches=2))
    assert first.checkpoint_callback.last_model_path == str(tmp_path / "checkpoints" / "last.ckpt")
    resumed = RunCheckpoint(every_n_batches=2)
    fit(tmp_path, 4, resumed, ckpt_path="last")
    assert resumed.batches == 4
    assert saved(tmp_path / "checkpoints") == ["batch=0000002.ckpt", "batch=0000004.ckpt", "last.ckpt"]
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
