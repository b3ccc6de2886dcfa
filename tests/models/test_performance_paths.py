"""The streaming fast paths give the plain path's numbers exactly, and the per-chunk path does not sync.

Fast paths: the memory read (and the RoPE tables, gathered and rotated memory keys derived from it) is
computed once per chunk instead of once per forward; the text's cross-attention keys/values are
projected once per rollout; a read shared by the whole batch indexes with one row and never pads.
"""

from __future__ import annotations

import traceback
from contextlib import contextmanager

import pytest
import torch

from cf_lightning.diffusion import denoising_sigmas
from cf_lightning.models import build_wan
from cf_lightning.rollout import randn, rollout
from memory_policies import Full, Keyframe, MemoryPolicy, SlidingWindow, SlowFast

B, H, W, CHUNK = 2, 4, 4, 2

POLICIES = {
    "sliding_window": lambda: SlidingWindow(sink=1, window=4, rope_length=5),
    "keyframe": lambda: Keyframe(sink=1, keyframes=2, window=4, rope_length=7),
    "slow_fast": lambda: SlowFast(sink=1, slow=2, fast=4, threshold=0.9, interval=1, rope_length=7),
    "full": lambda: Full(),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster, and far less sensitive to a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_wan("tiny").eval()


def data(num_frames: int, seed: int = 0, static_first: bool = True):
    gen = torch.Generator().manual_seed(seed)
    noisy = torch.randn(B, 4, num_frames, H, W, generator=gen)
    clean = torch.randn(B, 4, num_frames, H, W, generator=gen)
    if static_first:  # video 0 never changes, video 1 does: surprisal decisions differ per video
        clean[0] = clean[0, :, :1]
    return noisy, clean, torch.randn(B, 3, 16, generator=gen)


def stream(model, memory, noisy, clean, context, reuse_text: bool):
    context_kv = model(None, None, context, mode="context_kv") if reuse_text else None
    outs = []
    for start in range(0, noisy.shape[2], CHUNK):
        part = slice(start, start + CHUNK)
        for t in (900.0, 400.0):  # two denoising forwards on the same read, then the refresh
            outs.append(model(noisy[:, :, part], torch.full((B,), t), context, memory=memory,
                              context_kv=context_kv))
        outs.append(model(clean[:, :, part], torch.zeros(B), context, memory=memory, context_kv=context_kv,
                          mode="predict_commit"))
    return torch.cat(outs, 2)


@pytest.mark.parametrize("name", list(POLICIES))
@torch.no_grad()
def test_cached_reads_and_text_reuse_are_bit_identical_to_the_plain_path(model, name):
    noisy, clean, context = data(12)
    plain = stream(model, model.new_memory(POLICIES[name](), B, CHUNK, (H, W), cache_reads=False),
                   noisy, clean, context, reuse_text=False)
    reads = stream(model, model.new_memory(POLICIES[name](), B, CHUNK, (H, W)), noisy, clean, context, reuse_text=False)
    both = stream(model, model.new_memory(POLICIES[name](), B, CHUNK, (H, W)), noisy, clean, context, reuse_text=True)
    assert torch.equal(reads, plain)
    assert torch.equal(both, plain)


@pytest.mark.parametrize("name", list(POLICIES))
@torch.no_grad()
def test_commit_mode_commits_exactly_what_the_full_refresh_commits(model, name):
    noisy, clean, context = data(12)
    full, short = (model.new_memory(POLICIES[name](), B, CHUNK, (H, W)) for _ in range(2))
    context_kv = model(None, None, context, mode="context_kv")
    for start in range(0, 12, CHUNK):
        part = slice(start, start + CHUNK)
        for memory in (full, short):  # a denoising forward first, so the refresh reuses a staged read
            model(noisy[:, :, part], torch.full((B,), 500.0), context, memory=memory, context_kv=context_kv)
        model(clean[:, :, part], torch.zeros(B), context, memory=full, context_kv=context_kv, mode="predict_commit")
        model(clean[:, :, part], torch.zeros(B), context, memory=short, context_kv=context_kv, mode="commit")
        assert [s.regions for s in short.states] == [s.regions for s in full.states]
        assert torch.equal(short.keys, full.keys) and torch.equal(short.values, full.values)


FIXED_POSITION_POLICIES = {
    "full": lambda: Full(),
    "sliding_window_absolute": lambda: SlidingWindow(sink=1, window=4, position_mode="absolute"),
    "slow_fast_absolute": lambda: SlowFast(sink=1, slow=2, fast=4, threshold=0.9, interval=1,
                                           position_mode="absolute"),
}


@pytest.mark.parametrize("name", list(FIXED_POSITION_POLICIES))
@torch.no_grad()
def test_keys_stored_rotated_with_fixed_positions_give_the_same_numbers(model, name):
    """Absolute positions: keys are rotated once at commit (bit-identical to rotating them at every read)
    and surprisal still decides on un-rotated keys (same regions)."""
    noisy, clean, context = data(12)
    rotated = model.new_memory(FIXED_POSITION_POLICIES[name](), B, CHUNK, (H, W))
    at_read = model.new_memory(FIXED_POSITION_POLICIES[name](), B, CHUNK, (H, W), store_rotated=False)
    assert rotated.store_rotated and not at_read.store_rotated
    assert torch.equal(stream(model, rotated, noisy, clean, context, True),
                       stream(model, at_read, noisy, clean, context, True))
    assert [s.regions for s in rotated.states] == [s.regions for s in at_read.states]


def _rotated_token_counts(model, policy, monkeypatch) -> list[int]:
    """Tokens of every RoPE rotation the model applies over a 6-chunk stream (the last 3 recorded)."""
    from cf_lightning.models import wan

    counts: list[int] = []
    original = wan.apply_rope
    monkeypatch.setattr(wan, "apply_rope", lambda x, cos, sin: counts.append(x.shape[1]) or original(x, cos, sin))
    noisy, clean, context = data(12)
    memory = model.new_memory(policy, B, CHUNK, (H, W))
    stream(model, memory, noisy[:, :, :6], clean[:, :, :6], context, True)
    counts.clear()  # steady state: the memory is full
    stream(model, memory, noisy[:, :, 6:], clean[:, :, 6:], context, True)
    return counts


@torch.no_grad()
def test_fixed_positions_never_rotate_the_cache_again(model, monkeypatch):
    """Only the query moves: every rotation covers one chunk's tokens, none the memory's."""
    chunk_tokens = CHUNK * model.tokens_per_frame((H, W))
    policy = SlidingWindow(sink=1, window=4, position_mode="absolute")
    assert set(_rotated_token_counts(model, policy, monkeypatch)) == {chunk_tokens}
    bounded = SlidingWindow(sink=1, window=4, rope_length=5)  # positions re-packed every chunk: rotated on read
    assert max(_rotated_token_counts(model, bounded, monkeypatch)) == bounded.budget(CHUNK) * chunk_tokens // CHUNK


def test_store_rotated_is_refused_when_positions_move(model):
    with pytest.raises(ValueError, match="position_mode='bounded'.*allowed with position_mode='absolute'"):
        model.new_memory(SlidingWindow(sink=1, window=4, rope_length=5), B, CHUNK, (H, W), store_rotated=True)


@torch.no_grad()
def test_per_video_decisions_use_the_padded_path_and_still_match(model):
    noisy, clean, context = data(12)
    policy = SlowFast(sink=1, slow=2, fast=4, threshold=0.9, interval=1, position_mode="absolute")
    memory = model.new_memory(policy, B, CHUNK, (H, W))
    stream(model, memory, noisy, clean, context, reuse_text=True)
    read = memory.read()
    assert memory.states[0].regions["slow"] != memory.states[1].regions["slow"]
    assert not read.shared
    plain = model.new_memory(policy, B, CHUNK, (H, W), cache_reads=False)
    assert torch.equal(stream(model, plain, noisy, clean, context, False),
                       stream(model, model.new_memory(policy, B, CHUNK, (H, W)), noisy, clean, context, True))


@torch.no_grad()
def test_shared_read_indexes_one_row_without_padding(model):
    noisy, clean, context = data(8)
    memory = model.new_memory(SlidingWindow(sink=1, window=4, rope_length=5), B, CHUNK, (H, W))
    stream(model, memory, noisy, clean, context, reuse_text=True)
    read = memory.read()
    assert read.shared and read.valid is None
    assert read.slots.shape == (B, read.num_frames) and read.slots.stride(0) == 0  # one row, expanded
    batch = torch.arange(B)[:, None]
    for layer in range(model.config.num_layers):
        keys, values = memory.gather(layer, read)
        assert torch.equal(keys, memory.keys[layer][batch, read.slots].flatten(1, 2))
        assert torch.equal(values, memory.values[layer][batch, read.slots].flatten(1, 2))


@torch.no_grad()
def test_read_is_computed_once_per_chunk_and_dropped_at_commit(model):
    policy = SlidingWindow(sink=1, window=4, rope_length=5)
    calls = []
    original = policy.read
    policy.read = lambda state: calls.append(1) or original(state)
    memory = model.new_memory(policy, B, CHUNK, (H, W))
    noisy, clean, context = data(6)
    stream(model, memory, noisy, clean, context, reuse_text=True)
    assert len(calls) == B * 3  # 3 chunks x 3 forwards each, one policy read per video and chunk
    assert memory._read is None  # the last commit dropped the cached read and its derived tensors
    memory.read()
    assert memory.read().cache is memory.read().cache


@torch.no_grad()
def test_rollout_equals_a_plain_streaming_forward_loop(model):
    sigmas = denoising_sigmas(3)
    noise, _, context = data(8, seed=2, static_first=False)
    policy = SlowFast(sink=1, slow=2, fast=4, threshold=0.99, interval=1, rope_length=7)
    fast = rollout(model, policy, noise, context, sigmas, chunk_frames=CHUNK,
                   generator=[torch.Generator().manual_seed(b) for b in range(B)]).video
    gens = [torch.Generator().manual_seed(b) for b in range(B)]
    memory = model.new_memory(policy, B, CHUNK, (H, W), cache_reads=False)
    chunks = []
    for start in range(0, noise.shape[2], CHUNK):
        x = noise[:, :, start:start + CHUNK]
        for step, sigma in enumerate(sigmas.tolist()):
            velocity = model(x, torch.full((B, CHUNK), sigma * 1000), context, memory=memory)
            x0 = x - sigma * velocity
            if step + 1 < len(sigmas):
                s = float(sigmas[step + 1])
                x = (1 - s) * x0 + s * randn(x0.shape, gens)
        model(x0, torch.zeros(B, CHUNK), context, memory=memory, mode="predict_commit")
        chunks.append(x0)
    assert torch.equal(fast, torch.cat(chunks, 2))


def test_gradients_through_rollout_still_reach_the_text_projections(model):
    sigmas = denoising_sigmas(2)
    noise, _, context = data(4, seed=4, static_first=False)
    policy = SlidingWindow(sink=1, window=4, rope_length=5)
    weights = [model.text_embedding[0].weight, model.blocks[0].cross_attn.k.weight, model.blocks[-1].cross_attn.v.weight]

    def grads(run):
        model.zero_grad(set_to_none=True)
        run().square().mean().backward()
        return [w.grad.clone() for w in weights]

    def with_rollout():
        return rollout(model, policy, noise, context, sigmas, chunk_frames=CHUNK, exit_step=1, grad_from_chunk=1,
                       generator=torch.Generator().manual_seed(0)).video

    def plain():  # same draws, every forward re-projects the text
        gen = torch.Generator().manual_seed(0)
        memory = model.new_memory(policy, B, CHUNK, (H, W), cache_reads=False)
        chunks = []
        for index, start in enumerate(range(0, noise.shape[2], CHUNK)):
            x = noise[:, :, start:start + CHUNK]
            with torch.no_grad():
                x0 = x - float(sigmas[0]) * model(x, torch.full((B, CHUNK), float(sigmas[0]) * 1000),
                                                  context, memory=memory)
                x = (1 - float(sigmas[1])) * x0 + float(sigmas[1]) * randn(x0.shape, gen)
            with torch.enable_grad() if index >= 1 else torch.no_grad():
                x0 = x - float(sigmas[1]) * model(x, torch.full((B, CHUNK), float(sigmas[1]) * 1000),
                                                  context, memory=memory)
            with torch.no_grad():
                model(x0.detach(), torch.zeros(B, CHUNK), context, memory=memory, mode="predict_commit")
            chunks.append(x0)
        return torch.cat(chunks, 2)

    fast, reference = grads(with_rollout), grads(plain)
    for a, b in zip(fast, reference):
        assert a.abs().sum() > 0
        assert torch.allclose(a, b, rtol=0, atol=1e-7)
    model.zero_grad(set_to_none=True)


SYNCING = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy")


@contextmanager
def count_host_reads():
    """Record every tensor-to-host read (``.item()``, ``bool(t)``, ``float(t)``...) and where it came from."""
    calls: list[str] = []
    saved = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def wrap(name, fn):
        def recorded(*args, **kwargs):
            caller = traceback.extract_stack(limit=3)[0]
            calls.append(f"{name} from {caller.filename}:{caller.lineno}")
            return fn(*args, **kwargs)
        return recorded

    for name, fn in saved.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    try:
        yield calls
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


@pytest.mark.parametrize("name", ["sliding_window", "keyframe", "full"])
@torch.no_grad()
def test_no_host_reads_in_the_per_chunk_path_of_data_independent_policies(model, name):
    noisy, clean, context = data(10)
    memory = model.new_memory(POLICIES[name](), B, CHUNK, (H, W))
    context_kv = model(None, None, context, mode="context_kv")
    with count_host_reads() as calls:
        for start in range(0, 10, CHUNK):
            part = slice(start, start + CHUNK)
            model(noisy[:, :, part], torch.full((B,), 500.0), context, memory=memory, context_kv=context_kv)
            model(clean[:, :, part], torch.zeros(B), context, memory=memory, context_kv=context_kv,
                  mode="predict_commit")
    assert calls == []


@torch.no_grad()
def test_surprisal_reads_one_similarity_per_video_and_consolidation_and_nothing_else(model):
    noisy, clean, context = data(12)
    policy: MemoryPolicy = SlowFast(sink=1, slow=2, fast=4, threshold=0.9, interval=2, rope_length=7)
    memory = model.new_memory(policy, B, CHUNK, (H, W))
    with count_host_reads() as calls:
        stream(model, memory, noisy, clean, context, reuse_text=True)
    # 6 chunks, consolidation on chunks 0, 2, 4; the first has nothing to compare with.
    assert len(calls) == B * 2
    assert all("slow_fast.py" in call for call in calls), calls
