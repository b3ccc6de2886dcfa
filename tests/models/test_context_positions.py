"""One layout for the student's memory and the teacher's context: each context frame sits, in the
teacher's ``[context | target]`` sequence, at the position the student read it at."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cf_lightning.models.context import build_context_sequence, context_layout
from memory_policies import SlowFast
from tests.policies.test_properties import policies, run


@settings(max_examples=80, deadline=None)
@given(policies(), st.integers(1, 24), st.integers(1, 3), st.integers(0, 1000))
def test_teacher_sees_each_context_frame_where_the_student_read_it(setup, num_chunks, target_chunks, seed):
    policy, chunk = setup
    views, _ = run(policy, chunk, num_chunks, seed)
    history = torch.randn(1, 1, num_chunks * chunk, 1, 1)
    target = torch.randn(1, 1, target_chunks * chunk, 1, 1)
    layout = context_layout("student", policy, chunk)
    for state, view in views:  # every fill level, from the empty memory to steady state
        end = state.frames_committed
        sequence = build_context_sequence(history[:, :, :end], [view.frames], target[:, :, :], layout=layout)
        positions = sequence.positions[0].tolist()
        n = len(view.frames)
        assert positions[:n] == view.positions
        assert positions[n:n + chunk] == view.query_positions
        assert positions[n:] == list(range(positions[n], positions[n] + target.shape[2]))


def test_issue_example_student_layout_replaces_packed():
    """The CPU recipe's memory after 16 frames holds [0, 1, 6, 14, 15]: the student reads them at
    [0, 1, 5, 6, 7] with its query at [8, 9]; the teacher now sees them there too (the packed layout
    of the earlier teachers put them at [0, 1, 2, 3, 4] and the query at [5, 6])."""
    policy = SlowFast(sink=2, slow=4, fast=4, admission="uniform", interval=2, rope_length=10)
    chunk = 2
    history = torch.zeros(1, 1, 16, 1, 1)
    target = torch.zeros(1, 1, 4, 1, 1)
    frames = [0, 1, 6, 14, 15]
    student = context_layout("student", policy, chunk)
    packed = context_layout("packed")
    got = build_context_sequence(history, [frames], target, layout=student).positions[0].tolist()
    old = build_context_sequence(history, [frames], target, layout=packed).positions[0].tolist()
    assert got == [0, 1, 5, 6, 7, 8, 9, 10, 11]
    assert old == [0, 1, 2, 3, 4, 5, 6, 7, 8]


def test_padded_batch_keeps_each_videos_layout():
    policy = SlowFast(sink=1, slow=2, fast=2, rope_length=5)
    layout = context_layout("student", policy, 1)
    history = torch.zeros(2, 1, 6, 1, 1)
    sequence = build_context_sequence(history, [[0, 4, 5], [0, 5]], torch.zeros(2, 1, 1, 1, 1), layout=layout)
    assert sequence.positions.tolist()[0] == [0, 2, 3, 4]
    assert sequence.positions.tolist()[1][1:] == [0, 3, 4]  # the first slot is padding, masked out


def test_checkpoints_of_the_packed_era_still_build_their_layout():
    """Runs saved before this layout existed recorded ``context_positions='bounded'`` for the packed one."""
    assert context_layout("bounded") is context_layout("packed")  # type: ignore[arg-type]


def test_layout_errors_name_the_fix():
    with pytest.raises(ValueError, match="none was given"):
        context_layout("student", None, 2)
    with pytest.raises(ValueError, match="allowed: student, packed, absolute"):
        context_layout("relative", SlowFast(), 2)  # type: ignore[arg-type]
    policy = SlowFast(sink=0, slow=0, fast=2, rope_length=4)
    with pytest.raises(ValueError, match="do not fit rope_length=4"):
        policy.context_positions([0, 1, 2, 3], history_frames=4, target_frames=2, chunk_frames=2)
