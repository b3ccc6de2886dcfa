"""Sharded training (FSDP2, Lightning's ``ModelParallelStrategy``) on two CPU processes (gloo).

Two processes on half batches equal one process on the whole batch, for the Context Forcing step and
for the (LoRA) context-teacher step, through a sharded checkpoint saved midway and resumed; the
sharded checkpoint exports to the same Wan weights as the one process's single-file checkpoint.
Lightning's FSDP1 ``FSDPStrategy`` refuses CPU accelerators (pinned below), so FSDP2 is what runs here.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

from tests.test_distributed import BATCH, ROOT, RankRows, free_port

#: optimizer steps per half run: Context Forcing steps generator and critic every batch, the teacher once
HALF_STEPS = {"distill": 2, "teacher": 1}


def build(kind: str) -> L.LightningModule:
    from cf_lightning.stages import (
        ContextForcingModule,
        OptimizationConfig,
        RolloutConfig,
        TeacherConfig,
        TeacherModule,
    )
    from memory_policies import SlowFast
    from tests.stages.conftest import CHANNELS, TEXT_DIM

    torch.manual_seed(0)
    policy = SlowFast(sink=1, slow=2, fast=4, threshold=0.9, interval=1, rope_length=7)
    sgd = functools.partial(torch.optim.SGD, lr=1e-2)
    if kind == "distill":
        return ContextForcingModule(
            latent_channels=CHANNELS,
            text_dim=TEXT_DIM,
            frame_cond_dim=2,
            memory=policy,
            rollout=RolloutConfig(min_chunks=3, max_chunks=4, target_chunks=1),
            denoising_steps=2,
            teacher=TeacherConfig(guidance_scale=2.0),
            optimization=OptimizationConfig(generator_optimizer=sgd, critic_optimizer=sgd, generator_every=1,
                                            accumulate=2),
            gradient_checkpointing=True,
        )
    return TeacherModule(
        latent_channels=CHANNELS,
        text_dim=TEXT_DIM,
        frame_cond_dim=2,
        target_frames=4,
        contexts=["memory", "last_n"],
        context_frames=4,
        memory=policy,
        cfg_dropout=0.5,
        lora_rank=2,
        lora_alpha=2.0,
        ema_decay=0.5,
        optimizer=sgd,
        gradient_checkpointing=True,
    )


def full_weights(module: L.LightningModule) -> torch.Tensor:
    """Every weight, gathered from its shards when sharded (a collective: every rank calls it)."""
    tensors = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in module.parameters()]
    return torch.cat([t.detach().flatten() for t in tensors])


def train(kind: str, devices: int, out: Path) -> None:
    """Half the steps, a checkpoint, then a fresh module resumed from it for the other half."""
    torch.set_num_threads(1)
    checkpoint = out / f"{kind}_of{devices}.ckpt"
    for steps, resume in ((HALF_STEPS[kind], None), (2 * HALF_STEPS[kind], checkpoint)):
        module = build(kind)
        strategy = (
            ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1) if devices > 1 else "auto"
        )
        trainer = L.Trainer(
            max_steps=steps,
            accelerator="cpu",
            devices=devices,
            strategy=strategy,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
            gradient_clip_val=1.0 if kind == "teacher" else None,
        )
        # A module built in Python pickles its policy into the hyper-parameters (cf-fit stores plain config);
        # ModelParallelStrategy reads meta.pt with weights_only=True whatever fit is told, hence the
        # allow-list.
        with torch.serialization.safe_globals([type(module.memory), functools.partial, torch.optim.SGD]):
            trainer.fit(module, datamodule=RankRows(BATCH // devices), ckpt_path=resume, weights_only=False)
        if resume is None:
            trainer.save_checkpoint(checkpoint)
    if devices > 1:  # every weight is a shard of a DTensor: the run really was sharded
        plain = [n for n, p in module.named_parameters() if type(p).__name__ != "DTensor"]
        assert not plain, plain[:5]
    weights = full_weights(module)
    if trainer.global_rank == 0:
        torch.save({"weights": weights, "initial": full_weights(build(kind)), "step": trainer.global_step},
                   out / f"{kind}_of{devices}.pt")


def worker(rank: int, port: int, out: Path) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0",
                      RANK=str(rank), LOCAL_RANK=str(rank))
    for kind in HALF_STEPS:
        train(kind, 2, out)


def test_lightning_fsdp1_refuses_cpu():
    with pytest.raises(
        ValueError, match="The strategy `fsdp` requires a GPU accelerator, but received `accelerator=.cpu.`"
    ):
        L.Trainer(accelerator="cpu", devices=2, strategy=FSDPStrategy())


def test_fsdp2_two_processes_match_one_process_through_a_sharded_checkpoint(tmp_path, monkeypatch):
    from cf_lightning.cli.export import export_backbone
    from cf_lightning.distributed import is_sharded_checkpoint
    from cf_lightning.models.checkpoint import load_wan

    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    mp.start_processes(worker, args=(free_port(), tmp_path), nprocs=2, start_method="spawn")
    threads = torch.get_num_threads()
    try:
        for kind in HALF_STEPS:
            train(kind, 1, tmp_path)
    finally:
        torch.set_num_threads(threads)
    for kind, half in HALF_STEPS.items():
        single, sharded = (torch.load(tmp_path / f"{kind}_of{n}.pt") for n in (1, 2))
        assert single["step"] == sharded["step"] == 2 * half
        # training moved them
        assert not torch.allclose(single["weights"], single["initial"], atol=1e-4), kind
        assert torch.allclose(sharded["weights"], single["weights"], atol=1e-5), kind
        assert is_sharded_checkpoint(tmp_path / f"{kind}_of2.ckpt")
        exported = [
            load_wan(export_backbone(tmp_path / f"{kind}_of{n}.ckpt", tmp_path / f"{kind}_of{n}.safetensors"))
            for n in (1, 2)
        ]
        for (name, a), b in zip(exported[0].state_dict().items(), exported[1].state_dict().values()):
            assert torch.allclose(a, b, atol=1e-5), (kind, name)
