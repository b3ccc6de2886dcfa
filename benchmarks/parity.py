"""Reference parity: our streaming rollout against Self-Forcing's causal inference, on tiny random weights.

    python benchmarks/parity.py --self_forcing PATH/TO/Self-Forcing [--chunks 7] [--latent 8]

``PATH/TO/Self-Forcing`` is a checkout of guandeh17/Self-Forcing (nothing of it is copied here: its
``wan/modules/causal_model.py`` and ``utils/scheduler.py`` are imported from the checkout, without
running its package ``__init__``, which needs the full Wan runtime; ``einops`` must be installed). Without
the path, or when it does not exist, the script says so and exits 0.

Both sides get the same random ``tiny`` backbone weights (Wan key names, so one state dict loads into
both), the same 512-token text context (Wan pads every prompt to ``text_len=512`` with zeros and runs
cross-attention unmasked, so we pass the padded context too), and the same noise: a generator drawn in
our rollout's order (each chunk's starting noise, then one draw per re-noising step). The reference
side is driven chunk by chunk as its ``CausalInferencePipeline.inference`` does: its few-step list
warped by its own ``FlowMatchScheduler`` (shift 5), x0 from the flow prediction, re-noising with its
scheduler's ``add_noise``, then a clean pass at timestep 0 that writes the KV cache. Ours runs the
``self_forcing`` preset through :func:`cf_lightning.inference.stream_chunks`. Printed: the schedules side
by side and the max abs difference per chunk (docs/parity.md).
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch

from cf_lightning.inference import Conditions, get_preset, stream_chunks
from cf_lightning.models import WanModel, build_wan
from cf_lightning.rollout import randn

TEXT_LEN = 512  # Wan2.1's text_len: every prompt is zero-padded to it


def import_reference(checkout: Path) -> tuple[type, type]:
    """``CausalWanModel`` and ``FlowMatchScheduler`` from a Self-Forcing checkout, skipping its package
    ``__init__`` files (they import the whole Wan runtime)."""
    for name, folder in (("wan", "wan"), ("wan.modules", "wan/modules"), ("utils", "utils")):
        package = types.ModuleType(name)
        package.__path__ = [str(checkout / folder)]
        sys.modules[name] = package
    from functools import partial

    from utils.scheduler import FlowMatchScheduler
    from wan.modules import attention, causal_model, model

    # Its self-attention runs flash-attn (or, without it, SDPA in bfloat16) and its cross-attention
    # flash-attn only (CUDA): both become SDPA in float32 here, so the comparison measures the
    # algorithm rather than bfloat16 rounding, and runs on a CPU.
    causal_model.attention = model.flash_attention = partial(attention.attention, dtype=torch.float32)
    return causal_model.CausalWanModel, FlowMatchScheduler


#: preset -> (local_attn_size, sink_size) of Self-Forcing's CausalWanModel: -1 keeps every frame (its
#: pipeline stops at the 21 frames its cache holds); LongLive runs the same model class with a rolling
#: 12-frame cache whose first 3 frames stay.
REFERENCE_CACHE = {"self_forcing": (-1, 0), "longlive": (12, 3)}


def reference_model(cls: type, ours: WanModel, local_attn_size: int, sink_size: int) -> torch.nn.Module:
    c = ours.config
    model = cls(model_type="t2v", patch_size=c.patch_size, text_len=TEXT_LEN, in_dim=c.in_dim, dim=c.dim,
                ffn_dim=c.ffn_dim, freq_dim=c.freq_dim, text_dim=c.text_dim, out_dim=c.out_dim, num_heads=c.num_heads,
                num_layers=c.num_layers, local_attn_size=local_attn_size, sink_size=sink_size, cross_attn_norm=c.cross_attn_norm,
                eps=c.eps)
    model.load_state_dict(ours.state_dict())
    return model.eval()


@torch.no_grad()
def reference_rollout(model: torch.nn.Module, scheduler, steps: torch.Tensor, context: torch.Tensor, chunks: int,
                      chunk_frames: int, latent: int, seed: int) -> list[torch.Tensor]:
    """Self-Forcing's causal inference loop over its own model, with our noise draws; chunks ``[1, C, f, H, W]``."""
    c = model.in_dim
    tokens = (latent // 2) ** 2
    frames = chunks * chunk_frames
    cached = frames if model.local_attn_size == -1 else model.local_attn_size  # as its pipeline sizes the cache
    head_dim = model.dim // model.num_heads
    kv = [{"k": torch.zeros(1, cached * tokens, model.num_heads, head_dim),
           "v": torch.zeros(1, cached * tokens, model.num_heads, head_dim),
           "global_end_index": torch.tensor([0]), "local_end_index": torch.tensor([0])} for _ in model.blocks]
    cross = [{"k": torch.zeros(1, TEXT_LEN, model.num_heads, head_dim),
              "v": torch.zeros(1, TEXT_LEN, model.num_heads, head_dim), "is_init": False} for _ in model.blocks]
    gens = [torch.Generator().manual_seed(seed)]
    out = []
    for chunk in range(chunks):
        start = chunk * chunk_frames * tokens
        x = randn((1, c, chunk_frames, latent, latent), gens)
        for index, step in enumerate(steps):
            t = torch.full((1, chunk_frames), float(step))
            flow = model(x, t=t, context=context, seq_len=frames * tokens, kv_cache=kv, crossattn_cache=cross,
                         current_start=start)
            sigma = scheduler.sigmas[torch.argmin((scheduler.timesteps - step).abs())]
            x0 = (x.double() - sigma.double() * flow.double()).float()
            if index < len(steps) - 1:
                fresh = randn(x0.shape, gens)
                nxt = torch.full((chunk_frames,), float(steps[index + 1]))
                x = scheduler.add_noise(x0[0].transpose(0, 1), fresh[0].transpose(0, 1), nxt).transpose(0, 1)[None]
        model(x0, t=torch.zeros(1, chunk_frames), context=context, seq_len=frames * tokens, kv_cache=kv,
              crossattn_cache=cross, current_start=start)
        out.append(x0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--self_forcing", type=Path, default=None, help="a guandeh17/Self-Forcing checkout")
    parser.add_argument("--preset", default="self_forcing", choices=sorted(REFERENCE_CACHE))
    parser.add_argument("--chunks", type=int, default=7, help="self_forcing: 7 chunks of 3 = the 21 frames its "
                                                             "cache holds; longlive: past 12 frames, the cache rolls")
    parser.add_argument("--latent", type=int, default=8, help="latent height = width")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.self_forcing is None or not (args.self_forcing / "wan" / "modules" / "causal_model.py").is_file():
        print(f"skipped: no Self-Forcing checkout at {args.self_forcing} (pass --self_forcing PATH)")
        return
    model_cls, scheduler_cls = import_reference(args.self_forcing)
    torch.manual_seed(0)
    ours = build_wan("tiny").eval()
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0; perturb so every weight matters
        for param in ours.parameters():
            param.add_(0.05 * torch.randn(param.shape))
    reference = reference_model(model_cls, ours, *REFERENCE_CACHE[args.preset])
    preset = get_preset(args.preset)
    scheduler = scheduler_cls(shift=preset.shift, sigma_min=0.0, extra_one_step=True)
    scheduler.set_timesteps(1000, training=True)
    listed = torch.tensor([1000, 750, 500, 250])
    steps = torch.cat([scheduler.timesteps, torch.zeros(1)])[1000 - listed]
    print("## schedule (timesteps)\n")
    print(f"reference (warp_denoising_step): {[round(float(s), 3) for s in steps]}")
    print(f"ours (denoising_sigmas x 1000):  {[round(float(s) * 1000, 3) for s in preset.sigmas()]}\n")
    context = torch.zeros(1, TEXT_LEN, ours.config.text_dim)
    context[:, :8] = torch.randn(1, 8, ours.config.text_dim)
    theirs = reference_rollout(reference, scheduler, steps, context, args.chunks, preset.chunk_frames, args.latent,
                               args.seed)
    mine = [chunk for _, chunk, _ in stream_chunks(ours, preset, Conditions([(context, 0)]),
                                                   args.chunks * preset.chunk_frames, (args.latent, args.latent),
                                                   seed=args.seed)]
    print(f"## {args.preset}: max abs difference per chunk ({args.chunks} chunks of {preset.chunk_frames} frames, "
          f"{args.latent}x{args.latent} latents, tiny backbone, |x0| ~ {float(mine[0].abs().mean()):.2f})\n")
    print("| chunk | max abs diff |")
    print("|---:|---:|")
    for index, (a, b) in enumerate(zip(mine, theirs)):
        print(f"| {index} | {float((a - b).abs().max()):.2e} |")


if __name__ == "__main__":
    main()
