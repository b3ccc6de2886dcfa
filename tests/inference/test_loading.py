"""Only the generating backbone is rebuilt from a run checkpoint; LoRA runs load with adapters folded."""

from __future__ import annotations

import copy

import pytest
import torch

from cf_lightning.inference import load_generator
from cf_lightning.lora import inject_lora, merge_lora
from cf_lightning.models import build_wan
from cf_lightning.stages.common import backbone_from_run


def test_a_lora_run_loads_with_its_adapters_folded_in():
    torch.manual_seed(0)
    model = build_wan("tiny")
    inject_lora(model, ["self_attn.q", "ffn.0"], rank=2, alpha=4.0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_()
    checkpoint = {
        "hyper_parameters": {
            "backbone": "tiny",
            "latent_channels": 4,
            "text_dim": 16,
            "frame_cond_dim": 0,
            "lora_rank": 2,
            "lora_alpha": 4.0,
        },
        "state_dict": {f"ema.{k}": v for k, v in model.state_dict().items()},
    }
    loaded = backbone_from_run(checkpoint, "lora.ckpt")
    merged = merge_lora(copy.deepcopy(model)).eval()
    x, t, context = torch.randn(1, 4, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, context), merged(x, t, context), rtol=1e-5, atol=1e-5)


def test_the_run_settings_become_the_ours_preset(student_run):
    generator = load_generator(student_run)
    assert generator.preset is not None and generator.preset.name == "ours"
    assert (generator.preset.chunk_frames, generator.preset.denoising_steps) == (2, 2)
    assert type(generator.preset.memory()).__name__ == "sliding_window"
    live = load_generator(student_run, live=True).model
    assert all(
        torch.equal(a, b) for a, b in zip(live.state_dict().values(), generator.model.state_dict().values())
    ), "before any step the EMA equals the live student"
    with pytest.raises(ValueError, match="records its own config"):
        load_generator(student_run, config=build_wan("tiny").config)
