"""A contract any memory policy should pass; subclass it in your own tests (see docs/memory_policies.md).

Usage::

    class TestMyPolicy(PolicyContract):
        def make_policy(self):
            return MyPolicy(sink=1, window=4)

The checks replay random streams of chunks and assert the invariants the rest of the library
relies on: the budget is never exceeded, sink frames stay, positions stay in range, the query
chunk sees the most recent history, a teacher sees the memory where the student read it, a policy
that declares fixed positions keeps them, decisions are deterministic, and the rendered mask agrees
with streaming frame by frame. Entries smaller than a frame are counted in tokens, on a :data:`GRID`
of token rows per frame.
"""

from __future__ import annotations

from functools import partial

import torch

from memory_policies.base import MemoryPolicy, MemoryState, MemoryView

CHUNK_SIZES = (1, 2, 3)
NUM_CHUNKS = 24
SUMMARY_DIM = 8
#: the token grid of a frame in these streams (for policies that count or prune tokens)
GRID = (2, 3)


class PolicyContract:
    """Mixin of pytest checks; override :meth:`make_policy` (and ``recent`` if your policy is odd)."""

    #: how many most recent committed frames the query chunk must always see (0 disables the check)
    recent: int = 1

    def make_policy(self) -> MemoryPolicy:
        raise NotImplementedError

    @staticmethod
    def summaries(num_frames: int, seed: int = 0) -> torch.Tensor:
        """Piecewise-constant frame summaries with random cuts, so surprisal has something to find."""
        gen = torch.Generator().manual_seed(seed)
        scenes = torch.randn(num_frames, SUMMARY_DIM, generator=gen)
        keep = torch.rand(num_frames, generator=gen) < 0.7
        out = scenes.clone()
        for i in range(1, num_frames):
            if keep[i]:
                out[i] = out[i - 1] + 0.01 * scenes[i]
        return out

    def prepare(self, state: MemoryState) -> None:
        """Give a fresh per-video state what the policy must know before streaming (an oracle's future)."""

    @staticmethod
    def attention(view: MemoryView, summaries: torch.Tensor) -> torch.Tensor:
        """Stand-in attention statistics for policies that ask for them: a softmax over the attended
        frames of their summaries' agreement with the query chunk's mean summary (deterministic)."""
        if not view.frames:
            return torch.zeros(0)
        query = summaries[view.query_frames].mean(0)
        return (summaries[view.frames] @ query).softmax(0)

    @classmethod
    def token_attention(cls, view: MemoryView, summaries: torch.Tensor) -> torch.Tensor:
        """Per token row ``[frames, h * w]``: each frame's stand-in mass shared over its rows with
        weights that depend on the frame and the query (deterministic)."""
        tokens = GRID[0] * GRID[1]
        frames = cls.attention(view, summaries)
        if not view.frames:
            return torch.zeros(0, tokens)
        phase = torch.tensor(view.frames, dtype=torch.float32)[:, None] * 1.7 + view.query_frames[0]
        rows = torch.sin(phase + torch.arange(tokens)).softmax(-1)
        return frames[:, None] * rows

    def statistics(
        self, policy: MemoryPolicy, view: MemoryView, summaries: torch.Tensor
    ) -> torch.Tensor | None:
        """The attention statistics ``policy`` asks for at a commit, or None."""
        spec = policy.attention_spec()
        if spec is None:
            return None
        return (self.token_attention if spec.per_token else self.attention)(view, summaries)

    def stream(self, policy: MemoryPolicy, chunk: int, seed: int = 0):
        """Yield (state, view) for every chunk of a random stream."""
        state = policy.new_state(chunk)
        state.grid = GRID
        self.prepare(state)
        summaries = self.summaries(chunk * NUM_CHUNKS, seed)
        for c in range(NUM_CHUNKS):
            view = policy.read(state)
            yield state, view
            statistics = self.statistics(policy, view, summaries)
            policy.commit(state, summaries[c * chunk:(c + 1) * chunk], statistics)

    def test_budget_never_exceeded(self) -> None:
        policy = self.make_policy()
        for chunk in CHUNK_SIZES:
            budget, storage = policy.budget(chunk), policy.storage(chunk)
            for state, view in self.stream(policy, chunk):
                assert len(set(view.frames)) == len(view.frames), "a frame is attended twice"
                if budget is not None:
                    assert len(view.frames) <= budget, (chunk, view.frames, budget)
                if storage is not None:
                    assert len(state.stored_frames()) <= storage, (chunk, state.stored_frames(), storage)
                assert set(view.frames) <= set(state.stored_frames()), "an attended frame is not stored"

    def test_token_budget_never_exceeded(self) -> None:
        """Counted in tokens: entries smaller than a frame count what they hold; kept rows only shrink."""
        policy = self.make_policy()
        tokens = GRID[0] * GRID[1]
        for chunk in CHUNK_SIZES:
            budget = policy.token_budget(chunk, GRID)
            held: dict[int, set[int]] = {}
            for state, view in self.stream(policy, chunk):
                attended = sum(state.entry_tokens(f) for f in view.frames)
                if budget is not None:
                    assert attended <= budget, (chunk, attended, budget)
                for entry, rows in state.tokens.items():
                    assert rows and set(rows) <= held.get(entry, set(range(tokens))), (entry, rows)
                    assert len(rows) < tokens, "a whole frame is not listed in state.tokens"
                held = {entry: set(rows) for entry, rows in state.tokens.items()}
                if not policy.keeps_sub_frames():
                    assert not state.tokens and not state.pooled

    def test_merged_entries_partition_history(self) -> None:
        """Entries stand for disjoint sets of past frames, each named by one of its own members."""
        policy = self.make_policy()
        for chunk in CHUNK_SIZES:
            for state, _ in self.stream(policy, chunk):
                covered = [
                    frame for entry in state.stored_frames() for frame in state.members.get(entry, [entry])
                ]
                assert len(covered) == len(set(covered)), covered
                assert all(entry in state.members.get(entry, [entry]) for entry in state.stored_frames())
                assert all(frame < state.frames_committed for frame in covered)

    def test_sink_frames_never_evicted(self) -> None:
        policy = self.make_policy()
        for chunk in CHUNK_SIZES:
            for state, view in self.stream(policy, chunk):
                expected = list(range(min(policy.sink, state.frames_committed)))
                assert view.frames[: len(expected)] == expected

    def test_positions_in_range_and_distinct(self) -> None:
        policy = self.make_policy()
        for chunk in CHUNK_SIZES:
            for _, view in self.stream(policy, chunk):
                positions = view.positions + view.query_positions
                assert len(set(positions)) == len(positions), positions
                assert positions == sorted(positions), "positions must keep temporal order"
                if policy.position_mode != "absolute":
                    assert 0 <= min(positions) and max(positions) < policy.rope_length, positions

    def test_fixed_positions_hold(self) -> None:
        """A policy that declares fixed positions reads every kept frame where it was written."""
        policy = self.make_policy()
        if not policy.fixed_positions:
            return
        for chunk in CHUNK_SIZES:
            written: dict[int, int] = {}
            for _, view in self.stream(policy, chunk):
                for frame, position in zip(view.frames, view.positions):
                    assert written[frame] == position, (frame, written[frame], position)
                written.update(zip(view.query_frames, view.query_positions))

    def test_context_positions_match_reading(self) -> None:
        """A teacher shown this memory (:meth:`MemoryPolicy.context_positions`) sees every frame and
        the target's first chunk at the positions the student read them at."""
        policy = self.make_policy()
        for chunk in CHUNK_SIZES:
            for state, view in self.stream(policy, chunk):
                got = policy.context_positions(view.frames, state.frames_committed, 2 * chunk, chunk)
                assert got[:len(view.frames) + chunk] == view.positions + view.query_positions, (view, got)

    def test_recent_frames_visible(self) -> None:
        policy = self.make_policy()
        for chunk in CHUNK_SIZES:
            for state, view in self.stream(policy, chunk):
                end = state.frames_committed
                recent = set(range(max(0, end - self.recent), end))
                assert recent <= set(view.frames), (recent, view.frames)

    def test_deterministic(self) -> None:
        policy = self.make_policy()
        first = [(list(v.frames), list(v.positions)) for _, v in self.stream(policy, 3, seed=1)]
        again = [(list(v.frames), list(v.positions)) for _, v in self.stream(policy, 3, seed=1)]
        assert first == again

    def test_mask_matches_streaming(self) -> None:
        import pytest  # only the checks need it, not importing this module

        policy = self.make_policy()
        if policy.merges_entries() or policy.keeps_sub_frames():  # a boolean frame mask cannot express them
            with pytest.raises(ValueError, match="merges entries"):
                policy.frame_mask(NUM_CHUNKS, 1)
            return
        for chunk in CHUNK_SIZES:
            num_frames = chunk * NUM_CHUNKS
            summaries = self.summaries(num_frames)
            fresh = policy.new_state(chunk)
            self.prepare(fresh)
            attention = (
                partial(self.statistics, policy, summaries=summaries) if policy.attention_spec() else None
            )
            mask = policy.frame_mask(num_frames, chunk, summaries, attention, fresh)
            for c, (_, view) in enumerate(self.stream(policy, chunk)):
                for i in range(c * chunk, (c + 1) * chunk):
                    visible = mask[i].nonzero().flatten().tolist()
                    assert visible == sorted(view.frames + view.query_frames), (i, visible, view.frames)
