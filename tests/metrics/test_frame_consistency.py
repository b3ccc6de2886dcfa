"""FrameConsistency and QualityDrift: known answers, streaming equivalence, frame windows, input checks."""

from __future__ import annotations

import pytest
import torch

from cf_lightning.metrics import (
    FrameConsistency,
    PixelStatsExtractor,
    QualityDrift,
    TimeWindows,
    laplacian_sharpness,
)

EXTRACTOR = PixelStatsExtractor(size=4, bins=4)
# fps 2, 1.5 s windows: frames 3-5 around t = 2 s and frames 7-9 around t = 4 s
WINDOWS = TimeWindows(fps=2, timestamps=(2, 4), width=1.5)


def random_video(batch: int = 2, frames: int = 12, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def drifting_video(frames: int = 12) -> torch.Tensor:
    """Each frame blends a little further from the first image towards a second one."""
    start, end = random_video(batch=1, frames=2, seed=3).unbind(2)
    weights = torch.linspace(0, 1, frames).view(1, 1, frames, 1, 1)
    return start.unsqueeze(2) * (1 - weights) + end.unsqueeze(2) * weights


@pytest.mark.parametrize("reference", ["first", "previous"])
def test_identical_frames_give_exactly_one(reference):
    video = random_video(frames=1).expand(-1, -1, 10, -1, -1)
    metric = FrameConsistency(EXTRACTOR, reference)
    metric.update(video)
    assert metric.compute().item() == 1.0
    assert metric.count.item() == 2 * 9  # the first frame of a video has nothing to compare with


def test_first_frame_reference_sees_drift_that_previous_frame_hides():
    first = FrameConsistency(EXTRACTOR, "first")
    previous = FrameConsistency(EXTRACTOR, "previous")
    first.update(drifting_video())
    previous.update(drifting_video())
    assert first.compute() < previous.compute() - 0.1


@pytest.mark.parametrize("reference", ["first", "previous"])
def test_chunked_stream_equals_whole_video(reference):
    video = random_video(frames=13)
    whole = FrameConsistency(EXTRACTOR, reference, windows=WINDOWS)
    whole.update(video)
    chunked = FrameConsistency(EXTRACTOR, reference, windows=WINDOWS)
    for chunk in video.split([1, 3, 4, 5], dim=2):
        chunked(chunk)  # forward continues the stream like update
    assert chunked.count.tolist() == whole.count.tolist() == [6, 6]
    torch.testing.assert_close(chunked.compute(), whole.compute())


def test_windowed_consistency_is_reported_per_timestamp_and_shows_a_cut_at_its_window():
    video = random_video(batch=1, frames=11)
    video[:, :, [3, 4, 5]] = video[:, :, :1]
    video[:, :, [7, 8, 9]] = random_video(batch=1, frames=1, seed=5)  # a cut between the two windows
    metric = FrameConsistency(EXTRACTOR, "first", windows=WINDOWS)
    metric.update(video)
    assert metric.count.tolist() == [3, 3]
    per_timestamp = metric.compute()
    assert per_timestamp.shape == (2,) and per_timestamp[0].item() == 1.0 and per_timestamp[1] < 0.9


def test_end_video_starts_new_videos_and_reset_clears():
    metric = FrameConsistency(EXTRACTOR, "first")
    metric.update(random_video(batch=2, frames=4))
    with pytest.raises(ValueError, match="batch size changed from 2 to 3"):
        metric.update(random_video(batch=3, frames=4))
    metric.end_video()
    metric.update(random_video(batch=1, frames=1).expand(-1, -1, 5, -1, -1))
    metric.reset()
    assert metric.count.item() == 0 and metric._stream.frames_seen == 0
    metric.update(random_video(batch=1, frames=1).expand(-1, -1, 5, -1, -1))
    assert metric.compute().item() == 1.0


def test_value_range_minus_one_to_one():
    video = random_video()
    unit = FrameConsistency(EXTRACTOR, "previous")
    unit.update(video)
    signed = FrameConsistency(EXTRACTOR, "previous", value_range=(-1.0, 1.0))
    signed.update(video * 2 - 1)
    torch.testing.assert_close(signed.compute(), unit.compute())
    with pytest.raises(ValueError, match=r"far outside value_range=\(0.0, 1.0\)"):
        FrameConsistency(EXTRACTOR, "first").update(video * 2 - 1)


def test_bad_configuration_and_inputs_are_named():
    with pytest.raises(ValueError, match="'last'"):
        FrameConsistency(EXTRACTOR, "last")
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\].*got shape \(2, 1, 4, 8, 8\)"):
        FrameConsistency(EXTRACTOR, "first").update(torch.rand(2, 1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"extractor must return \[N, D\] features for N=8"):
        FrameConsistency(lambda frames: frames.mean(), "first").update(torch.rand(2, 3, 4, 8, 8))


def test_drift_of_a_blurring_video_is_positive():
    sharp = random_video(batch=2, frames=1, size=16)
    frames = [sharp]
    for _ in range(11):
        frames.append(torch.nn.functional.avg_pool3d(frames[-1], (1, 3, 3), stride=1, padding=(0, 1, 1),
                                                     count_include_pad=False))
    out = QualityDrift(window_frames=3, score_fn=laplacian_sharpness)(torch.cat(frames, dim=2))
    assert out is None  # forward only updates: a stream has no per-batch value
    metric = QualityDrift(window_frames=3, score_fn=laplacian_sharpness)
    metric.update(torch.cat(frames, dim=2))
    result = metric.compute()
    assert result["drift"] > 0 and result["first"] > result["last"]


def test_constant_video_has_zero_drift():
    video = random_video(frames=1).expand(-1, -1, 8, -1, -1)
    for kwargs in ({"score_fn": laplacian_sharpness}, {"extractor": EXTRACTOR}):
        metric = QualityDrift(window_frames=2, **kwargs)
        metric.update(video)
        assert metric.compute()["drift"].item() == 0.0


def test_feature_drift_streams_and_windows_skip_the_reference_frame():
    video = drifting_video(frames=10)
    whole = QualityDrift(window_frames=3, extractor=EXTRACTOR)
    whole.update(video)
    streamed = QualityDrift(window_frames=3, extractor=EXTRACTOR)
    for chunk in video.split([2, 5, 3], dim=2):
        streamed.update(chunk, end_of_video=chunk.shape[2] == 3)
    for key, value in whole.compute().items():
        torch.testing.assert_close(streamed.compute()[key], value)
    assert whole.first_count.item() == 3 and whole.compute()["first"] < 1.0  # frame 0 is the reference
    assert whole.compute()["drift"] > 0


def test_drift_refuses_unfinished_or_short_videos():
    metric = QualityDrift(window_frames=4, score_fn=laplacian_sharpness)
    metric.update(random_video(frames=6), end_of_video=False)
    with pytest.raises(RuntimeError, match="still streaming"):
        metric.compute()
    metric.end_video()
    with pytest.raises(ValueError, match="ended after 3 scored frames, fewer than window_frames=4"):
        metric.update(random_video(frames=3))
    with pytest.raises(ValueError, match="exactly one of extractor or score_fn"):
        QualityDrift(window_frames=4)
    with pytest.raises(ValueError, match=r"one score per frame, shape \(24,\), got \(2, 12\)"):
        QualityDrift(window_frames=4, score_fn=lambda f: f.mean((1, 2, 3)).view(2, 12)).update(random_video())
