"""Property tests over random frame counts, chunk sizes and budgets (hypothesis)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_policies import Keyframe, MemoryPolicy, SlidingWindow, SlowFast
from memory_policies.testing import PolicyContract


@st.composite
def policies(draw) -> tuple[MemoryPolicy, int]:
    chunk = draw(st.integers(1, 4))
    sink = draw(st.integers(0, 4))
    kind = draw(st.sampled_from(["slow_fast", "sliding_window", "keyframe"]))
    mode = draw(st.sampled_from(["absolute", "bounded", "true_time"]))
    recent = chunk + draw(st.integers(0, 6))
    if kind == "slow_fast":
        slow = draw(st.integers(0, 8))
        policy = SlowFast(sink=sink, slow=slow, fast=recent, threshold=draw(st.floats(-1, 1)),
                          admission=draw(st.sampled_from(["surprisal", "uniform"])),
                          interval=draw(st.integers(1, 3)),
                          compare_to=draw(st.sampled_from(["previous", "last_admitted"])),
                          position_mode=mode, rope_length=sink + slow + recent)
    elif kind == "sliding_window":
        policy = SlidingWindow(sink=sink, window=recent, position_mode=mode, rope_length=sink + recent)
    else:
        keys = draw(st.integers(0, 8))
        policy = Keyframe(sink=sink, keyframes=keys, window=recent, position_mode=mode,
                          rope_length=sink + keys + recent)
    return policy, chunk


def run(policy: MemoryPolicy, chunk: int, num_chunks: int, seed: int):
    summaries = PolicyContract.summaries(num_chunks * chunk, seed)
    state = policy.new_state(chunk)
    views = []
    for c in range(num_chunks):
        views.append((state.clone(), policy.read(state)))
        policy.commit(state, summaries[c * chunk:(c + 1) * chunk])
    return views, summaries


@settings(max_examples=60, deadline=None)
@given(policies(), st.integers(1, 30), st.integers(0, 1000))
def test_invariants_hold_for_any_configuration(setup, num_chunks, seed):
    policy, chunk = setup
    budget = policy.budget(chunk)
    views, summaries = run(policy, chunk, num_chunks, seed)
    mask = policy.frame_mask(num_chunks * chunk, chunk, summaries)
    for c, (state, view) in enumerate(views):
        end = c * chunk
        # memory never holds more than the budget
        assert len(view.frames) <= budget
        # sink frames are never evicted
        assert view.frames[: min(policy.sink, end)] == list(range(min(policy.sink, end)))
        # the fast window always holds the most recent frames
        recent = policy.fast if isinstance(policy, SlowFast) else policy.window
        assert set(range(max(0, end - (recent - chunk)), end)) <= set(view.frames)
        # bounded positions stay below rope_length, distinct and ordered
        positions = view.positions + view.query_positions
        assert positions == sorted(set(positions))
        if policy.position_mode != "absolute":
            assert max(positions) < policy.rope_length
        else:
            assert positions == view.frames + view.query_frames
        # the rendered mask agrees with streaming, frame by frame
        for i in range(end, end + chunk):
            assert mask[i].nonzero().flatten().tolist() == view.frames + view.query_frames
    # the same inputs give the same decisions
    again, _ = run(policy, chunk, num_chunks, seed)
    assert [v.frames for _, v in again] == [v.frames for _, v in views]


def test_bounded_positions_match_paper_steady_state():
    """The paper's 21-position layout: sink 0-2, slow 3-14, fast 15-17, current chunk 18-20."""
    policy = SlowFast(sink=3, slow=12, fast=6, admission="uniform", interval=1)
    state = policy.new_state(3)
    for _ in range(40):
        policy.commit(state)
    view = policy.read(state)
    assert view.positions == list(range(18))
    assert view.query_positions == [18, 19, 20]
    assert state.regions["sink"] == [0, 1, 2]
    assert len(set(state.regions["slow"]) - set(state.regions["fast"])) == 12
    assert view.frames[-3:] == [117, 118, 119]


def test_slot_positions_jump_when_memory_changes():
    """Bounded positions are slot-based: the same frame moves when older frames leave."""
    policy = SlidingWindow(sink=1, window=4, rope_length=5)
    state = policy.new_state(1)
    seen = {}
    for _ in range(8):
        view = policy.read(state)
        for frame, pos in zip(view.frames, view.positions):
            seen.setdefault(frame, set()).add(pos)
        policy.commit(state)
    assert any(len(p) > 1 for f, p in seen.items() if f > 0)
    assert seen[0] == {0}


def test_budget_that_cannot_fit_rope_length_is_rejected():
    policy = SlowFast(sink=3, slow=12, fast=6, rope_length=20)
    try:
        policy.new_state(3)
    except ValueError as error:
        assert "rope_length is 20" in str(error) and "21" in str(error)
    else:
        raise AssertionError("expected a ValueError")


def test_fast_window_smaller_than_chunk_is_rejected():
    try:
        SlowFast(fast=2).new_state(3)
    except ValueError as error:
        assert "fast=2" in str(error) and "chunk_frames=3" in str(error)
    else:
        raise AssertionError("expected a ValueError")


def test_summary_shape_is_checked():
    policy = SlowFast()
    state = policy.new_state(3)
    try:
        policy.commit(state, torch.zeros(2, 4))
    except ValueError as error:
        assert "chunk_frames=3" in str(error) and "(2, 4)" in str(error)
    else:
        raise AssertionError("expected a ValueError")
