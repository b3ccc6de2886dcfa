"""Teacher: context mode, ERFT buffers in checkpoints, LoRA merge."""

from __future__ import annotations

import functools

import lightning as L
import torch

from cf_lightning.diffusion import ErrorInjection
from cf_lightning.models.context import build_context_sequence
from cf_lightning.stages import TeacherModule
from cf_lightning.stages.common import Condition
from memory_policies import SlowFast
from tests.stages.conftest import CHANNELS, TEXT_DIM


def make(**overrides) -> TeacherModule:
    torch.manual_seed(0)
    settings = {"latent_channels": CHANNELS, "text_dim": TEXT_DIM, "frame_cond_dim": 2, "target_frames": 4}
    return TeacherModule(**{**settings, **overrides})


def fit(module, loader, steps, root=None):
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        default_root_dir=root,
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    trainer.fit(module, loader)
    return trainer


def test_loss_decreases_on_a_tiny_overfit(loader):
    module = make(cfg_dropout=0.0, optimizer=functools.partial(torch.optim.AdamW, lr=1e-2))
    data = loader(num=2, frames=4, batch_size=2)
    batch = next(iter(data))
    cond = Condition(batch["text_emb"], None, batch["camera"][:, :4])
    target = batch["latents"][:, :, :4]
    sequence = build_context_sequence(target[:, :, :0], [[], []], target, history_cond=cond.frame_cond[:, :0],
                                      target_cond=cond.frame_cond)
    gen = torch.Generator().manual_seed(7)
    sigma, noise = torch.rand(2, generator=gen) * 0.8 + 0.1, torch.randn(target.shape, generator=gen)

    def loss() -> float:
        noisy = (1 - sigma.view(2, 1, 1, 1, 1)) * target + sigma.view(2, 1, 1, 1, 1) * noise
        with torch.no_grad():
            pred = module.velocity(module.model, sequence, noisy, sigma, cond)
        return float((pred - (noise - target)).square().mean())

    before = loss()
    fit(module, data, steps=100)
    assert loss() < 0.7 * before


def test_context_mode_loss_ignores_context_positions(loader):
    module = make(contexts=["last_n"], context_frames=4, context_positions="packed")
    batch = next(iter(loader(num=2, batch_size=2)))
    cond = Condition(batch["text_emb"], None, batch["camera"][:, :8])
    history, target = batch["latents"][:, :, :4], batch["latents"][:, :, 4:8]
    sequence = module.sequence(history, target, [[0, 1, 2, 3]] * 2, cond)
    sigma = torch.full((2,), 0.5)
    noisy = torch.randn(target.shape)
    pred = module.velocity(module.model, sequence, noisy, sigma, cond)
    assert pred.shape == target.shape
    # The loss is computed on the target part only: perturbing the model's context *outputs* cannot
    # change it, while the context *inputs* do condition the prediction.
    other = module.sequence(history + 1.0, target, [[0, 1, 2, 3]] * 2, cond)
    assert not torch.allclose(pred, module.velocity(module.model, other, noisy, sigma, cond))
    x = sequence.x.clone()
    x[:, :, 4:] = noisy
    steps = torch.cat([torch.zeros(2, 4), torch.full((2, 4), 500.0)], 1)
    full = module.model(x, steps, cond.context, frame_cond=sequence.frame_cond, positions=sequence.positions)
    assert torch.allclose(full[:, :, 4:], pred, atol=1e-6)
    assert sequence.target_mask[:, :4].sum() == 0 and sequence.target_mask[:, 4:].all()


def test_error_buffers_survive_a_checkpoint_round_trip(loader, tmp_path):
    module = make(erft=ErrorInjection(), erft_bins=4, erft_capacity=3, contexts=["none", "last_n"],
                  context_positions="packed", context_frames=4)
    trainer = fit(module, loader(num=4, batch_size=2), steps=4, root=tmp_path)
    assert len(module.x0_errors) > 0 and len(module.noise_errors) > 0
    path = tmp_path / "teacher.ckpt"
    trainer.save_checkpoint(path)
    fresh = make(erft=ErrorInjection(), erft_bins=4, erft_capacity=3, contexts=["none", "last_n"],
                  context_positions="packed", context_frames=4)
    fresh.on_load_checkpoint(torch.load(path, weights_only=False))
    assert torch.equal(fresh.x0_errors.counts, module.x0_errors.counts)
    sigma = torch.tensor([0.3, 0.9])
    assert torch.equal(fresh.x0_errors.sample(sigma, torch.Generator().manual_seed(0)),
                       module.x0_errors.sample(sigma, torch.Generator().manual_seed(0)))


def test_every_teacher_context_runs(loader):
    module = make(contexts=["memory", "last_n", "none"], context_frames=4,
                  memory=SlowFast(sink=1, slow=2, fast=4, rope_length=7))
    fit(module, loader(num=2, batch_size=2), steps=3)


def test_lora_merges_back_into_plain_weights(loader):
    module = make(lora_rank=2, lora_alpha=2.0, optimizer=functools.partial(torch.optim.AdamW, lr=1e-2))
    frozen = module.model.blocks[0].ffn[0].base.weight.clone()
    fit(module, loader(num=2, batch_size=2), steps=3)
    assert torch.equal(module.model.blocks[0].ffn[0].base.weight, frozen)
    merged = module.merged_backbone(use_ema=False)
    assert isinstance(merged.blocks[0].ffn[0], torch.nn.Linear)
    x, t, ctx = torch.randn(1, CHANNELS, 4, 4, 4), torch.full((1,), 300.0), torch.randn(1, 3, TEXT_DIM)
    cam = torch.zeros(1, 4, 2)
    with torch.no_grad():
        assert torch.allclose(
            merged(x, t, ctx, frame_cond=cam), module.model(x, t, ctx, frame_cond=cam), atol=1e-5
        )
        assert not torch.equal(merged.blocks[0].ffn[0].weight, frozen)


def test_revisit_targets_pick_windows_that_revisit_distant_views():
    module = make(contexts=["last_n"], context_frames=4, revisit_targets=1.0, context_positions="packed")
    first_visit = torch.full((2, 20), -1)
    first_visit[0, 14:18] = torch.tensor([2, 3, 2, 3])  # revisits frames 2-3, before the last 4 frames
    first_visit[1, 14:18] = torch.tensor([1, 2, 1, 2])
    first_visit[1, 6:10] = torch.tensor([5, 5, 5, 5])  # a recent revisit: inside the last-N context
    assert module._revisit_starts(first_visit, list(range(2, 17, 2))) == [14]
    history, target, frames = module._split(
        torch.randn(2, CHANNELS, 20, 4, 4), torch.Generator().manual_seed(0), first_visit
    )
    assert history.shape[2] == 14 and target.shape[2] == 4 and frames == [[10, 11, 12, 13]] * 2
