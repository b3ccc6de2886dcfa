"""RevisitError: known answers on revisit-world videos, the memoryless control, and input checks."""

from __future__ import annotations

import pytest
import torch

from cf_lightning.metrics import RevisitError, effective_context, recall_auc
from tests.metrics.worlds import revisit_world

EDGES = [0, 4, 8, 16]
GAPS = [2, 3, 4, 5, 6, 8, 10, 12, 16] * 3


def test_exact_copy_on_revisit_has_zero_error_and_full_context():
    video, first_visit = revisit_world(GAPS)
    metric = RevisitError(max_gap=16, bucket_edges=EDGES)
    metric.update(video, None, first_visit)
    out = metric.compute()
    assert torch.equal(out["error"], torch.zeros(3, dtype=torch.float64))
    assert (out["control"] > 0.1).all()
    assert out["effective_context"].item() == 16
    assert out["auc"].item() == 1.0
    assert out["count"].tolist() == [3 * 2 * 3, 3 * 2 * 3, 3 * 2 * 3]


def test_random_revisit_frames_score_like_the_memoryless_control():
    video, first_visit = revisit_world(GAPS)
    video[:, :, -2:] = torch.rand(video[:, :, -2:].shape, generator=torch.Generator().manual_seed(1))
    out = RevisitError(max_gap=16, bucket_edges=EDGES)(video, None, first_visit)
    assert out["effective_context"].item() == 0
    assert out["auc"].item() < 0.3
    torch.testing.assert_close(out["error"], out["control"], rtol=0.3, atol=0.0)


def test_shuffled_revisit_frames_lose_context():
    video, first_visit = revisit_world([8] * 8, length=8, frames=32)
    video[:, :, -8:] = video[:, :, -8:].flip(2)  # right views, wrong order
    out = RevisitError(max_gap=16, bucket_edges=[0, 8, 16])(video, None, first_visit)
    assert out["effective_context"].item() == 0


