"""The zoo's contract extensions on the real model: attention statistics, merged entries, archives.

Streaming equals the masked full-sequence forward wherever a mask can express the policy (no merged
entries, absolute positions); the decisions a stream took (attention statistics, summaries) are
recorded and replayed into the mask, as tests/models/test_streaming.py does for surprisal.
"""

from __future__ import annotations

import pytest
import torch

from cf_lightning.models import build_wan
from cf_lightning.models.attention_stats import frame_attention
from cf_lightning.models.kv_memory import KVMemory
from cf_lightning.models.masks import teacher_forcing_layout
from memory_policies import (
    DeepForcing,
    FadeMem,
    InfinityRoPE,
    LongLiveRAG,
    MemoryPolicy,
    Oracle,
    PackForcing,
    RollingSink,
)
from tests.models.test_streaming import B, H, W, full_forward, inputs, stream

CHUNK, FRAMES = 2, 12


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_wan("tiny").eval()


def recording(policy: MemoryPolicy) -> tuple[MemoryPolicy, dict[int, list[tuple]]]:
    """Wrap ``policy.commit`` to remember, per video state, what each commit was given."""
    seen: dict[int, list[tuple]] = {}
    commit = policy.commit

    def record(state, summaries=None, attention=None):
        seen.setdefault(id(state), []).append((summaries, attention))
        commit(state, summaries, attention)

    policy.commit = record  # type: ignore[method-assign]
    return policy, seen


def replayed_masks(policy: MemoryPolicy, memory: KVMemory, seen) -> torch.Tensor:
    """Each video's teacher-forcing mask, rendered from what its stream's commits were given."""
    masks = []
    for state in memory.states:
        calls = seen[id(state)]
        summaries = torch.cat([s for s, _ in calls]) if calls[0][0] is not None else None
        recorded = iter([a for _, a in calls])
        replay = (lambda _view, it=recorded: next(it)) if policy.attention_spec() else None
        masks.append(teacher_forcing_layout(policy.frame_mask(FRAMES, CHUNK, summaries, replay), CHUNK))
    return torch.stack(masks)


@torch.no_grad()
def test_deep_forcing_streaming_equals_masked_forward_with_its_recorded_attention(model):
    clean, noisy, context = inputs(FRAMES, seed=5)
    policy, seen = recording(
        DeepForcing(sink=1, compressed=2, recent=4, attention_layer=1, position_mode="absolute")
    )
    stream_noisy, stream_clean, memory = stream(model, policy, CHUNK, clean, noisy, context)
    masks = replayed_masks(policy, memory, seen)
    full_noisy, full_clean = full_forward(model, masks, clean, noisy, context)
    assert (stream_noisy - full_noisy).abs().max() < 1e-5
    assert (stream_clean - full_clean).abs().max() < 1e-5


@torch.no_grad()
def test_retrieval_streaming_equals_masked_forward(model):
    clean, noisy, context = inputs(FRAMES, seed=6)
    policy, seen = recording(LongLiveRAG(sink=1, retrieved=2, recent=2, archive=6, position_mode="absolute"))
    stream_noisy, _, memory = stream(model, policy, CHUNK, clean, noisy, context)
    assert memory.capacity == policy.storage(CHUNK) > policy.budget(CHUNK)
    masks = replayed_masks(policy, memory, seen)
    full_noisy, _ = full_forward(model, masks, clean, noisy, context)
    assert (stream_noisy - full_noisy).abs().max() < 1e-5


@torch.no_grad()
def test_oracle_streaming_equals_masked_forward(model):
    clean, noisy, context = inputs(FRAMES, seed=7)
    futures = [[-1, 0, -1, -1, 0, 0, 2, 2, 3, 0, 2, 3], [-1] * 6 + [0, 1, 2, 3, 4, 5]]
    policy = Oracle(sink=1, slots=2, recent=2, position_mode="absolute")
    memory = model.new_memory(policy, B, CHUNK, (H, W))
    for state, future in zip(memory.states, futures):
        Oracle.inform(state, future)
    outputs = []
    for start in range(0, FRAMES, CHUNK):
        part = slice(start, start + CHUNK)
        outputs.append(model(noisy[:, :, part], torch.full((B,), 700.0), context, memory=memory))
        model(clean[:, :, part], torch.zeros(B), context, memory=memory, mode="predict_commit")
    masks = torch.stack(
        [
            teacher_forcing_layout(policy.frame_mask(FRAMES, CHUNK, state=_informed(policy, future)), CHUNK)
            for future in futures
        ]
    )
    full_noisy, _ = full_forward(model, masks, clean, noisy, context)
    assert (torch.cat(outputs, 2) - full_noisy).abs().max() < 1e-5


