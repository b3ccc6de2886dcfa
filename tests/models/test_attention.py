"""Attention backends agree with SDPA; masks are built once in the structure the model knows (frame
blocks, key padding) and give each backend its form: SDPA a boolean mask, xformers an aligned additive
bias (checked here on CPU without xformers), and xformers itself on CUDA when present."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from cf_lightning.models import build_wan, teacher_forcing_mask
from cf_lightning.models import wan as wan_module
from cf_lightning.models.attention import XFORMERS_ALIGN_BITS, BlockMask, attention
from memory_policies import SlowFast


def inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 24, 2, 8, generator=gen) for _ in range(3))
    mask = torch.rand(2, 24, 24, generator=gen) > 0.4
    mask |= torch.eye(24, dtype=torch.bool)
    return q, k, v, mask


def test_xformers_falls_back_to_sdpa_on_cpu(caplog):
    q, k, v, mask = inputs(1)
    with caplog.at_level(logging.WARNING):
        out = attention(q, k, v, mask, "xformers")
    assert torch.allclose(out, attention(q, k, v, mask, "sdpa"))
    assert sum("xformers" in r.message for r in caplog.records) <= 1


def test_unknown_backend_is_named():
    q, k, v, mask = inputs()
    with pytest.raises(ValueError, match="'cudnn'.*sdpa, xformers"):
        attention(q, k, v, mask, "cudnn")  # type: ignore[arg-type]


def frame_masks() -> list[torch.Tensor]:
    """A shared teacher-forcing mask ([F, F]) and a per-video one with padded context ([B, F, F])."""
    shared = teacher_forcing_mask(SlowFast(sink=1, slow=2, fast=2, admission="uniform", rope_length=7), 8, 2)
    padded = torch.ones(2, 6, 6, dtype=torch.bool)
    padded[0, :, :2] = False
    padded[0] |= torch.eye(6, dtype=torch.bool)  # padded queries see themselves: no empty rows
    return [shared, padded]


@pytest.mark.parametrize("which", [0, 1], ids=["shared_teacher_forcing", "per_video_padding"])
def test_frame_block_mask_reproduces_the_dense_token_mask(which):
    frame_mask, tokens = frame_masks()[which], 3
    dense = frame_mask.repeat_interleave(tokens, -1).repeat_interleave(tokens, -2)
    dense = (dense if dense.ndim == 3 else dense[None]).expand(2, -1, -1)
    mask = BlockMask.frames(frame_mask, tokens)
    assert torch.equal(mask.dense(2), dense)
    assert mask.dense(2) is mask.dense(2), "built once, then reused by every layer"


def test_key_padding_block_mask_reproduces_the_dense_mask_as_a_view():
    valid = torch.tensor([[True, True, False, True], [False, True, True, True]])
    mask = BlockMask.keys(valid, queries=6, key_block=2)
    dense = mask.dense()
    assert torch.equal(dense, valid.repeat_interleave(2, dim=1)[:, None, :].expand(-1, 6, -1))
    assert dense.stride(1) == 0, "all queries share one row: a broadcast, not a copy"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_xformers_bias_is_aligned_built_once_and_means_the_mask(dtype):
    frame_mask, tokens, heads = frame_masks()[1], 3, 4
    mask = BlockMask.frames(frame_mask, tokens)
    _, queries, keys = mask.shape
    q = torch.zeros(2, queries, heads, 8, dtype=dtype)
    bias = mask.xformers_bias(q)
    assert bias is mask.xformers_bias(q)
    assert bias.shape == (2, heads, queries, keys) and bias.dtype == dtype
    align = XFORMERS_ALIGN_BITS // torch.finfo(dtype).bits
    assert bias.stride(-1) == 1 and all(stride % align == 0 for stride in bias.stride()[:-1])
    assert keys % align != 0, "the test should exercise the padding of rows"
    assert torch.equal(bias == 0, mask.dense(2)[:, None].expand(-1, heads, -1, -1))
    assert torch.isneginf(bias[~mask.dense(2)[:, None].expand(-1, heads, -1, -1)]).all()
    # on CPU, the additive bias gives SDPA's masked result
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, heads, queries, 8, generator=gen) for _ in range(3))
    with_bias = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.xformers_bias(q.transpose(1, 2)))
    with_mask = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense(2)[:, None])
    assert torch.allclose(with_bias, with_mask, atol=1e-6)


def test_key_padding_bias_stores_one_row_and_no_bias_when_all_may_attend():
    valid = torch.tensor([[True, False, True], [True, True, True]])
    q = torch.zeros(2, 12, 2, 8, dtype=torch.float16)
    bias = BlockMask.keys(valid, queries=12, key_block=5).xformers_bias(q)
    assert bias.shape == (2, 2, 12, 15) and bias.stride(1) == 0 and bias.stride(2) == 0
    everything = BlockMask.keys(torch.ones(2, 3, dtype=torch.bool), queries=12, key_block=5)
    assert everything.xformers_bias(q) is None


@torch.no_grad()
def test_a_masked_forward_builds_its_masks_once_for_all_layers(monkeypatch):
    torch.manual_seed(0)
    model = build_wan("tiny").eval()
    seen: list[object] = []

    def recording(q, k, v, mask=None, backend="sdpa"):
        seen.append(mask)
        return attention(q, k, v, mask, backend)

    monkeypatch.setattr(wan_module, "attention", recording)
    x, context = torch.randn(2, 4, 6, 4, 4), torch.randn(2, 5, 16)
    text_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    model(x, torch.full((2,), 500.0), context, context_mask=text_mask, frame_mask=frame_masks()[1])
    assert len(seen) == 2 * len(model.blocks)
    self_masks, text_masks = seen[0::2], seen[1::2]
    assert all(isinstance(m, BlockMask) for m in seen)
    assert len({id(m) for m in self_masks}) == 1 and len({id(m) for m in text_masks}) == 1


def xformers_ready() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import xformers.ops  # noqa: F401
    except ImportError:
        return False
    return True


needs_xformers = pytest.mark.skipif(not xformers_ready(), reason="needs CUDA and xformers")


@needs_xformers
def test_xformers_matches_sdpa_on_cuda():
    q, k, v, mask = (t.cuda() for t in inputs(2))
    # xformers wants head dims it can tile: 8 heads of 64 over 24 tokens (a bias row padded to 32)
    q, k, v = (t.repeat(1, 1, 4, 8) for t in (q, k, v))
    assert torch.allclose(attention(q, k, v, mask, "xformers"), attention(q, k, v, mask, "sdpa"), atol=1e-4)


@needs_xformers
@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_xformers_model_matches_sdpa_on_cuda(dtype):
    """A masked full-sequence forward (per-video frame mask, padded text) and a streamed chunk over a
    memory whose videos hold different numbers of frames, on both backends."""
    torch.manual_seed(0)
    sdpa = build_wan("tiny").cuda().to(dtype).eval()
    xformers = build_wan("tiny", attention_backend="xformers").cuda().to(dtype).eval()
    xformers.load_state_dict(sdpa.state_dict())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 8, 8, generator=gen)
    x[0] = x[0, :, :1]  # video 0 is static: its surprisal memory admits less, so reads are key-padded
    x = x.cuda().to(dtype)
    context = torch.randn(2, 5, 16, generator=gen).cuda().to(dtype)
    text_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2]).cuda()
    t = torch.full((2,), 500.0).cuda()
    frame_mask = frame_masks()[1].cuda()
    full = [m(x, t, context, context_mask=text_mask, frame_mask=frame_mask) for m in (sdpa, xformers)]
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    assert torch.allclose(full[0].float(), full[1].float(), atol=tolerance)
    streamed = []
    for model in (sdpa, xformers):
        policy = SlowFast(sink=1, slow=2, fast=3, threshold=0.9, interval=1, position_mode="absolute")
        memory = model.new_memory(policy, 2, 2, (8, 8))
        outputs = []
        for start in range(0, 6, 2):
            chunk = x[:, :, start:start + 2]
            outputs.append(model(chunk, t, context, memory=memory, context_mask=text_mask,
                                 mode="predict_commit"))
        streamed.append(torch.cat(outputs, 2))
    assert torch.allclose(streamed[0].float(), streamed[1].float(), atol=tolerance)