def test_one_colour_video_is_not_perfect_memory():
    _, first_visit = revisit_world(GAPS)
    video = torch.full((len(GAPS), 3, 24, 4, 4), 0.3)
    out = RevisitError(max_gap=16, bucket_edges=EDGES)(video, None, first_visit)
    assert torch.equal(out["error"], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(out["control"], torch.zeros(3, dtype=torch.float64))
    assert out["score"].isnan().all()
    assert out["effective_context"].item() == 0


def test_hand_computed_errors_controls_and_buckets():
    # views 0, 1, 2, then view 1 again (gap 2); one pixel so errors are squared differences
    video = torch.tensor([0.0, 1.0, 3.0, 2.0]).view(1, 1, 4, 1, 1)
    first_visit = torch.tensor([[-1, -1, -1, 1]])
    metric = RevisitError(max_gap=3, bucket_edges=[0, 1, 3])
    metric.update(video, None, first_visit)
    out = metric.compute()
    assert out["gap_error"][2].item() == 1.0  # (2 - 1)^2
    # gap 1: (1-0)^2, (3-1)^2, (2-3)^2; gap 2: (3-0)^2 only (frames 3 and 1 show the same view); gap 3:
    # (2-0)^2
    torch.testing.assert_close(out["gap_control"][1:], torch.tensor([2.0, 9.0, 4.0], dtype=torch.float64))
    assert out["count"].tolist() == [0, 1]
    assert out["control_count"].tolist() == [3, 2]
    assert out["error"][0].isnan() and out["error"][1].item() == 1.0
    assert out["control"][1].item() == 6.5
    assert out["effective_context"].item() == 0  # no revisit measured in the first bucket


def test_reference_mode_scores_against_ground_truth():
    reference, first_visit = revisit_world(GAPS)
    out = RevisitError(max_gap=16, bucket_edges=EDGES)(reference.clone(), reference, first_visit)
    assert torch.equal(out["error"], torch.zeros(3, dtype=torch.float64))
    assert out["effective_context"].item() == 16
    noisy = reference.clone()
    noisy[:, :, -2:] += 0.1
    out = RevisitError(max_gap=16, bucket_edges=EDGES)(noisy, reference, first_visit)
    torch.testing.assert_close(out["error"], torch.full((3,), 0.01, dtype=torch.float64))


def test_split_updates_equal_one_update_and_reset_clears():
    video, first_visit = revisit_world(GAPS)
    whole = RevisitError(max_gap=16, bucket_edges=EDGES)
    whole.update(video, None, first_visit)
    split = RevisitError(max_gap=16, bucket_edges=EDGES)
    split.update(video[:5], None, first_visit[:5])
    split.update(video[5:], None, first_visit[5:])
    for key, value in whole.compute().items():
        torch.testing.assert_close(split.compute()[key], value, equal_nan=True)
    split.reset()
    assert split.error_count.sum().item() == 0 and split.control_count.sum().item() == 0


def test_gaps_beyond_max_gap_are_counted_not_scored():
    video, first_visit = revisit_world([4, 12])
    out = RevisitError(max_gap=8, bucket_edges=[0, 4, 8])(video, None, first_visit)
    assert out["beyond_max_gap"].item() == 2
    assert out["count"].tolist() == [2, 0]


def test_effective_context_criteria_and_gaps_without_data():
    controls = torch.ones(3, dtype=torch.float64)
    errors = torch.tensor([0.05, 0.3, 0.7], dtype=torch.float64)  # recall scores 0.95 / 0.7 / 0.3
    assert effective_context(errors, controls, [0, 8, 16, 32]) == 16
    assert effective_context(errors, controls, [0, 8, 16, 32], criterion=0.9) == 8
    assert effective_context(torch.tensor([0.0, float("nan"), 0.0]), controls, [0, 8, 16, 32]) == 8
    assert recall_auc(errors, controls, [0, 8, 16, 32]) == pytest.approx((8 * 0.95 + 8 * 0.7 + 16 * 0.3) / 32)
    with pytest.raises(ValueError, match="criterion"):
        effective_context(errors, controls, [0, 8, 16, 32], criterion=1.5)
    with pytest.raises(ValueError, match="one value per bucket"):
        effective_context(errors, controls, [0, 8, 16])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_gap": 0, "bucket_edges": [0, 1]}, "max_gap"),
    ({"max_gap": 8, "bucket_edges": [0, 4, 4]}, "strictly increasing"),
    ({"max_gap": 8, "bucket_edges": [0, 16]}, "exceeds max_gap=8"),
    ({"max_gap": 8, "bucket_edges": [0, 8], "criterion": "half"}, "criterion"),
])
def test_bad_configuration_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RevisitError(**kwargs)


def test_bad_inputs_are_named():
    metric = RevisitError(max_gap=8, bucket_edges=[0, 8])
    video, first_visit = revisit_world([4])
    with pytest.raises(ValueError, match=r"\[B, C, F, H, W\], got shape \(3, 24, 4, 4\)"):
        metric.update(video[0], None, first_visit)
    with pytest.raises(ValueError, match="reference shape"):
        metric.update(video, video[:, :, :4], first_visit)
    with pytest.raises(ValueError, match=r"first_visit must be \[B, F\] = \(1, 24\)"):
        metric.update(video, None, first_visit[:, :4])
    with pytest.raises(TypeError, match="integer tensor"):
        metric.update(video, None, first_visit.float())
    future = first_visit.clone()
    future[0, 3] = 5
    with pytest.raises(ValueError, match=r"first_visit\[0, 3\] = 5 must be -1 or an earlier frame"):
        metric.update(video, None, future)
    chained = first_visit.clone()
    chained[0, 23] = 22  # frame 22 is itself a revisit
    with pytest.raises(ValueError, match=r"frame 22 is itself a revisit of frame 18"):
        metric.update(video, None, chained)
