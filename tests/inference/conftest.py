"""A Wan2.1 release in miniature (VAE, UMT5, tokenizer) and a tiny causal student run trained against it."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from cf_lightning.models import build_wan
from cf_lightning.models.checkpoint import save_wan
from cf_lightning.stages import ContextForcingModule, RolloutConfig
from memory_policies import SlidingWindow
from tests.stand_ins import UMT5_DIM, VAE_CHANNELS, write_umt5, write_wan_vae

CHUNK = 2


@pytest.fixture(scope="session")
def wan_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``vae/``, ``text_encoder/`` and ``tokenizer/`` as in a diffusers Wan2.1 folder."""
    root = tmp_path_factory.mktemp("wan-release")
    write_wan_vae(root)
    write_umt5(root)
    return root


@pytest.fixture(scope="session")
def student_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stage-2 checkpoint for the release's latents (4 channels) and UMT5 (16 dims) whose hyper-parameters
    name a student init file that no longer exists, as for a checkpoint copied off its machine."""
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    init = save_wan(build_wan("tiny", in_dim=VAE_CHANNELS, out_dim=VAE_CHANNELS, text_dim=UMT5_DIM),
                    folder / "student_init.safetensors")
    module = ContextForcingModule(
        backbone="tiny",
        latent_channels=VAE_CHANNELS,
        text_dim=UMT5_DIM,
        init_from=str(init),
        memory=SlidingWindow(sink=1, window=4),
        chunk_frames=CHUNK,
        rollout=RolloutConfig(min_chunks=2, max_chunks=2, target_chunks=1),
        denoising_steps=2,
    )
    trainer = L.Trainer(max_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", default_root_dir=folder)
    trainer.fit(module, DataLoader([{"latents": torch.zeros(VAE_CHANNELS, 4, 4, 4)}]))
    checkpoint = folder / "student.ckpt"
    trainer.save_checkpoint(checkpoint)
    # as cf-fit saves it: the class path and the configs of policy and optimizers, no Python objects
    saved = torch.load(checkpoint, weights_only=False)
    adamw = {"class_path": "torch.optim.AdamW"}
    saved["hyper_parameters"].update(
        _class_path="cf_lightning.stages.ContextForcingModule",
        memory={"class_path": "sliding_window", "init_args": {"sink": 1, "window": 4}},
        optimization={**saved["hyper_parameters"]["optimization"], "generator_optimizer": adamw,
                      "critic_optimizer": adamw},
    )
    torch.save(saved, checkpoint)
    init.unlink()
    return checkpoint
