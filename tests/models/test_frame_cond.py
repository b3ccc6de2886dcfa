"""Fourier features of the per-frame condition (``WanConfig.frame_cond_frequencies``): off, the model is the
one it was; on, one pan step of the camera moves the embedding; the field survives export and loading."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cf_lightning.data.revisit_world import RevisitWorldConfig
from cf_lightning.models import WanConfig, WanModel
from cf_lightning.models.checkpoint import config_from_wan, config_to_wan, load_wan, save_wan
from cf_lightning.models.frame_cond import FrameCondEmbedding, fourier_features, frequencies_to_resolve
from cf_lightning.recipe import load_recipe
from cf_lightning.stages.common import build_backbone, load_backbone

pytest.importorskip("safetensors")

PAN_WORLD = RevisitWorldConfig(
    **load_recipe(Path(__file__).parents[2] / "recipes" / "pan" / "world.yaml")["data"]["init_args"]["world"]
)
CAMERA = 2


def _model(frequencies: int, seed: int = 0) -> WanModel:
    torch.manual_seed(seed)
    config = WanConfig.from_name("tiny", frame_cond_dim=CAMERA, frame_cond_frequencies=frequencies)
    return WanModel(config).eval()


def _output(model: WanModel) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 4, 6, generator=generator)
    context = torch.randn(2, 5, 16, generator=generator)
    camera = torch.rand(2, 3, CAMERA, generator=generator) * 2 - 1
    with torch.no_grad():
        return model(x, torch.tensor([999.0, 250.0]), context, frame_cond=camera)


def test_without_frequencies_the_model_is_the_plain_mlp_one():
    model = _model(0)
    embedding = model.frame_cond_embedding
    assert [tuple(p.shape) for p in embedding.parameters()] == [(24, CAMERA), (24,), (24, 24), (24,)]
    camera = torch.rand(5, CAMERA)
    assert fourier_features(camera, 0) is camera
    encoded = _output(model)
    plain = nn.Sequential(*embedding)  # the same Linear-SiLU-Linear modules, no encoding step
    model.frame_cond_embedding = plain
    assert torch.equal(_output(model), encoded)


def test_one_pan_step_moves_the_embedding_far_more_with_frequencies():
    step = PAN_WORLD.camera_step
    frequencies = frequencies_to_resolve(step)
    generator = torch.Generator().manual_seed(0)
    camera = torch.rand(256, CAMERA, generator=generator) * 1.6 - 0.8
    moved = camera + torch.tensor([0.0, step])

    def distance(k: int) -> float:
        """Median over initialisations of 1 - cosine between the embeddings one pan step apart."""
        values = []
        for seed in range(4):
            torch.manual_seed(seed)
            embed = FrameCondEmbedding(CAMERA, k, 96)
            with torch.no_grad():
                values.append(1 - F.cosine_similarity(embed(camera), embed(moved), dim=-1).median())
        return float(torch.stack(values).median())

    raw, encoded = distance(0), distance(frequencies)
    assert encoded > 20 * raw, (raw, encoded)


def test_frequencies_follow_the_step_to_resolve():
    assert PAN_WORLD.camera_step == pytest.approx(2 * PAN_WORLD.pan_step / (PAN_WORLD.canvas_width - 32))
    assert RevisitWorldConfig(pan_positions=1).camera_step == 0.0
    for step in (0.5, PAN_WORLD.camera_step, RevisitWorldConfig().camera_step, 0.007):
        finest_period = 2.0 ** (2 - frequencies_to_resolve(step))
        assert 2 * step < finest_period <= 4 * step, "a period of 2-4 steps: resolved, never aliased"
    with pytest.raises(ValueError, match=re.escape("step must be in (0, 2]")):
        frequencies_to_resolve(0.0)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"frame_cond_dim": CAMERA, "frame_cond_frequencies": -1}, "frame_cond_frequencies=-1 must be >= 0"),
    ({"frame_cond_frequencies": 3}, "frame_cond_frequencies=3 encodes the per-frame condition, but "
                                    "frame_cond_dim=0"),
])
def test_bad_frequencies_are_refused(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        WanConfig.from_name("tiny", **overrides)
    with pytest.raises(ValueError, match="must be >= 0"):
        fourier_features(torch.zeros(1, CAMERA), -2)


def test_the_field_survives_export_and_every_loader(tmp_path):
    model = build_backbone("tiny", 4, 16, CAMERA, {"frame_cond_frequencies": 3}, "sdpa", False).eval()
    assert model.frame_cond_embedding[0].in_features == CAMERA * (1 + 2 * 3)
    checkpoint = {
        "hyper_parameters": {"backbone": "tiny", "latent_channels": 4, "text_dim": 16,
                             "frame_cond_dim": CAMERA, "backbone_overrides": {"frame_cond_frequencies": 3}},
        "state_dict": {f"ema.{k}": v for k, v in model.state_dict().items()},
    }
    run = tmp_path / "run.ckpt"
    torch.save(checkpoint, run)
    from_run = load_backbone(str(run))
    exported = load_backbone(str(save_wan(from_run, tmp_path / "teacher.safetensors")))
    for loaded in (from_run, exported, load_wan(save_wan(model, tmp_path / "wan"))):
        assert loaded.config.frame_cond_frequencies == 3
        assert torch.equal(_output(loaded), _output(model))
    assert config_from_wan(config_to_wan(model.config)) == model.config


def test_a_config_written_before_the_field_loads_without_encoding(tmp_path):
    model = _model(0)
    folder = save_wan(model, tmp_path / "old")
    config_file = folder / "config.json"
    values = json.loads(config_file.read_text())
    assert "frame_cond_frequencies" not in values, "the default is not written, as before the field"
    loaded = load_wan(folder)
    assert loaded.config.frame_cond_frequencies == 0 and torch.equal(_output(loaded), _output(model))
