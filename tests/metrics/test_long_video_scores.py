"""Per-timestamp long-video scores: the paper's windows and known answers for every score."""

from __future__ import annotations

import pytest
import torch

from cf_lightning.metrics import (
    Extractors,
    HFImageExtractor,
    HFTextExtractor,
    LongVideoMetrics,
    PixelStatsExtractor,
    TimeWindows,
    needed_frames,
    score_dense_video,
    score_video,
)
from tests.metrics.tiny_models import aligned_clip, tiny_dinov2

PIXELS = Extractors(structure=PixelStatsExtractor(size=4, bins=4), appearance=PixelStatsExtractor(size=2, bins=8))
SHORT = TimeWindows(fps=4, timestamps=(1, 2, 3), width=0.5)  # windows: frames 3-4, 7-8, 11-12


def scene(seed: int, frames: int = 16, size: int = 16) -> torch.Tensor:
    """A static video of one random image, ``[3, T, H, W]``."""
    image = torch.rand(3, 1, size, size, generator=torch.Generator().manual_seed(seed))
    return image.expand(-1, frames, -1, -1).clone()


def test_the_windows_are_the_papers():
    paper = TimeWindows.paper()
    assert (paper.fps, paper.width, paper.window_frames) == (16.0, 0.5, 8)
    assert paper.labels() == ["10s", "20s", "30s", "40s", "50s", "60s"]
    assert paper == TimeWindows.every(10, 60, fps=16)
    seconds = 61 * 16
    assert paper.windows(seconds) == [range(16 * t - 4, 16 * t + 4) for t in (10, 20, 30, 40, 50, 60)]
    assert paper.window(60, 960) == range(956, 960)  # a 60 s video holds the first half of its last window
    assert paper.opening(960) == range(8)
    with pytest.raises(ValueError, match=r"no frame in the windows at \[40.0, 50.0, 60.0\] s"):
        paper.windows(30 * 16)
    with pytest.raises(ValueError, match="strictly increasing"):
        TimeWindows(timestamps=(20, 10))
    with pytest.raises(ValueError, match="holds no frame"):
        TimeWindows(fps=1, width=0.25)


def test_only_the_frames_the_windows_need_are_read():
    assert needed_frames(SHORT, 16) == [0, 1, 2, 3, 4, 6, 7, 8, 10, 11, 12]
    assert len(needed_frames(TimeWindows.paper(), 960)) < 110  # of 960 frames


def test_a_static_video_is_perfectly_consistent_without_drift_or_flicker():
    scores = score_dense_video(scene(0), SHORT, PIXELS)
    for name in ("dino_first", "dino_prev", "clipf_first", "clipf_prev", "subject", "background", "flicker"):
        assert scores.series[name].tolist() == [1.0, 1.0, 1.0], name
    assert scores.quality_drift == 0.0
    assert "clip_t" not in scores.series  # no text extractor, no CLIP-T


def test_a_cut_drops_consistency_at_the_timestamp_after_it():
    video = scene(0)
    video[:, 9:] = scene(1)[:, 9:]  # cut between the 2 s window (frames 7-8) and the 3 s one (11-12)
    scores = score_dense_video(video, SHORT, PIXELS)
    for name in ("dino_first", "clipf_first", "dino_prev", "clipf_prev", "subject", "background"):
        before, after = scores.series[name][:2].tolist(), scores.series[name][2].item()
        assert before == [1.0, 1.0] and after < 0.9, (name, scores.series[name])
    assert scores.series["flicker"].tolist() == [1.0, 1.0, 1.0]  # the cut is not inside a window


def test_vbench_consistency_averages_the_previous_and_the_first_frame_term():
    video = scene(0)
    video[:, 9:] = scene(1)[:, 9:]  # the 3 s window and both its predecessors show the second scene
    scores = score_dense_video(video, SHORT, PIXELS)
    for role, name in (("structure", "subject"), ("appearance", "background")):
        features = torch.nn.functional.normalize(getattr(PIXELS, role)(video[:, [0, 9]].transpose(0, 1)).double())
        across_the_cut = max(0.0, (features[0] @ features[1]).item())
        # previous-frame term 1 (same scene), first-frame term the cosine across the cut: neither alone
        assert scores.series[name][2].item() == pytest.approx((1.0 + across_the_cut) / 2, abs=1e-9)
        assert across_the_cut < 0.9


