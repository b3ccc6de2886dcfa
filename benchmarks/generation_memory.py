"""Peak memory of cf-gen's streaming text-to-video does not grow with the video's length.

    python benchmarks/generation_memory.py [--chunks 3] [--factor 10] [--rounds 3] [--config small]

Each measurement is a fresh process that builds the parts (random DiT, a Wan-architecture VAE, the
hash text encoder; ``benchmarks/t2v_parts.py``), notes its resident memory, then streams a video of
``--chunks`` chunks (and, side by side, ``factor`` times as many) through :func:`generate_video` with
the ``longlive`` preset: rollout over a bounded memory (6-frame chunks, sink 3 + window 9), chunk-by-chunk VAE decode with the causal
cache, incremental mp4 and latent file. Printed: the peak RSS of each (median over ``--rounds``
interleaved runs), the ratio, and the growth over the RSS after setup. Numbers are measured, never
asserted.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch
from t2v_parts import interleaved, medians, table

FRAME = 64  # pixels: 8x8 latents


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(chunks: int, config: str) -> None:
    from t2v_parts import build_parts

    from cf_lightning.inference import generate_video, get_preset

    torch.set_num_threads(1)
    parts = build_parts(config)
    preset = get_preset("longlive")
    setup = rss_kb()
    with tempfile.TemporaryDirectory() as out:
        written = generate_video(parts.model, parts.conditions, out, preset=preset, codec=parts.codec,
                                 num_frames=chunks * preset.chunk_frames,
                                 latent_hw=parts.codec.latent_size(FRAME, FRAME))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"setup_kb": setup, "peak_kb": peak, "pixel_frames": written.pixel_frames}))


def measure(chunks: int, config: str) -> dict[str, int]:
    done = subprocess.run([sys.executable, __file__, "--child", str(chunks), "--config", config],
                          capture_output=True, text=True, check=True,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=3)
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", default="small")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.config)
        return
    lengths = {"short": args.chunks, "long": args.chunks * args.factor}
    runs = interleaved(args.rounds, {name: partial(measure, chunks, args.config) for name, chunks in lengths.items()})
    print(f"## peak RSS of streaming text-to-video ({args.config} DiT, {FRAME}x{FRAME}, longlive preset; medians "
          f"of {args.rounds} fresh processes)\n")
    peaks, rows = {}, []
    for name, chunks in lengths.items():
        med = medians(runs[name])
        setup, peaks[name] = med["setup_kb"] / 1024, med["peak_kb"] / 1024
        rows.append([name, str(chunks), f"{med['pixel_frames']:.0f}", f"{setup:.0f}", f"{peaks[name]:.0f}",
                     f"{peaks[name] - setup:.0f}"])
    print(table(["video", "chunks", "mp4 frames", "RSS after setup (MiB)", "peak RSS (MiB)",
                 "growth during generation (MiB)"], rows))
    print(f"\npeak RSS long / short: {peaks['long'] / peaks['short']:.3f} ({args.factor}x the frames; target <= 1.10)")


if __name__ == "__main__":
    main()
