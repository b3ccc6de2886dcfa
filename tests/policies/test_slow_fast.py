"""Slow-Fast consolidation on summaries with known scene changes."""

from __future__ import annotations

import torch

from memory_policies import Keyframe, SlowFast, calibrate_threshold


def scene_summaries(scene_of_frame: list[int], dim: int = 16) -> torch.Tensor:
    """One random direction per scene, tiny per-frame jitter: cuts are the only surprises."""
    gen = torch.Generator().manual_seed(0)
    scenes = torch.randn(max(scene_of_frame) + 1, dim, generator=gen)
    jitter = 0.01 * torch.randn(len(scene_of_frame), dim, generator=gen)
    return scenes[scene_of_frame] + jitter


def stream(policy, summaries, chunk):
    state = policy.new_state(chunk)
    for c in range(summaries.shape[0] // chunk):
        policy.commit(state, summaries[c * chunk:(c + 1) * chunk])
    return state


def test_scene_changes_admit_exactly_the_cut_frames():
    # chunk 2, consolidation every chunk: candidates are frames 0, 2, 4, ...; cuts at 6 and 14.
    scenes = [0] * 6 + [1] * 8 + [2] * 10
    policy = SlowFast(sink=0, slow=8, fast=2, threshold=0.9, interval=1, position_mode="absolute")
    state = stream(policy, scene_summaries(scenes), chunk=2)
    assert state.regions["slow"] == [0, 6, 14]


def test_consolidation_interval_only_checks_every_kth_chunk():
    scenes = [0] * 6 + [1] * 8 + [2] * 10  # cut at 6 = chunk 3 (odd), cut at 14 = chunk 7 (odd)
    policy = SlowFast(sink=0, slow=8, fast=2, threshold=0.9, interval=2, position_mode="absolute")
    assert stream(policy, scene_summaries(scenes), chunk=2).regions["slow"] == [0]
    policy = SlowFast(sink=0, slow=8, fast=2, threshold=0.9, interval=2, compare_to="last_admitted",
                      position_mode="absolute")
    # against the last admitted frame, the new scene is still new two chunks later
    assert stream(policy, scene_summaries(scenes), chunk=2).regions["slow"] == [0, 8, 16]


def test_static_sequence_admits_nothing_after_the_first():
    policy = SlowFast(sink=0, slow=8, fast=3, threshold=0.95, interval=1, position_mode="absolute")
    state = stream(policy, scene_summaries([0] * 30), chunk=3)
    assert state.regions["slow"] == [0]
    with_sink = SlowFast(sink=3, slow=8, fast=3, threshold=0.95, interval=1, position_mode="absolute")
    assert stream(with_sink, scene_summaries([0] * 30), chunk=3).regions["slow"] == []


def test_slow_memory_is_fifo():
    policy = SlowFast(sink=0, slow=2, fast=1, admission="uniform", interval=1, position_mode="absolute")
    state = policy.new_state(1)
    for _ in range(5):
        policy.commit(state)
    assert state.regions["slow"] == [3, 4]


def test_slow_fast_differs_from_keyframes_on_a_world_with_known_cuts():
    scenes = [0] * 12 + [1] * 12 + [2] * 12 + [1] * 12
    summaries = scene_summaries(scenes)
    slow_fast = stream(SlowFast(sink=0, slow=4, fast=3, threshold=0.9, interval=1, position_mode="absolute"),
                       summaries, chunk=3)
    keyframe = stream(Keyframe(sink=0, keyframes=4, window=3, position_mode="absolute"), summaries, chunk=3)
    assert slow_fast.regions["slow"] == [0, 12, 24, 36]
    assert keyframe.regions["slow"] != slow_fast.regions["slow"]


def test_calibration_picks_a_quantile_between_cut_and_same_scene_similarity():
    summaries = scene_summaries([0] * 20 + [1] * 20 + [2] * 20)
    tau, sims = calibrate_threshold(summaries, quantile=0.05)
    assert sims.shape == (59,)
    cuts = sims[[19, 39]]
    assert (cuts < tau).all() or (cuts <= tau).all()
    assert (sims > tau).sum() >= 55