def _informed(policy: Oracle, future: list[int]):
    state = policy.new_state(CHUNK)
    Oracle.inform(state, future)
    return state


@torch.no_grad()
def test_attention_statistics_are_a_share_of_the_chunk_attention_and_path_independent(model):
    clean, noisy, context = inputs(FRAMES, seed=8)
    results = []
    for cache_reads in (True, False):
        policy, seen = recording(DeepForcing(sink=1, compressed=2, recent=4, attention_layer=-1))
        memory = model.new_memory(policy, B, CHUNK, (H, W), cache_reads=cache_reads)
        for start in range(0, FRAMES, CHUNK):
            part = slice(start, start + CHUNK)
            model(noisy[:, :, part], torch.full((B,), 700.0), context, memory=memory)
            model(clean[:, :, part], torch.zeros(B, CHUNK), context, memory=memory, mode="commit")
        results.append([a for state in memory.states for _, a in seen[id(state)]])
    for with_cache, without in zip(*results):
        assert torch.allclose(with_cache, without, atol=1e-6)
    masses = [a for a in results[0] if a.numel()]
    assert masses and all(0 < float(a.sum()) < 1 and bool((a > 0).all()) for a in masses)


def test_frame_attention_matches_a_direct_softmax():
    gen = torch.Generator().manual_seed(0)
    tokens, heads, dim = 3, 2, 4
    queries = torch.randn(1, 2 * tokens, heads, dim, generator=gen)
    memory_keys = torch.randn(1, 2 * tokens, heads, dim, generator=gen)
    chunk_keys = torch.randn(1, 2 * tokens, heads, dim, generator=gen)
    mass = frame_attention(queries, memory_keys, chunk_keys, None, tokens)
    keys = torch.cat([memory_keys, chunk_keys], 1)
    direct = torch.zeros(2)
    for h in range(heads):
        probs = (queries[0, :, h] @ keys[0, :, h].T / dim**0.5).softmax(-1)  # [queries, keys]
        direct += probs[:, : 2 * tokens].mean(0).view(2, tokens).sum(-1) / heads
    assert torch.allclose(mass[0], direct, atol=1e-6)
    # the mask is per token row: frame 1 padded, and row 0 of frame 0 pruned
    valid = torch.tensor([[False] + [True] * (tokens - 1) + [False] * tokens])
    padded = frame_attention(queries, memory_keys, chunk_keys, valid, tokens, per_token=True)
    assert padded[0, 1].eq(0).all() and padded[0, 0, 0] == 0
    assert padded[0, 0, 1:].gt(0).all() and padded.shape == (1, 2, tokens)


def test_kv_memory_stores_a_merge_as_the_weighted_mean_of_its_frames():
    policy = FadeMem(sink=0, entries=2, recent=4, alpha=1.0)
    tokens, heads, dim, layers = 2, 1, 3, 2
    memory = KVMemory(policy, 1, CHUNK, tokens, layers, heads, dim)
    for start in range(0, 16, CHUNK):
        # every token of frame f carries the value f in its keys and 10 f in its values
        frames = torch.arange(start, start + CHUNK, dtype=torch.float32).repeat_interleave(tokens)
        keys = frames.view(1, -1, 1, 1).expand(1, CHUNK * tokens, heads, dim)
        memory.commit([keys] * layers, [10 * keys] * layers, None)
    state = memory.states[0]
    merged = [e for e in state.regions["slow"] if len(state.members.get(e, [e])) > 1]
    assert merged
    for entry in merged:
        slot = memory._slot_of[0][entry]
        mean = sum(state.members[entry]) / len(state.members[entry])
        assert torch.allclose(memory.keys[:, 0, slot], torch.full_like(memory.keys[:, 0, slot], mean))
        assert torch.allclose(
            memory.values[:, 0, slot], torch.full_like(memory.values[:, 0, slot], 10 * mean)
        )
    assert len(memory._slot_of[0]) == len(state.stored_frames()) <= memory.capacity == policy.storage(CHUNK)


