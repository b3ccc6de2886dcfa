"""The memory timeline records what a policy kept at every chunk and draws it, marking revisits."""

from __future__ import annotations

import numpy as np
import torch

from cf_lightning.memory_timeline import TimelineRecorder, render_timeline, revisit_recall
from memory_policies import FadeMem, SlowFast


def test_recorder_snapshots_every_commit_per_video_and_restores_the_policy():
    policy = SlowFast(sink=1, slow=2, fast=4, admission="uniform", interval=1)
    states = [policy.new_state(2), policy.new_state(2)]
    with TimelineRecorder(policy) as recorder:
        for _ in range(5):
            for state in states:
                policy.commit(state)
    assert "commit" not in vars(policy)
    assert [len(t) for t in recorder.timelines] == [5, 5]
    last = recorder.timelines[0][-1]
    assert last.frames_committed == 10
    assert last.regions["sink"] == [0] and last.regions["fast"] == [8, 9]
    assert recorder.timelines[0][0].regions["fast"] == [0, 1]  # snapshots are copies, not live views


def timeline_pixels(first_visit):
    policy = FadeMem(sink=1, entries=2, recent=4)
    state = policy.new_state(2)
    with TimelineRecorder(policy) as recorder:
        for _ in range(12):
            policy.commit(state)
    assert any(state.members.values())  # merged entries are drawn over their span
    return render_timeline(recorder.timelines[0], 2, first_visit, title="fade_mem")


def test_render_draws_regions_and_marks_revisits():
    plain = timeline_pixels(None)
    assert plain.ndim == 3 and plain.shape[2] == 3 and plain.dtype == np.uint8
    revisits = torch.tensor([-1] * 12 + list(range(12)) + [-1] * 2)  # the second half revisits the first
    marked = timeline_pixels(revisits)
    orange = np.array([0xFF, 0x7F, 0x0E])
    assert (np.abs(marked.astype(int) - orange).sum(-1) < 40).sum() > (
        np.abs(plain.astype(int) - orange).sum(-1) < 40
    ).sum()


def test_revisit_recall_counts_what_the_memory_held_for_each_revisit():
    first_visit = torch.tensor([-1, -1, -1, -1, 0, 1, 2, 3])  # frames 4..7 revisit 0..3
    policy = SlowFast(sink=1, slow=0, fast=2, admission="uniform")  # the sink (frame 0) is all it holds
    state = policy.new_state(2)
    with TimelineRecorder(policy) as recorder:
        for _ in range(3):
            policy.commit(state)
    # chunk 2 (frames 4, 5) reads {0}: 4 -> 0 held, 5 -> 1 missed; chunk 3 (6, 7) reads {0}: both missed
    assert revisit_recall(recorder.timelines[0], first_visit, 2) == (1, 4)