def test_a_cut_inside_a_window_is_flicker_and_lowers_the_vbench_previous_frame_term():
    video = scene(0)
    video[:, 12:] = scene(1)[:, 12:]  # between frames 11 and 12 of the 3 s window
    scores = score_dense_video(video, SHORT, PIXELS)
    assert scores.series["flicker"][:2].tolist() == [1.0, 1.0] and scores.series["flicker"][2] < 1.0
    # frame 11 still equals both references (1), frame 12 matches neither: the mean lies in between
    assert 0.5 <= scores.series["subject"][2] < 1.0


def test_quality_drift_is_opening_minus_last_window():
    video = scene(0)
    blurred = torch.nn.functional.avg_pool2d(video[:, :1], 3, stride=1, padding=1, count_include_pad=False)
    video[:, 10:] = blurred.expand(-1, 6, -1, -1)
    scores = score_dense_video(video, SHORT, PIXELS)
    sharp, soft = scores.series["quality"][0].item(), scores.series["quality"][2].item()
    assert scores.quality_drift == pytest.approx(sharp - soft) and scores.quality_drift > 0


@pytest.fixture(scope="module")
def red_blue_clip(tmp_path_factory):
    red, blue = torch.zeros(3, 32, 32), torch.zeros(3, 32, 32)
    red[0], blue[2] = 1.0, 1.0
    path = aligned_clip(tmp_path_factory.mktemp("clip"), {"a red square": red, "a blue square": blue})
    images = HFImageExtractor(path)
    return red, blue, Extractors(appearance=images, text=HFTextExtractor(path, model=images.model))


def test_clip_t_is_one_for_the_agreeing_prompt_and_zero_for_the_other(red_blue_clip):
    red, blue, extractors = red_blue_clip
    video = red[:, None].expand(-1, 16, -1, -1)
    agree = score_dense_video(video, SHORT, extractors, prompt="a red square").series["clip_t"]
    disagree = score_dense_video(video, SHORT, extractors, prompt="a blue square").series["clip_t"]
    torch.testing.assert_close(agree, torch.ones(3, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(disagree, torch.zeros(3, dtype=torch.float64), atol=1e-4, rtol=0)
    switched = torch.cat([video[:, :10], blue[:, None].expand(-1, 6, -1, -1)], dim=1)
    curve = score_dense_video(switched, SHORT, extractors, prompt="a red square").series["clip_t"]
    assert curve[:2].tolist() == pytest.approx([1.0, 1.0], abs=1e-4) and curve[2].item() == pytest.approx(0, abs=1e-4)
    with pytest.raises(ValueError, match="needs the video's prompt"):
        score_dense_video(video, SHORT, extractors)


def test_tiny_dinov2_features_score_a_static_video_as_one(tmp_path):
    extractors = Extractors(structure=HFImageExtractor(tiny_dinov2(tmp_path)))
    scores = score_dense_video(scene(3, size=40), SHORT, extractors)
    torch.testing.assert_close(scores.series["dino_first"], torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(scores.series["subject"], torch.ones(3, dtype=torch.float64))


def test_metric_keeps_one_mean_per_timestamp_over_videos():
    cut = scene(0)
    cut[:, 9:] = scene(1)[:, 9:]
    videos = torch.stack([scene(2), cut])
    metric = LongVideoMetrics(SHORT, PIXELS)
    metric.update(videos)
    result = metric.compute()
    each = [score_dense_video(v, SHORT, PIXELS) for v in videos]
    for name in PIXELS.series():
        assert result[name].shape == (3,)
        torch.testing.assert_close(result[name], (each[0].series[name] + each[1].series[name]) / 2)
    assert result["dino_first"][0] == 1.0 and result["dino_first"][2] < 0.95
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        metric.update(videos[0])
    with pytest.raises(ValueError, match=r"far outside value_range=\(0.0, 1.0\)"):
        metric.update(videos * 2 - 1)
    signed = LongVideoMetrics(SHORT, PIXELS, value_range=(-1.0, 1.0))
    signed.update(videos * 2 - 1)
    torch.testing.assert_close(signed.compute(), result)


def test_sparse_frames_score_like_the_whole_video_and_missing_ones_are_named():
    video = torch.rand(3, 16, 8, 8, generator=torch.Generator().manual_seed(4))
    index = needed_frames(SHORT, 16)
    sparse = score_video(video[:, index].transpose(0, 1), index, 16, SHORT, PIXELS)
    dense = score_dense_video(video, SHORT, PIXELS)
    for name in PIXELS.series():
        torch.testing.assert_close(sparse.series[name], dense.series[name])
    with pytest.raises(ValueError, match=r"frames \[2\] are needed"):
        score_video(video[:, index[:2] + index[3:]].transpose(0, 1), index[:2] + index[3:], 16, SHORT, PIXELS)
