"""The published policies of the zoo: the public contract, plus each one's own rule on a crafted stream."""

from __future__ import annotations

import pytest
import torch

from memory_policies import (
    ARCHIVE,
    DeepForcing,
    FadeMem,
    InfinityRoPE,
    LongLiveRAG,
    MemoryState,
    Oracle,
    PackForcing,
    RollingSink,
    SlidingWindow,
    build_policy,
)
from memory_policies.testing import NUM_CHUNKS, PolicyContract


def revisit_pattern(num_frames: int, segment: int = 4, places: int = 5) -> list[int]:
    """``first_visit`` of a world that cycles through ``places`` static places, ``segment`` frames each."""
    first: dict[int, int] = {}
    out = []
    for frame in range(num_frames):
        place = (frame // segment) % places
        out.append(first.setdefault(place, frame) if place in first else -1)
        first.setdefault(place, frame)
    return out


class TestDeepForcing(PolicyContract):
    recent = 3

    def make_policy(self):
        return DeepForcing(sink=3, compressed=2, recent=6, rope_length=14)


class TestDeepForcingAbsolute(PolicyContract):
    recent = 3

    def make_policy(self):
        return DeepForcing(sink=2, compressed=3, recent=6, position_mode="absolute")


class TestDeepForcingTokens(TestDeepForcing):
    def make_policy(self):
        return DeepForcing(sink=2, compressed=3, recent=6, token_share=0.5, rope_length=14)


class TestDeepForcingTokensAbsolute(TestDeepForcing):
    def make_policy(self):
        return DeepForcing(sink=1, compressed=2, recent=6, token_share=0.34, position_mode="absolute")


class TestFadeMem(PolicyContract):
    recent = 3

    def make_policy(self):
        return FadeMem(sink=1, entries=4, recent=6, rope_length=14)


class TestPackForcing(PolicyContract):
    recent = 1

    def make_policy(self):
        return PackForcing(sink=1, selected=2, recent=4, mid=5, pack=2, rope_length=10)


class TestPackForcingPooled(TestPackForcing):
    def make_policy(self):
        return PackForcing(sink=1, selected=2, recent=4, mid=5, pack=2, pool=2, rope_length=10)


class TestPackForcingPooledUnpacked(TestPackForcing):
    def make_policy(self):
        return PackForcing(sink=0, selected=3, recent=4, mid=6, pack=1, pool=2, rope_length=10)


class TestLongLiveRAG(PolicyContract):
    recent = 1

    def make_policy(self):
        return LongLiveRAG(sink=1, retrieved=3, recent=4, archive=10, rope_length=11)


class TestLongLiveRAGAbsolute(TestLongLiveRAG):
    def make_policy(self):
        return LongLiveRAG(sink=0, retrieved=2, recent=4, archive=6, position_mode="absolute")


class TestOracle(PolicyContract):
    recent = 1

    def make_policy(self):
        return Oracle(sink=1, slots=3, recent=4, rope_length=11)

    def prepare(self, state: MemoryState) -> None:
        Oracle.inform(state, revisit_pattern(3 * NUM_CHUNKS))


@pytest.mark.parametrize(
    "name",
    ["deep_forcing", "fade_mem", "pack_forcing", "longlive_rag", "oracle", "infinity_rope", "rolling_sink"],
)
def test_zoo_policies_are_registered(name):
    assert build_policy(name).budget(2) is not None


def stream(policy, chunk: int, num_chunks: int, summaries=None, attention=None, state=None) -> MemoryState:
    state = state or policy.new_state(chunk)
    for c in range(num_chunks):
        view = policy.read(state)
        part = None if summaries is None else summaries[c * chunk:(c + 1) * chunk]
        policy.commit(state, part, None if attention is None else attention(view))
    return state


def test_deep_forcing_keeps_the_frames_recent_queries_attend_to():
    policy = DeepForcing(sink=2, compressed=2, recent=4)
    favourite = {3, 6}  # frames the queries keep attending to
    state = stream(
        policy,
        2,
        10,
        attention=lambda view: torch.tensor([5.0 if f in favourite else 1.0 for f in view.frames]).softmax(0),
    )
    assert state.regions["slow"] == [3, 6]
    assert state.regions["sink"] == [0, 1]


def test_deep_forcing_realigns_the_sink_next_to_the_present():
    policy = DeepForcing(sink=2, compressed=2, recent=4, rope_length=10)
    state = stream(
        policy, 2, 20, attention=lambda view: torch.ones(len(view.frames)) / max(len(view.frames), 1)
    )
    view = policy.read(state)
    positions = view.positions + view.query_positions
    assert positions == list(range(10 - len(positions), 10))  # one run ending at the last trained position
    assert view.frames[:2] == [0, 1] and view.positions[:2] == [2, 3]


def test_deep_forcing_without_attention_statistics_is_refused():
    policy = DeepForcing()
    state = policy.new_state(2)
    with pytest.raises(ValueError, match="attention statistics"):
        policy.commit(state)


def test_fade_mem_is_dense_near_and_sparse_far():
    policy = FadeMem(sink=0, entries=6, recent=4, alpha=1.0)
    state = stream(policy, 2, 60)
    spans = [len(state.members.get(e, [e])) for e in state.regions["slow"]]
    assert spans == sorted(spans, reverse=True), spans  # older entries stand for more frames
    assert spans[0] > spans[-1]
    covered = sorted(f for e in state.regions["slow"] for f in state.members.get(e, [e]))
    assert covered == list(range(covered[0], covered[-1] + 1)), "consolidation merges adjacent entries only"


def test_fade_mem_with_alpha_zero_spreads_spans_evenly():
    state = stream(FadeMem(sink=0, entries=4, recent=4, alpha=0.0), 2, 40)
    spans = [len(state.members.get(e, [e])) for e in state.regions["slow"]]
    assert max(spans) - min(spans) <= max(spans) // 2 + 1, spans


def test_fade_mem_refuses_a_recent_window_frames_could_skip():
    with pytest.raises(ValueError, match="2 \\* chunk_frames"):
        FadeMem(recent=3).new_state(2)


def scene_summaries(scenes: list[int], dim: int = 8) -> torch.Tensor:
    """One fixed random summary per scene id, per frame."""
    table = torch.randn(max(scenes) + 1, dim, generator=torch.Generator().manual_seed(0))
    return table[torch.tensor(scenes)]


def test_retrieval_brings_back_the_revisited_scene():
    # scene 0 for 6 frames, then scenes 1..4 for 6 frames each, then scene 0 returns for one chunk
    scenes = [0] * 6 + [1] * 6 + [2] * 6 + [3] * 6 + [4] * 6 + [0] * 2
    policy = LongLiveRAG(sink=0, retrieved=2, recent=4, archive=30)
    state = stream(policy, 2, len(scenes) // 2, scene_summaries(scenes))
    assert any(f < 6 for f in state.regions["slow"]), state.regions["slow"]
    assert len(state.regions[ARCHIVE]) <= 30


def test_retrieval_skips_redundant_copies():
    scenes = [0] * 8 + [1] * 8 + [0] * 2
    policy = LongLiveRAG(sink=0, retrieved=3, recent=2, archive=20, redundancy=0.99)
    state = stream(policy, 2, len(scenes) // 2, scene_summaries(scenes))
    chosen = state.regions["slow"]
    # one copy of the returning scene is enough
    assert len([f for f in chosen if scenes[f] == 0]) == 1, chosen


def test_pack_forcing_packs_adjacent_frames_and_selects_the_matching_entry():
    scenes = [0] * 4 + [1] * 12 + [2] * 12 + [0] * 2
    policy = PackForcing(sink=0, selected=1, recent=2, mid=20, pack=2)
    state = stream(policy, 2, len(scenes) // 2, scene_summaries(scenes))
    packed = [e for e in state.regions[ARCHIVE] if e in state.members]
    assert packed and all(len(state.members[e]) == 2 for e in packed)
    assert all(m[1] == m[0] + 1 for m in (state.members[e] for e in packed))
    (selected,) = state.regions["slow"]
    assert all(scenes[f] == 0 for f in state.members[selected])


def test_pack_forcing_bounds_its_mid_store():
    policy = PackForcing(sink=1, selected=2, recent=4, mid=3, pack=2)
    state = stream(policy, 2, 40, PolicyContract.summaries(80))
    assert len(state.stored_frames()) <= policy.storage(2)
    assert sum(e in state.members for e in state.regions[ARCHIVE]) <= 3


def test_oracle_keeps_what_returns_soonest_and_beats_a_window():
    chunk, frames, budget_slots = 2, 60, 3
    first_visit = revisit_pattern(frames, segment=4, places=5)
    oracle = Oracle(sink=0, slots=budget_slots, recent=4)
    window = SlidingWindow(sink=0, window=4 + budget_slots)

    views = [f if v < 0 else v for f, v in enumerate(first_visit)]

    def recall(policy) -> int:
        """Revisiting query frames whose view the memory holds (in any frame showing it)."""
        state = policy.new_state(chunk)
        if isinstance(policy, Oracle):
            Oracle.inform(state, first_visit)
        hits = 0
        for _ in range(frames // chunk):
            view = policy.read(state)
            held = {views[f] for f in view.frames}
            hits += sum(views[q] in held for q in view.query_frames if first_visit[q] >= 0)
            policy.commit(state)
        return hits

    assert recall(oracle) > recall(window)
    # with a slot for every other place, the oracle misses no revisit whose first visit precedes its chunk
    attainable = sum(0 <= v < q - q % chunk for q, v in enumerate(first_visit))
    assert recall(Oracle(sink=0, slots=4, recent=4)) == attainable


def test_oracle_without_the_future_is_refused():
    policy = Oracle()
    with pytest.raises(ValueError, match="Oracle.inform"):
        policy.commit(policy.new_state(2))


def test_token_level_compression_keeps_the_top_tokens_over_at_most_compressed_frames():
    tokens = 6
    favourite = {(3, 1), (3, 4), (5, 0), (6, 2), (7, 5)}  # (frame, row) the queries keep attending to

    def attention(view):
        mass = torch.ones(len(view.frames), tokens)
        for j, frame in enumerate(view.frames):
            for row in range(tokens):
                if (frame, row) in favourite:
                    mass[j, row] = 50.0 + frame  # newer favourites rank first
        return mass / mass.sum()

    policy = DeepForcing(sink=2, compressed=3, recent=4, token_share=0.25, position_mode="absolute")
    state = stream(policy, 2, 6, attention=attention)
    # C = round(0.25 * 3 * 6) = 4 tokens: the favourites of frames 7, 6, 5 fill the 3 frames allowed, so
    # frame 3's favourites lose to the frame cap; the 4th token is the best left among those frames (a
    # tie at 1.0, broken to the newest frame's lowest row)
    assert state.regions["slow"] == [5, 6, 7]
    assert state.tokens == {5: (0,), 6: (2,), 7: (0, 5)}


def test_token_level_compression_never_brings_back_a_dropped_token():
    policy = DeepForcing(sink=1, compressed=2, recent=4, token_share=0.5, position_mode="absolute")
    state = policy.new_state(2)
    held: dict[int, set[int]] = {}
    for c in range(12):
        view = policy.read(state)
        # random attention, so a frame's favourite rows change from chunk to chunk
        mass = torch.rand(len(view.frames), 4, generator=torch.Generator().manual_seed(c))
        policy.commit(state, None, mass / mass.sum().clamp_min(1e-6))
        for entry, rows in state.tokens.items():
            assert set(rows) <= held.get(entry, set(range(4))), (c, entry, rows)
        held = {entry: set(rows) for entry, rows in state.tokens.items()}


def test_pooled_rows_are_the_centre_cells_of_the_windows():
    from memory_policies.base import pooled_rows

    assert pooled_rows((4, 4), 2) == [0, 2, 8, 10]
    assert pooled_rows((4, 4), 3) == [5, 7, 13, 15]  # edge windows are cut by the grid
    assert pooled_rows((3, 3), 1) == list(range(9))
    assert pooled_rows((3, 3), 3) == [4]


def test_pooled_pack_forcing_counts_a_quarter_frame_per_mid_entry():
    policy = PackForcing(sink=2, selected=4, recent=4, mid=8, pack=2, pool=2)
    assert policy.token_budget(2, (4, 4)) == (2 + 2) * 16 + 4 * 4
    assert PackForcing(sink=2, selected=4, recent=4).token_budget(2, (4, 4)) == 8 * 16


class TestInfinityRoPE(PolicyContract):
    recent = 3

    def make_policy(self):
        return InfinityRoPE(sink=2, recent=6, rope_length=9)


class TestRollingSink(TestInfinityRoPE):
    def make_policy(self):
        return RollingSink(sink=2, recent=6, pool=6, roll_every=2, rope_length=9)

    def test_sink_frames_never_evicted(self) -> None:
        """Its sink rolls: always ``sink`` consecutive frames of the pool, the first ones until it is full."""
        policy = self.make_policy()
        for chunk in (1, 2, 3):
            for state, view in self.stream(policy, chunk):
                sink = state.regions["sink"]
                assert sink == list(range(sink[0], sink[0] + len(sink))) if sink else True
                assert all(f < policy.pool for f in sink) and sink == view.frames[: len(sink)]
                if state.frames_committed < policy.pool:
                    assert sink == list(range(min(policy.sink, state.frames_committed)))


def test_infinity_rope_reads_the_query_at_the_top_of_the_range_from_the_first_chunk():
    policy = InfinityRoPE(sink=1, recent=4, rope_length=8)
    state = policy.new_state(2)
    view = policy.read(state)
    assert view.query_positions == [6, 7]  # relative from the start, unlike bounded (0, 1)
    state = stream(policy, 2, 2)
    view = policy.read(state)
    assert view.frames == [0, 2, 3] and view.positions == [2, 4, 5]  # true distances: the gap at 1 stays
    state = stream(policy, 2, 10)
    view = policy.read(state)
    # the sink is beyond the horizon: pinned at the bottom; the window keeps its true distances
    assert view.frames == [0, 18, 19] and view.positions + view.query_positions == [0, 4, 5, 6, 7]


def test_rolling_sink_rolls_through_its_pool_at_sliding_indices():
    policy = RollingSink(sink=2, recent=4, pool=6, roll_every=2, rope_length=8)
    sinks = []
    state = policy.new_state(2)
    for _ in range(14):
        view = policy.read(state)
        positions = view.positions + view.query_positions
        anchor = min(view.query_frames[-1], 7)
        assert positions == list(range(anchor + 1 - len(positions), anchor + 1))  # one contiguous run
        sinks.append(tuple(state.regions["sink"]))
        policy.commit(state)
    assert sinks[:3] == [(), (0, 1), (0, 1)]
    assert {(0, 1), (2, 3), (4, 5)} <= set(sinks[3:])  # cyclic through the first 6 frames
    assert state.regions[ARCHIVE] == list(range(6))
    still = RollingSink(sink=2, recent=4, pool=6, roll_every=0, rope_length=8)
    assert stream(still, 2, 14).regions["sink"] == [0, 1]


def test_rolling_sink_refuses_a_pool_that_does_not_hold_whole_sinks():
    with pytest.raises(ValueError, match="multiple of sink"):
        RollingSink(sink=2, pool=5)
