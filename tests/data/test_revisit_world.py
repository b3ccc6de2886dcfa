"""The revisit world: determinism per seed and exact revisit ground truth."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from cf_lightning.data.revisit_world import (
    TRAJECTORIES,
    RevisitWorldConfig,
    first_visit_from_views,
    generate_video,
    last_visit_from_views,
    latent_truth,
)

DEFAULT = RevisitWorldConfig()
SEEDS = range(12)


@pytest.fixture(scope="module")
def videos():
    return [generate_video(DEFAULT, seed) for seed in SEEDS]


def test_same_seed_same_video_different_seed_differs() -> None:
    a, b, c = generate_video(DEFAULT, 7), generate_video(DEFAULT, 7), generate_video(DEFAULT, 8)
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, field.name
    assert not torch.equal(a.frames, c.frames)


def test_shapes_and_ranges(videos) -> None:
    t, h, w = DEFAULT.num_frames, DEFAULT.frame_height, DEFAULT.frame_width
    for v in videos:
        assert v.frames.shape == (t, 3, h, w) and v.frames.dtype == torch.uint8
        assert v.camera.shape == (t, 2) and v.camera.dtype == torch.float32
        assert v.camera.min() >= -1 and v.camera.max() <= 1
        assert v.first_visit.shape == (t,) and v.first_visit.dtype == torch.long
        assert v.trajectory in TRAJECTORIES and v.trajectory in {"wander", "loop", "home"}
        assert v.segment_starts[0] == 0 and (v.segment_starts.diff() >= DEFAULT.segment_min).all()


def test_every_revisit_is_pixel_equal_to_its_first_and_last_visit(videos) -> None:
    for v in videos:
        t = torch.arange(len(v.frames))
        for ref in (v.first_visit, v.last_visit):
            hit = ref >= 0
            assert (ref[hit] < t[hit]).all()
            assert torch.equal(v.frames[hit], v.frames[ref[hit]])
            assert torch.equal(v.camera[hit], v.camera[ref[hit]])
        first = v.first_visit < 0
        # first views are new camera positions: no earlier frame has the same camera
        for i in torch.nonzero(first).flatten().tolist():
            assert not (v.position[:i] == v.position[i]).all(-1).any()


def test_revisit_gaps_beyond_three_budgets_in_every_default_video(videos) -> None:
    for v in videos:
        t = torch.arange(len(v.frames))
        hit = v.first_visit >= 0
        assert (t - v.first_visit)[hit].max() > 24, v.seed
        # a real revisit after leaving: an earlier segment of the same place, many frames back
        assert ((t - v.last_visit)[hit] > 8).any(), v.seed


def test_places_and_objects_leave_and_come_back(videos) -> None:
    reentries = 0
    for v in videos:
        segment_places = v.place[v.segment_starts].tolist()
        assert all(a != b for a, b in itertools.pairwise(segment_places)), "a cut changes place"
        assert len(segment_places) > len(set(segment_places)), "some place is visited twice"
        for track in v.visible_objects.T.int():
            seen = torch.nonzero(track).flatten()
            reentries += bool(len(seen)) and bool((track[seen[0] :].diff() == 1).any())
    assert reentries >= len(videos)


def test_each_trajectory_type_has_its_prompt() -> None:
    for kind in TRAJECTORIES:
        config = dataclasses.replace(DEFAULT, trajectories=(kind,))
        v = generate_video(config, 3)
        assert v.trajectory == kind
        word = {"wander": "wanders", "loop": "loop", "home": "returning to its starting place"}[kind]
        assert word in v.prompt


def test_views_to_first_and_last_visit() -> None:
    view = torch.tensor([[0, 1, 0, 2, 1, 0]])
    assert first_visit_from_views(view).tolist() == [[-1, -1, 0, -1, 1, 0]]
    assert last_visit_from_views(view).tolist() == [[-1, -1, 0, -1, 1, 2]]


def test_latent_truth_with_temporal_groups_is_exact() -> None:
    v = generate_video(DEFAULT, 5)
    groups = [range(1)] + [range(1 + 4 * i, 5 + 4 * i) for i in range(23)]  # Wan-style 1 + 4k
    truth = latent_truth(v, groups[: 1 + (len(v.frames) - 1) // 4])
    for f, ref in enumerate(truth.first_visit.tolist()):
        if ref >= 0:
            a, b = list(groups[f]), list(groups[ref])
            assert torch.equal(v.frames[a], v.frames[b])
    assert truth.camera.shape == (len(truth.view), 2)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"num_places": 99}, "num_places=99"),
        ({"segment_max": 2}, "segment_max=2"),
        ({"trajectories": ("spiral",)}, "spiral"),
        ({"palette_size": 40}, "palette_size"),
        ({"object_size": 64}, "object_size=64"),
    ],
)
def test_invalid_config_names_the_value(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RevisitWorldConfig(**change)
