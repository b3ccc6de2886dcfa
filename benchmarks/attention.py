"""FlexAttention (compiled, block mask built once) against SDPA with a dense mask, on CPU.

    python benchmarks/attention.py [--batch 8] [--heads 4] [--head_dim 24] [--tokens 4,16] [--rounds 20]

Two masks the models use: a streamed chunk reading its memory (every query sees the valid memory
frames and the chunk; a tenth of the memory frames invalid) and the stage-1 teacher-forcing mask
(``[clean | noisy]`` of 12 frames, each noisy chunk seeing the clean frames its memory keeps and
itself). ``--tokens`` is tokens per latent frame (4: the CPU recipes' 4x4 latents). For each, the block
mask is built once and ``flex_attention`` compiled once, both timed apart; then SDPA and compiled flex
run interleaved, one call each per round, and the medians are printed with their ratio and the
largest output difference. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from cf_lightning.models import teacher_forcing_mask
from memory_policies import SlowFast


def streaming_mask(batch: int, memory_frames: int, chunk_frames: int, tokens: int, generator: torch.Generator
                   ) -> torch.Tensor:
    """``[B, Lq, Lk]``: every chunk token sees the valid memory tokens and the chunk."""
    valid = torch.rand(batch, memory_frames, generator=generator) > 0.1
    keys = torch.cat([valid, valid.new_ones(batch, chunk_frames)], dim=1).repeat_interleave(tokens, dim=1)
    return keys[:, None, :].expand(-1, chunk_frames * tokens, -1)


def training_mask(batch: int, tokens: int) -> torch.Tensor:
    """``[B, L, L]``: the stage-1 teacher-forcing mask over 12 frames, token level."""
    frames = teacher_forcing_mask(SlowFast(sink=1, slow=2, fast=4, admission="uniform", rope_length=7), 12, 2)
    mask = frames.repeat_interleave(tokens, -1).repeat_interleave(tokens, -2)
    return mask[None].expand(batch, -1, -1)


def timed(function) -> tuple[float, object]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def compare(name: str, mask: torch.Tensor, heads: int, head_dim: int, rounds: int) -> None:
    batch, queries, keys = mask.shape
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads, queries, head_dim, generator=generator)
    k, v = (torch.randn(batch, heads, keys, head_dim, generator=generator) for _ in range(2))
    dense = mask[:, None]

    def mask_mod(b, h, q_idx, kv_idx):
        return mask[b, q_idx, kv_idx]

    build, block_mask = timed(lambda: create_block_mask(mask_mod, B=batch, H=None, Q_LEN=queries, KV_LEN=keys,
                                                        device="cpu"))
    compiled = torch.compile(flex_attention, dynamic=False)
    first, flex_out = timed(lambda: compiled(q, k, v, block_mask=block_mask))
    sdpa_out = F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    sdpa_times, flex_times = [], []
    for _ in range(rounds):
        sdpa_times.append(timed(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense))[0])
        flex_times.append(timed(lambda: compiled(q, k, v, block_mask=block_mask))[0])
    sdpa, flex = statistics.median(sdpa_times), statistics.median(flex_times)
    print(f"{name:<24} q {queries:>5} k {keys:>5} | sdpa {sdpa * 1e3:8.2f} ms | flex {flex * 1e3:8.2f} ms "
          f"| flex/sdpa {flex / sdpa:5.2f} | block mask {build:6.2f} s, compile+first call {first:6.1f} s "
          f"| max |diff| {float((flex_out - sdpa_out).abs().max()):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head_dim", type=int, default=24)
    parser.add_argument("--tokens", default="4,16", help="tokens per latent frame, comma separated")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, {args.heads} heads of "
          f"{args.head_dim}; medians of {args.rounds} interleaved rounds")
    for tokens in (int(t) for t in args.tokens.split(",")):
        streaming = streaming_mask(args.batch, 10, 2, tokens, generator)
        compare(f"streaming, {tokens} tok/frame", streaming, args.heads, args.head_dim, args.rounds)
        compare(f"training, {tokens} tok/frame", training_mask(args.batch, tokens), args.heads, args.head_dim,
                args.rounds)


if __name__ == "__main__":
    main()