class FixedMerging(FadeMem):
    """A merging policy that (wrongly) claims fixed positions: storage must still refuse rotated keys."""

    @property
    def fixed_positions(self) -> bool:
        return True


def test_merging_policies_refuse_rotated_storage():
    with pytest.raises(ValueError, match="merged entries"):
        KVMemory(FixedMerging(), 1, CHUNK, 2, 1, 1, 2, store_rotated=True)
    assert not KVMemory(FixedMerging(), 1, CHUNK, 2, 1, 1, 2).store_rotated


@pytest.mark.parametrize("policy", [
    DeepForcing(sink=2, compressed=2, recent=4, rope_length=10),
    FadeMem(sink=1, entries=3, recent=4, rope_length=10),
    PackForcing(sink=1, selected=2, recent=4, mid=4, pack=2, rope_length=10),
    LongLiveRAG(sink=1, retrieved=3, recent=4, archive=6, rope_length=10),
    DeepForcing(sink=2, compressed=3, recent=4, token_share=0.5, rope_length=11),
    PackForcing(sink=1, selected=2, recent=4, mid=4, pack=2, pool=2, rope_length=10),
    InfinityRoPE(sink=1, recent=6, rope_length=10),
    RollingSink(sink=1, recent=4, pool=4, roll_every=2, rope_length=10),
], ids=["deep_forcing", "fade_mem", "pack_forcing", "longlive_rag", "deep_forcing_tokens",
        "pack_forcing_pooled", "infinity_rope", "rolling_sink"])
@torch.no_grad()
def test_zoo_policies_stream_within_their_budget(model, policy):
    clean, noisy, context = inputs(24, seed=9)
    out, _, memory = stream(model, policy, CHUNK, clean, noisy, context)
    assert torch.isfinite(out).all()
    assert memory.capacity == policy.storage(CHUNK)
    for state, slots in zip(memory.states, memory._slot_of):
        assert sorted(slots) == state.stored_frames()
        assert len(state.kept_frames()) <= policy.budget(CHUNK)
        assert sum(map(state.entry_tokens, state.kept_frames())) <= policy.token_budget(CHUNK, memory.grid)
        assert state.tokens or state.pooled or not policy.keeps_sub_frames()


def token_teacher_forcing_mask(frame_mask: torch.Tensor, reads: list[tuple[list[int], dict[int, tuple]]],
                               tokens: int) -> torch.Tensor:
    """A ``[2N, 2N]`` frame mask expanded to tokens, with the token rows each chunk's memory no longer held
    removed: the explicit attention over the kept token subset that streaming must equal."""
    num_frames = frame_mask.shape[0] // 2
    mask = frame_mask.repeat_interleave(tokens, 0).repeat_interleave(tokens, 1)
    for c, (_, kept) in enumerate(reads):
        query_rows = [half * num_frames + f for half in (0, 1) for f in range(c * CHUNK, (c + 1) * CHUNK)]
        for frame, rows in kept.items():
            dropped = [frame * tokens + r for r in range(tokens) if r not in rows]
            for q in query_rows:
                mask[q * tokens:(q + 1) * tokens, dropped] = False
    return mask


