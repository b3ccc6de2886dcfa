"""Feature extractors: the weight-free pixel statistics and local Hugging Face checkpoints (tiny, random)."""

from __future__ import annotations

import shutil

import pytest
import torch

from cf_lightning.metrics import (
    FeatureExtractor,
    FrameConsistency,
    HFImageExtractor,
    HFTextExtractor,
    PixelStatsExtractor,
    laplacian_sharpness,
)
from tests.metrics.tiny_models import tiny_clip, tiny_dinov2


def test_pixel_stats_are_deterministic_and_separate_different_images():
    extractor = PixelStatsExtractor(size=4, bins=8)
    frames = torch.rand(3, 3, 16, 20, generator=torch.Generator().manual_seed(0))
    frames[1] = frames[0]
    features = extractor(frames)
    assert isinstance(extractor, FeatureExtractor)
    assert features.shape == (3, 3 * 4 * 4 + 3 * 8)
    assert torch.equal(features[0], features[1]) and torch.equal(extractor(frames), features)
    cosine = torch.nn.functional.cosine_similarity(features[0], features[2], dim=0)
    assert cosine < 0.5
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\].*got shape \(3, 16, 20\)"):
        extractor(frames[0])


def test_laplacian_sharpness_orders_sharp_above_blurred():
    noise = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    blurred = torch.nn.functional.avg_pool2d(noise, 3, stride=1, padding=1, count_include_pad=False)
    scores = laplacian_sharpness(torch.cat([noise, blurred, torch.full_like(noise, 0.5)]))
    assert scores[0] > scores[1] > scores[2] == 0.0


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_dinov2_checkpoint_loads_offline_and_gives_cls_features(tmp_path):
    extractor = HFImageExtractor(tiny_dinov2(tmp_path / "dinov2"))
    frames = torch.rand(4, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    pixels = extractor.preprocess(frames)
    assert pixels.shape == (4, 3, 32, 32)  # shortest edge 40 -> 36 (aspect kept), centre crop 32
    features = extractor(frames)
    assert features.shape == (4, 32) and features.dtype == torch.float32
    torch.testing.assert_close(extractor(frames), features)
    assert not any(p.requires_grad for p in extractor.model.parameters())

    metric = FrameConsistency(extractor, "first")
    metric.update(frames[:1].unsqueeze(2).expand(-1, -1, 5, -1, -1))
    torch.testing.assert_close(metric.compute().item(), 1.0)
    metric.reset()
    metric.update(frames.transpose(0, 1).unsqueeze(0))
    assert metric.compute().item() < 0.999


def test_clip_checkpoint_gives_projected_image_and_text_features(tmp_path):
    path = tiny_clip(tmp_path)
    images = HFImageExtractor(path)
    assert images(torch.rand(2, 3, 32, 32)).shape == (2, 12)
    texts = HFTextExtractor(path, model=images.model)
    features = texts(["a red cube", "a blue sky at night"])
    assert features.shape == (2, 12)
    torch.testing.assert_close(HFTextExtractor(path)(["a red cube"]), features[:1])


def test_a_model_without_a_text_tower_is_refused_for_clip_t(tmp_path):
    clip, dino = tiny_clip(tmp_path / "clip"), tiny_dinov2(tmp_path / "dino")
    for tokenizer_file in ("vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json"):
        shutil.copy(clip / tokenizer_file, dino / tokenizer_file)
    with pytest.raises(ValueError, match="Dinov2Model, which has no text tower"):
        HFTextExtractor(dino)


def test_missing_checkpoint_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        HFImageExtractor(tmp_path / "no_such_model")
