"""End-to-end text-to-video speed: prompt -> mp4 frames per second, time per stage, first-chunk latency.

    python benchmarks/fps.py [--config small] [--height 64 --width 64] [--chunks 4] [--repeats 3] [--compile]
    python benchmarks/fps.py --device cuda --config wan2.1-1.3b --height 480 --width 832 --compile

The pieces are cf-gen's (``benchmarks/t2v_parts.py``: random DiT, a Wan-architecture VAE, the hash
text encoder), run as :func:`cf_lightning.inference.generate_video` runs them, with a clock between
stages: the DiT (``stream_chunks``: every denoising step and the clean refresh of a chunk), the VAE
decode of the chunk (the causal cache carried over) and the mp4 encode. ``fps`` counts mp4 frames over
the whole run from the prompt's embedding on; the first-chunk latency is the time until the first
chunk's frames are in the mp4. With ``--compile`` the DiT's blocks are ``torch.compile``-d and both
variants run side by side, interleaved, after a warm-up run each (compilation excluded). Medians over
``--repeats``; numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from t2v_parts import build_parts, interleaved, medians, table

from cf_lightning.codecs import unit_to_uint8
from cf_lightning.data.video_write import Mp4Writer
from cf_lightning.inference import get_preset, stream_chunks
from cf_lightning.models import WanModel

STAGES = ("dit", "decode", "encode")


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def run_once(model: WanModel, parts, preset, chunks: int, frame: tuple[int, int], device: str) -> dict[str, float]:
    """One video; seconds per stage, first-chunk latency and frames per second."""
    times = dict.fromkeys(STAGES, 0.0)
    first_chunk = None
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        decode = parts.codec.chunk_decoder()
        with Mp4Writer(Path(out) / "video.mp4", 16.0) as mp4:
            stream = stream_chunks(model, preset, parts.conditions, chunks * preset.chunk_frames,
                                   parts.codec.latent_size(*frame))
            mark = time.perf_counter()
            for _, latents, _ in stream:
                synchronize(device)
                after_dit = time.perf_counter()
                pixels = decode(latents)
                synchronize(device)
                after_decode = time.perf_counter()
                mp4.write(unit_to_uint8(pixels[0]).permute(1, 0, 2, 3).cpu())
                after_encode = time.perf_counter()
                times["dit"] += after_dit - mark
                times["decode"] += after_decode - after_dit
                times["encode"] += after_encode - after_decode
                if first_chunk is None:
                    first_chunk = after_encode - start
                mark = time.perf_counter()
        total = time.perf_counter() - start
    return {**times, "first_chunk": first_chunk, "total": total, "fps": mp4.frames_written / total,
            "frames": mp4.frames_written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="small")
    parser.add_argument("--preset", default="self_forcing", help="chunking, schedule and memory")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile-d DiT blocks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = build_parts(args.config, args.device)
    preset = get_preset(args.preset)
    variants = {"eager": parts.model}
    if args.compile:
        compiled = copy.deepcopy(parts.model)
        for block in compiled.blocks:
            block.compile()
        variants["compiled blocks"] = compiled
    frame = (args.height, args.width)
    warm = {name: run_once(model, parts, preset, 1, frame, args.device)["total"] for name, model in variants.items()}
    runs = interleaved(args.repeats, {name: partial(run_once, model, parts, preset, args.chunks, frame, args.device)
                                      for name, model in variants.items()})
    frames = runs["eager"][0]["frames"]
    print(f"## prompt -> mp4, {args.config} DiT, {args.width}x{args.height}, preset {args.preset}, {args.chunks} chunks "
          f"= {frames} frames, {args.device}, {args.threads} thread(s), medians of {args.repeats}\n")
    medians_by_variant = {name: medians(results) for name, results in runs.items()}
    print(table(["variant", "mp4 frames/s", "first chunk (s)", "DiT (s)", "VAE decode (s)", "mp4 encode (s)",
                 "total (s)"],
                [[name, *(f"{med[key]:.3g}" for key in ("fps", "first_chunk", *STAGES, "total"))]
                 for name, med in medians_by_variant.items()]))
    eager = medians_by_variant["eager"]
    shares = ", ".join(f"{stage} {eager[stage] / eager['total']:.0%}" for stage in STAGES)
    print(f"\nshare of the eager run: {shares}; warm-up runs (1 chunk, compilation included): "
          + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in warm.items()))
    if args.compile:
        print(f"compiled / eager frames per second: {medians_by_variant['compiled blocks']['fps'] / eager['fps']:.2f}x")


if __name__ == "__main__":
    main()