@torch.no_grad()
def test_token_level_deep_forcing_streaming_equals_attention_over_the_kept_tokens(model):
    """Pruned entries keep their tokens' rows, hence their spatial RoPE positions (keys stored rotated here):
    streaming equals a full-sequence forward whose token mask removes exactly the dropped rows."""
    clean, noisy, context = inputs(FRAMES, seed=10)
    policy = DeepForcing(sink=1, compressed=2, recent=4, token_share=0.4, attention_layer=1,
                         position_mode="absolute")
    reads: dict[int, list] = {}
    read = policy.read

    def recorded_read(state):
        view = read(state)
        reads.setdefault(id(state), []).append((view.frames, {f: state.tokens[f] for f in view.frames
                                                               if f in state.tokens}))
        return view

    policy.read = recorded_read  # type: ignore[method-assign]
    stream_noisy, stream_clean, memory = stream(model, policy, CHUNK, clean, noisy, context)
    assert memory.store_rotated
    tokens = model.tokens_per_frame((H, W))
    assert any(kept for state in memory.states for _, kept in reads[id(state)]), "nothing was pruned"
    masks = [
        token_teacher_forcing_mask(teacher_forcing_layout(_read_frame_mask(reads[id(state)]), CHUNK),
                                   reads[id(state)], tokens)
        for state in memory.states
    ]
    steps = torch.cat([torch.zeros(B, FRAMES), torch.full((B, FRAMES), 700.0)], 1)
    positions = torch.cat([torch.arange(FRAMES)] * 2).expand(B, -1)
    out, _ = model._run(torch.cat([clean, noisy], 2), steps, context, None, None, positions,
                        torch.stack(masks), None, None)
    assert (stream_noisy - out[:, :, FRAMES:]).abs().max() < 1e-5
    assert (stream_clean - out[:, :, :FRAMES]).abs().max() < 1e-5


def _read_frame_mask(reads) -> torch.Tensor:
    """The ``[N, N]`` frame mask of the frames each chunk read (one read per chunk)."""
    mask = torch.zeros(FRAMES, FRAMES, dtype=torch.bool)
    for c, (frames, _) in enumerate(reads):
        rows = slice(c * CHUNK, (c + 1) * CHUNK)
        mask[rows, frames] = True
        mask[rows, rows] = True
    return mask


def test_kv_memory_pools_a_mid_entry_into_the_centre_rows_of_its_windows():
    grid, pool, heads, dim, layers = (3, 3), 2, 1, 2, 1
    tokens = grid[0] * grid[1]
    policy = PackForcing(sink=0, selected=2, recent=2, mid=4, pack=1, pool=pool)
    memory = KVMemory(policy, 1, CHUNK, tokens, layers, heads, dim, grid=grid)
    gen = torch.Generator().manual_seed(0)
    for start in range(0, 12, CHUNK):
        # token t of frame f carries 100 f + t in its keys and values
        values = (100 * torch.arange(start, start + CHUNK)[:, None] + torch.arange(tokens)).float().flatten()
        keys = values.view(1, -1, 1, 1).expand(1, CHUNK * tokens, heads, dim)
        memory.commit([keys] * layers, [keys] * layers, torch.randn(1, CHUNK, 3, generator=gen))
    state = memory.states[0]
    pooled = [e for e in state.stored_frames() if e in state.pooled]
    assert pooled and all(state.entry_tokens(e) == 4 for e in pooled)
    windows = [[0, 1, 3, 4], [2, 5], [6, 7], [8]]
    for entry in pooled:
        slot = memory.keys[0, 0, memory._slot_of[0][entry], :, 0, 0]
        for row, window in zip([0, 2, 6, 8], windows):
            assert slot[row] == 100 * entry + sum(window) / len(window)
    read = memory.read()
    assert read.valid is not None
    valid = read.valid[0].view(-1, tokens)
    for j, frame in enumerate(read.views[0].frames):
        expected = [0, 2, 6, 8] if frame in state.pooled else list(range(tokens))
        assert valid[j].nonzero().flatten().tolist() == expected


def test_whole_frame_memories_build_no_mask():
    policy = DeepForcing(sink=1, compressed=2, recent=4, token_share=1.0)
    memory = KVMemory(policy, 2, CHUNK, 4, 1, 1, 2, grid=(2, 2))
    for _ in range(6):
        zeros = torch.zeros(2, CHUNK * 4, 1, 2)
        memory.commit([zeros], [zeros], None, torch.full((2, len(memory.states[0].kept_frames())), 0.1))
    assert memory.read().valid is None
