"""Streaming with a KV memory equals the masked full-sequence forward (and a cache-free reference)."""

from __future__ import annotations

import pytest
import torch

from cf_lightning.models import build_wan, teacher_forcing_mask
from memory_policies import Full, Keyframe, MemoryPolicy, SlidingWindow, SlowFast

B, H, W = 2, 4, 4


class Recording(SlowFast):
    """SlowFast that remembers the summaries it was given, per video, to render the same mask."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen: dict[int, list[torch.Tensor]] = {}

    def commit(self, state, summaries=None):
        self.seen.setdefault(id(state), []).append(summaries.clone())
        super().commit(state, summaries)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_wan("tiny").eval()


def inputs(num_frames: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randn(B, 4, num_frames, H, W, generator=gen)
    noisy = torch.randn(B, 4, num_frames, H, W, generator=gen)
    context = torch.randn(B, 5, 16, generator=gen)
    return clean, noisy, context


def stream(model, policy: MemoryPolicy, chunk: int, clean, noisy, context, t: float = 700.0):
    memory = model.new_memory(policy, B, chunk, (H, W))
    noisy_out, clean_out = [], []
    for start in range(0, clean.shape[2], chunk):
        part = slice(start, start + chunk)
        noisy_out.append(model(noisy[:, :, part], torch.full((B,), t), context, memory=memory))
        clean_out.append(model(clean[:, :, part], torch.zeros(B), context, memory=memory, mode="predict_commit"))
    return torch.cat(noisy_out, 2), torch.cat(clean_out, 2), memory


def full_forward(model, mask, clean, noisy, context, t: float = 700.0):
    num_frames = clean.shape[2]
    steps = torch.cat([torch.zeros(B, num_frames), torch.full((B, num_frames), t)], 1)
    positions = torch.cat([torch.arange(num_frames)] * 2)
    out = model(torch.cat([clean, noisy], 2), steps, context, positions=positions, frame_mask=mask)
    return out[:, :, num_frames:], out[:, :, :num_frames]


@pytest.mark.parametrize("chunk", [1, 2, 3])
@pytest.mark.parametrize("policy", [
    Full(),
    SlidingWindow(sink=1, window=4, position_mode="absolute"),
    SlowFast(sink=1, slow=2, fast=4, admission="uniform", position_mode="absolute"),
    Keyframe(sink=1, keyframes=2, window=4, position_mode="absolute"),
], ids=["full", "sliding_window", "slow_fast_uniform", "keyframe"])
@torch.no_grad()
def test_streaming_equals_masked_full_forward(model, policy, chunk):
    num_frames = 12
    clean, noisy, context = inputs(num_frames)
    stream_noisy, stream_clean, _ = stream(model, policy, chunk, clean, noisy, context)
    mask = teacher_forcing_mask(policy, num_frames, chunk)
    full_noisy, full_clean = full_forward(model, mask, clean, noisy, context)
    assert (stream_noisy - full_noisy).abs().max() < 1e-5
    assert (stream_clean - full_clean).abs().max() < 1e-5


@torch.no_grad()
def test_surprisal_decisions_per_video_match_their_masks(model):
    chunk, num_frames = 2, 12
    clean, noisy, context = inputs(num_frames, seed=3)
    clean[0] = clean[0, :, :1]  # video 0 is static, video 1 changes every frame
    policy = Recording(sink=1, slow=2, fast=3, threshold=0.9, interval=1, position_mode="absolute")
    stream_noisy, _, memory = stream(model, policy, chunk, clean, noisy, context)
    assert memory.states[0].regions["slow"] != memory.states[1].regions["slow"]
    masks = []
    for state in memory.states:
        summaries = torch.cat(policy.seen[id(state)])
        masks.append(teacher_forcing_mask(policy, num_frames, chunk, summaries))
    full_noisy, _ = full_forward(model, torch.stack(masks), clean, noisy, context)
    assert (stream_noisy - full_noisy).abs().max() < 1e-5


def reference_stream(model, policy: MemoryPolicy, chunk: int, clean, noisy, context, t: float = 700.0):
    """Cache-free reference: one video at a time, per-frame K/V kept in a dict, no slots or padding."""
    outputs = []
    for b in range(B):
        state = policy.new_state(chunk)
        store: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        per_video = []
        for start in range(0, clean.shape[2], chunk):
            part = slice(start, start + chunk)
            view = policy.read(state)
            positions = torch.tensor(view.positions + view.query_positions)[None]
            keep = len(view.frames)
            # Run the same blocks by hand with memory built from the dict.
            per_video.append(_manual(model, noisy[b:b + 1, :, part], t, context[b:b + 1], positions, view, store))
            kvs = _manual(model, clean[b:b + 1, :, part], 0.0, context[b:b + 1], positions, view, store,
                          return_kv=True)
            keys = [k for k, _ in kvs]
            summaries = model.frame_summaries(keys, chunk, policy.summary_spec())[0] if policy.needs_summaries() else None
            policy.commit(state, summaries)
            tokens = kvs[0][0].shape[1] // chunk
            for j, frame in enumerate(range(start, start + chunk)):
                rows = slice(j * tokens, (j + 1) * tokens)
                store[frame] = [(k[:, rows], v[:, rows]) for k, v in kvs]
            kept = set(state.kept_frames())
            for frame in list(store):
                if frame not in kept:
                    del store[frame]
            assert keep <= (policy.budget(chunk) or 10**9)
        outputs.append(torch.cat(per_video, 2))
    return torch.cat(outputs, 0)


def _manual(model, x, t, context, positions, view, store, return_kv=False):
    """The blocks run by hand: memory keys are the un-rotated keys from ``store``, rotated here to the
    view's positions for every forward (whatever the memory stores)."""
    from cf_lightning.models.rope import apply_rope, rope_angles, rope_cos_sin
    from cf_lightning.models.wan import ChunkKV

    frames = x.shape[2]
    tokens = model.patch_embedding(x).flatten(2).transpose(1, 2)
    e, e0 = model._time_embedding(torch.full((1,), float(t)), 1, frames, None)
    text = model.text_embedding(context)
    grid = (H // 2, W // 2)
    cos, sin = rope_cos_sin(rope_angles(positions, grid, model.config.head_dim), torch.float32)
    split = cos.shape[1] - tokens.shape[1]
    kvs = []
    for layer, block in enumerate(model.blocks):
        memory = None
        if view.frames:
            keys = torch.cat([store[f][layer][0] for f in view.frames], 1)
            values = torch.cat([store[f][layer][1] for f in view.frames], 1)
            memory = ChunkKV(apply_rope(keys, cos[:, :split], sin[:, :split]), values, tokens.shape[1])
        tokens, kv = block(tokens, e0, (cos[:, split:], sin[:, split:]), text, None, None, memory, "sdpa")
        kvs.append(kv)
    if return_kv:
        return kvs
    return model._unpatchify(model.head(tokens, e), frames, grid)


@pytest.mark.parametrize("policy", [
    SlidingWindow(sink=1, window=4, rope_length=5),
    SlowFast(sink=1, slow=2, fast=4, threshold=0.99, interval=1, rope_length=7),
    SlowFast(sink=1, slow=2, fast=4, threshold=0.5, interval=1, summary="token_keys", summary_layer=0,
             compare_to="last_admitted", rope_length=7),
    SlowFast(sink=1, slow=2, fast=4, admission="uniform", position_mode="true_time", rope_length=7),
    Keyframe(sink=1, keyframes=2, window=4, rope_length=7),
], ids=["sliding_window", "slow_fast", "slow_fast_token_keys", "slow_fast_true_time", "keyframe"])
@torch.no_grad()
def test_bounded_streaming_equals_cache_free_reference(model, policy):
    chunk, num_frames = 2, 14
    clean, noisy, context = inputs(num_frames, seed=5)
    stream_noisy, _, _ = stream(model, policy, chunk, clean, noisy, context)
    reference = reference_stream(model, policy, chunk, clean, noisy, context)
    assert (stream_noisy - reference).abs().max() < 1e-5


@torch.no_grad()
def test_memory_stays_within_budget_over_200_chunks(model):
    policy = SlowFast(sink=3, slow=4, fast=6, threshold=0.999, interval=1)
    chunk = 3
    memory = model.new_memory(policy, 1, chunk, (H, W))
    budget = policy.budget(chunk)
    tokens = model.tokens_per_frame((H, W))
    context = torch.randn(1, 3, 16)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        x = torch.randn(1, 4, chunk, H, W, generator=gen)
        model(x, torch.zeros(1), context, memory=memory, mode="predict_commit")
        assert memory.stored_frames() <= budget
        assert memory.keys.shape[2] * memory.keys.shape[3] == budget * tokens
    assert memory.frames_committed == 600
