"""Two-process DDP (gloo, CPU) distillation equals one process with the doubled batch.

Each process is started here with the environment variables a launcher would set, so Lightning
treats it as externally launched; one torch thread per process keeps two processes on two cores fast.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from pathlib import Path

import lightning as L
import torch
import torch.multiprocessing as mp
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader

from memory_policies import SlowFast

ROOT = Path(__file__).parents[1]
BATCH = 4


def build():
    from cf_lightning.stages import ContextForcingModule, OptimizationConfig, RolloutConfig, TeacherConfig
    from tests.stages.conftest import CHANNELS, TEXT_DIM

    torch.manual_seed(0)
    return ContextForcingModule(
        latent_channels=CHANNELS, text_dim=TEXT_DIM, frame_cond_dim=2,
        memory=SlowFast(sink=1, slow=2, fast=4, threshold=0.9, interval=1, rope_length=7),
        rollout=RolloutConfig(min_chunks=3, max_chunks=5, target_chunks=1), denoising_steps=2,
        teacher=TeacherConfig(guidance_scale=2.0),
        optimization=OptimizationConfig(generator_optimizer=functools.partial(torch.optim.SGD, lr=1e-2),
                                        critic_optimizer=functools.partial(torch.optim.SGD, lr=1e-2),
                                        generator_every=1))


class RankRows(L.LightningDataModule):
    """Rank r trains on rows [r*b, (r+1)*b) of one fixed batch, so the ranks together see it once."""

    def __init__(self, per_rank: int) -> None:
        super().__init__()
        self.per_rank = per_rank

    def train_dataloader(self) -> DataLoader:
        from tests.stages.conftest import RandomClips

        clips = RandomClips(num=BATCH, frames=10)
        rank = self.trainer.global_rank
        rows = [clips[i] for i in range(rank * self.per_rank, (rank + 1) * self.per_rank)]
        return DataLoader(rows, batch_size=self.per_rank)


def fit(devices: int, out: Path) -> None:
    torch.set_num_threads(1)
    module = build()
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        devices=devices,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        strategy=DDPStrategy(find_unused_parameters=True, process_group_backend="gloo")
        if devices > 1
        else "auto",
    )
    trainer.fit(module, datamodule=RankRows(BATCH // devices))
    weights = torch.cat(
        [p.detach().flatten() for p in [*module.student.parameters(), *module.critic.parameters()]]
    )
    torch.save({"weights": weights, "generator_steps": int(module.generator_steps)},
               out / f"rank{trainer.global_rank}_of{devices}.pt")


def worker(rank: int, port: int, out: Path) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    fit(2, out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one_process_with_the_doubled_batch(tmp_path, monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    mp.start_processes(worker, args=(free_port(), tmp_path), nprocs=2, start_method="spawn")
    fit(1, tmp_path)
    single = torch.load(tmp_path / "rank0_of1.pt")
    ranks = [torch.load(tmp_path / f"rank{r}_of2.pt") for r in range(2)]
    assert single["generator_steps"] == ranks[0]["generator_steps"] == 2
    # the broadcast draws kept the ranks in lockstep: identical weights on both ranks ...
    assert torch.equal(ranks[0]["weights"], ranks[1]["weights"])
    # ... equal to one process seeing the whole batch (gradient averaging over ranks == batch mean)
    assert torch.allclose(ranks[0]["weights"], single["weights"], atol=1e-5)
