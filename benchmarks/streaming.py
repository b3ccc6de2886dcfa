"""Streaming cost of the causal Wan backbone over memory policies: flat per-chunk cost, bounded memory.

    python benchmarks/streaming.py [--config small] [--chunks 10,100,1000] [--latent 8] [--batch 1]

One *chunk* is what :func:`cf_lightning.rollout.rollout` does per chunk: ``--steps`` denoising forwards
(default 4) and one clean refresh forward that commits the chunk to the memory. Sections:

- ``latency``: per-chunk time at the given chunk indices for ``slow_fast``, ``sliding_window`` and
  ``keyframe`` at an equal budget, and ``full`` (unbounded, expected to grow; capped at ``--full-cap``
  chunks so the run stays feasible). Policies advance in lockstep, one chunk each in turn. The memories
  are snapshotted at each index and the chunks that follow are timed side by side, round robin, one
  chunk per snapshot and round; each number is the median of ``--rounds`` rounds, printed as a ratio
  to the first index with the memory frames the chunk attends to (the stream's own times, medians of
  ``--window`` chunks, are printed too, but load drift over a long run shows up in them). Also the K/V
  pool size per policy and the process RSS.
- ``fastpaths``: the same chunk through the plain path (every forward re-reads the memory, re-gathers
  and re-rotates its keys, re-projects the text) and the cached paths, interleaved, plus a check that
  the outputs are identical; and, for absolute positions, keys rotated at every read vs stored rotated.
- ``throughput``: tokens per second of cached streaming vs a recompute loop that has no cache and
  re-runs the kept frames (clean, t = 0) together with the chunk through the model at every
  denoising step (unmasked, so the cheapest recompute), same policy, same kept frames.
- ``bookkeeping``: share of chunk time spent in memory bookkeeping (policy decisions +
  ``KVMemory.read/commit/gather``; extended: + rotating and staging the memory keys/values, RoPE tables,
  frame summaries).
- ``subframe`` (not in the default run): what entries smaller than a frame cost, Deep Forcing keeping
  whole frames vs half of their tokens in the same slots (chunk time, interleaved; policy and
  ``KVMemory`` time; attention statistics, per token in the second case).
- ``train`` (``--train``): one Context Forcing generator micro-step (rollout with one graph step,
  teacher/critic scores, DMD and critic losses, backward) vs the same step without backward.
- ``profile``: where the time of a cached chunk and of a recompute chunk goes, by kind of op
  (torch.profiler), and the fixed cost of one forward (3 frames of one token each).
- ``compile`` (``--compile``): the cached path with ``torch.compile``-d blocks vs eager, and the
  throughput comparison with compiled blocks on both sides.

Timings are printed, never asserted: they depend on the machine. Defaults keep the run to a few minutes
on 2 CPU cores with one torch thread (``--threads``), which also makes shared machines less noisy.
"""

from __future__ import annotations

import argparse
import copy
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from cf_lightning.diffusion import add_noise, denoising_sigmas, timestep_from_sigma, x0_from_velocity
from cf_lightning.models import KVMemory, WanModel, build_wan
from cf_lightning.rollout import rollout
from memory_policies import DeepForcing, Full, Keyframe, MemoryPolicy, MemoryState, SlidingWindow, SlowFast

CHUNK = 3  # latent frames per chunk, as in the paper


def policies(budget_frames: int = 18) -> dict[str, MemoryPolicy]:
    """The paper's budget (sink 3 + 15 other frames = 18 memory frames, 21 with the query chunk)."""
    others = budget_frames - 3
    return {
        "slow_fast": SlowFast(sink=3, slow=others - 3, fast=6),
        "sliding_window": SlidingWindow(sink=3, window=others + CHUNK),
        "keyframe": Keyframe(sink=3, keyframes=others - 3, window=6),
        "full": Full(),
    }


class Bench:
    def __init__(self, args: argparse.Namespace, latent: int | None = None, batch: int | None = None) -> None:
        torch.manual_seed(0)
        self.args = args
        self.device = torch.device(args.device)
        self.model: WanModel = build_wan(args.config).eval().to(self.device)
        self.sigmas = denoising_sigmas(args.steps)
        config = self.model.config
        latent, batch = latent or args.latent, batch or args.batch
        self.shape = (batch, config.in_dim, CHUNK, latent, latent)
        self.tokens = self.model.tokens_per_frame((latent, latent))
        gen = torch.Generator().manual_seed(0)
        self.context = torch.randn(batch, args.text_len, config.text_dim, generator=gen).to(self.device)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def noise(self, gen: torch.Generator) -> torch.Tensor:
        return torch.randn(self.shape, generator=gen).to(self.device)

    def rollout_chunk(self, policy: MemoryPolicy, memory: KVMemory | None, gen: torch.Generator
                      ) -> tuple[KVMemory, torch.Tensor, float]:
        """One chunk through :func:`rollout` itself, continuing ``memory``; returns the elapsed seconds."""
        noise = self.noise(gen)
        self.sync()
        start = time.perf_counter()
        with torch.no_grad():
            result = rollout(
                self.model,
                policy,
                noise,
                self.context,
                self.sigmas,
                chunk_frames=CHUNK,
                memory=memory,
                generator=gen,
            )
        self.sync()
        return result.memory, result.video, time.perf_counter() - start

    def manual_chunk(
        self, memory: KVMemory, gen: torch.Generator, reuse_text: bool, model: WanModel | None = None
    ) -> tuple[torch.Tensor, float]:
        """The rollout chunk written out with streaming forwards (and ``mode="commit"`` for the refresh, as
        :func:`rollout` does), with the text projection reuse switchable."""
        model = model or self.model
        noise = self.noise(gen)
        batch = self.shape[0]
        self.sync()
        start = time.perf_counter()
        with torch.no_grad():
            context_kv = model(None, None, self.context, mode="context_kv") if reuse_text else None
            x = noise
            for step, sigma in enumerate(self.sigmas.tolist()):
                t = torch.full((batch, CHUNK), timestep_from_sigma(sigma), device=self.device)
                x0 = x0_from_velocity(
                    x, model(x, t, self.context, memory=memory, context_kv=context_kv), sigma
                )
                if step + 1 < len(self.sigmas):
                    x = add_noise(
                        x0, torch.randn(x0.shape, generator=gen).to(x0), float(self.sigmas[step + 1])
                    )
            zero = torch.zeros(batch, CHUNK, device=self.device)
            model(x0, zero, self.context, memory=memory, context_kv=context_kv, mode="commit")
        self.sync()
        return x0, time.perf_counter() - start

    def new_memory(self, policy: MemoryPolicy, cache_reads: bool = True, store_rotated: bool | None = None
                   ) -> KVMemory:
        return self.model.new_memory(policy, self.shape[0], CHUNK, self.shape[-2:], device=self.device,
                                     cache_reads=cache_reads, store_rotated=store_rotated)

    def attended_copy_bytes(self, memory: KVMemory) -> int:
        """Bytes of the per-chunk copy of the attended memory (rotated keys + values, with room for the
        chunk's own), freed at commit."""
        per_frame = memory.keys[:, 0, 0].numel() * memory.keys.element_size()  # all layers, one frame
        return 2 * memory.batch_size * (memory.stored_frames() + memory.chunk_frames) * per_frame


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------- latency
def bench_latency(bench: Bench) -> None:
    """Stream every policy in lockstep; snapshot each memory when it reaches a chosen index, then time
    chunks from all snapshots side by side, so a change in machine load cannot pass for growth."""
    args = bench.args
    indices = sorted(args.chunks)
    total = indices[-1] + 1
    chosen = policies()
    caps = {name: (min(total, args.full_cap) if name == "full" else total) for name in chosen}
    memories: dict[str, KVMemory | None] = {name: None for name in chosen}
    gens = {name: torch.Generator().manual_seed(1) for name in chosen}
    times: dict[str, list[float]] = {name: [] for name in chosen}
    snapshots: dict[tuple[str, int], KVMemory] = {}
    pool: dict[tuple[str, int], tuple[int, int]] = {}
    attended: dict[tuple[str, int], int] = {}
    rss: dict[int, float] = {}
    print(
        f"\n## latency: one chunk = {args.steps} denoising forwards + 1 refresh, via rollout(); streamed to "
        f"chunk {total - 1} ({', '.join(f'{n} {c}' for n, c in caps.items())} chunks)"
    )
    started = time.perf_counter()
    for chunk in range(total):
        for name, policy in chosen.items():
            if chunk >= caps[name]:
                memories[name] = None  # free full's growing pool once it stops
                continue
            memory = memories[name]
            if chunk in indices and memory is not None:  # the memory as chunk `chunk` finds it
                snapshots[(name, chunk)] = copy.deepcopy(memory)
                attended[(name, chunk)] = memory.read().num_frames
                pool[(name, chunk)] = (memory.pool_bytes(), bench.attended_copy_bytes(memory))
            memories[name], _, elapsed = bench.rollout_chunk(policy, memory, gens[name])
            times[name].append(elapsed)
        if chunk in indices:
            rss[chunk] = rss_mb()
        if args.verbose and chunk % 100 == 0:
            print(f"  chunk {chunk} ({time.perf_counter() - started:.0f} s)", flush=True)
    side: dict[tuple[str, int], list[float]] = {key: [] for key in snapshots}
    for round_ in range(1 + args.rounds):  # round robin over every (policy, index); round 0 warms up
        for (name, index), memory in snapshots.items():
            snapshots[(name, index)], _, elapsed = bench.rollout_chunk(chosen[name], memory, gens[name])
            if round_:
                side[(name, index)].append(elapsed)
    base = indices[0]
    print(
        f"side by side (chunks continued from snapshots at each index, round robin, median of "
        f"{args.rounds}); in parentheses the ratio to chunk {base} and the memory frames the chunk attends "
        f"to:"
    )
    print("| policy | budget | " + " | ".join(f"chunk {i}" for i in indices) + " |")
    print("|" + "---|" * (len(indices) + 2))
    for name, policy in chosen.items():
        budget = policy.budget(CHUNK)
        ref = statistics.median(side[(name, base)])
        cells = []
        for i in indices:
            if (name, i) not in side:
                cells.append(f"(capped at {caps[name]})")
                continue
            value = statistics.median(side[(name, i)])
            cells.append(f"{1000 * value:.1f} ms ({value / ref:.2f}x, {attended[(name, i)]} frames)")
        print(f"| {name} | {budget if budget is not None else 'all'} | " + " | ".join(cells) + " |")
    print(
        f"during the stream (median of {args.window} chunks around each index; exposed to load drift over "
        f"the run):"
    )
    print("| policy | " + " | ".join(f"chunk {i}" for i in indices) + " |")
    print("|" + "---|" * (len(indices) + 1))
    for name in chosen:
        ref = median_around(times[name], base, args.window)
        cells = []
        for i in indices:
            if i >= len(times[name]):
                cells.append("(capped)")
                continue
            value = median_around(times[name], i, args.window)
            cells.append(f"{1000 * value:.1f} ms ({value / ref:.2f}x)")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nK/V pool (+ per-chunk attended copy, freed at each commit), MiB:")
    print("| policy | " + " | ".join(f"chunk {i}" for i in indices) + " |")
    print("|" + "---|" * (len(indices) + 1))
    for name in chosen:
        cells = [f"{pool[(name, i)][0] / 2**20:.2f} (+{pool[(name, i)][1] / 2**20:.2f})" if (name, i) in pool
                 else "(capped)" for i in indices]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("process RSS (all policies together), MiB: "
          + ", ".join(f"chunk {i}: {rss[i]:.0f}" for i in indices) + f"; max RSS {max_rss_mb():.0f}")
    if bench.device.type == "cuda":
        print(f"torch.cuda.max_memory_allocated: {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB")


def median_around(times: list[float], index: int, window: int) -> float:
    lo = max(0, index - window // 2)
    return statistics.median(times[lo:lo + window])


# -------------------------------------------------------------------------------------------- fast paths
def bench_fastpaths(bench: Bench) -> None:
    args = bench.args
    print(f"\n## fast paths: chunk time at steady state (chunks {args.warmup}..{args.warmup + args.timed}), "
          "interleaved, median")
    print("| policy | plain (no caches) | + per-chunk read cache | + text K/V reuse | speedup | outputs |")
    print("|---|---|---|---|---|---|")
    for name in ("slow_fast", "sliding_window"):
        policy = policies()[name]
        med, identical, _ = interleaved_chunks(bench, {
            "plain": (bench.new_memory(policy, cache_reads=False), False),
            "read": (bench.new_memory(policy), False),
            "read+text": (bench.new_memory(policy), True),
        })
        print(
            f"| {name} | {1000 * med['plain']:.1f} ms | {1000 * med['read']:.1f} ms | "
            f"{1000 * med['read+text']:.1f} ms"
            f" | {med['plain'] / med['read+text']:.2f}x | {'bit-identical' if identical else 'DIFFER'} |"
        )
    print(
        f"\nfixed positions (absolute mode): keys rotated at every read vs stored rotated at commit, same "
        f"chunks {args.warmup}..{args.warmup + args.timed}, interleaved, median"
    )
    print("| policy | memory frames at the end | rotated at read | stored rotated | speedup | outputs |")
    print("|---|---|---|---|---|---|")
    fixed = {
        "full": Full(),
        "sliding_window (absolute)": SlidingWindow(sink=3, window=18, position_mode="absolute"),
    }
    for name, policy in fixed.items():
        med, identical, memories = interleaved_chunks(bench, {
            "at read": (bench.new_memory(policy, store_rotated=False), True),
            "stored": (bench.new_memory(policy, store_rotated=True), True),
        })
        print(f"| {name} | {memories['stored'].stored_frames()} | {1000 * med['at read']:.1f} ms | "
              f"{1000 * med['stored']:.1f} ms | {med['at read'] / med['stored']:.2f}x | "
              f"{'bit-identical' if identical else 'DIFFER'} |")


def interleaved_chunks(bench: Bench, variants: dict[str, tuple[KVMemory, bool]]
                       ) -> tuple[dict[str, float], bool, dict[str, KVMemory]]:
    """Stream the same chunks through each variant's memory (``(memory, reuse_text)``), one chunk of each
    in turn, for ``--warmup`` + ``--timed`` chunks. Returns the median time of the timed chunks per
    variant, whether every variant's outputs equalled the first one's bitwise, and the memories."""
    args = bench.args
    memories = {v: memory for v, (memory, _) in variants.items()}
    gens = {v: torch.Generator().manual_seed(2) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    identical = True
    for chunk in range(args.warmup + args.timed):
        outs = []
        for v, (memory, reuse_text) in variants.items():
            out, elapsed = bench.manual_chunk(memory, gens[v], reuse_text=reuse_text)
            outs.append(out)
            if chunk >= args.warmup:
                times[v].append(elapsed)
        identical &= all(torch.equal(outs[0], o) for o in outs[1:])
    return {v: statistics.median(t) for v, t in times.items()}, identical, memories


# -------------------------------------------------------------------------------------------- throughput
def recompute_chunk(bench: Bench, policy: MemoryPolicy, state: MemoryState, clean: dict[int, torch.Tensor],
                    gen: torch.Generator) -> float:
    """No cache: every denoising forward re-runs [kept clean frames | noisy chunk] through the model.

    Like the cached :func:`rollout`, it projects the text once per chunk and reuses the projection: that
    reuse has nothing to do with the K/V cache, so both sides get it.
    """
    noise = bench.noise(gen)
    batch = bench.shape[0]
    bench.sync()
    start = time.perf_counter()
    with torch.no_grad():
        context_kv = bench.model(None, None, bench.context, mode="context_kv")
        view = policy.read(state)
        kept = len(view.frames)
        positions = torch.tensor(view.positions + view.query_positions, device=bench.device)
        history = torch.cat([clean[f] for f in view.frames], dim=2) if kept else noise[:, :, :0]
        x = noise
        for step, sigma in enumerate(bench.sigmas.tolist()):
            t = torch.cat(
                [torch.zeros(batch, kept), torch.full((batch, CHUNK), timestep_from_sigma(sigma))], 1
            )
            velocity = bench.model(torch.cat([history, x], 2), t.to(bench.device), bench.context,
                                   positions=positions, context_kv=context_kv)[:, :, kept:]
            x0 = x0_from_velocity(x, velocity, sigma)
            if step + 1 < len(bench.sigmas):
                x = add_noise(x0, torch.randn(x0.shape, generator=gen).to(x0), float(bench.sigmas[step + 1]))
        keep_clean(policy, state, clean, x0)
    bench.sync()
    return time.perf_counter() - start


def keep_clean(
    policy: MemoryPolicy, state: MemoryState, clean: dict[int, torch.Tensor], chunk: torch.Tensor
) -> None:
    """Commit a chunk to a data-independent policy and keep the clean latents of the frames it keeps."""
    first = state.frames_committed
    policy.commit(state, None)
    for j in range(CHUNK):
        clean[first + j] = chunk[:, :, j:j + 1]
    for frame in set(clean) - set(state.kept_frames()):
        del clean[frame]


def bench_throughput(bench: Bench) -> None:
    args = bench.args
    at = args.throughput_at
    lo, hi = at - args.window // 2, at - args.window // 2 + args.window
    print(
        f"\n## throughput at chunk {at} (median of chunks {lo}..{hi - 1}), cached streaming (rollout) vs "
        f"recompute (no cache), interleaved; the recompute loop starts from the cached run's history at "
        f"chunk {lo}"
    )
    print("| latent | tokens/frame | batch | policy | kept frames | cached tokens/s | recompute tokens/s | "
          "cached / recompute |")
    print("|---|---|---|---|---|---|---|---|")
    for latent, batch in args.sizes or [(args.latent, args.batch)]:
        sized = bench if (latent, batch) == (args.latent, args.batch) else Bench(args, latent, batch)
        for name in ("sliding_window", "keyframe"):  # data-independent: recompute needs no key summaries
            print(throughput_row(sized, name), flush=True)


def throughput_row(bench: Bench, name: str) -> str:
    """Stream ``name`` to chunk ``--throughput-at``, timing cached chunks and, from the window on, the
    recompute loop over the same kept frames; one markdown row of the median tokens per second."""
    args = bench.args
    lo = args.throughput_at - args.window // 2
    hi = lo + args.window
    policy = policies()[name]
    memory = None
    state = policy.new_state(CHUNK)
    clean: dict[int, torch.Tensor] = {}
    gen_c, gen_r = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    cached, recompute = [], []
    for chunk in range(hi):
        memory, video, elapsed = bench.rollout_chunk(policy, memory, gen_c)
        cached.append(elapsed)
        if chunk < lo:  # fast-forward: its cost only depends on how many frames are kept
            keep_clean(policy, state, clean, video)
        else:
            recompute.append(recompute_chunk(bench, policy, state, clean, gen_r))
    c, r = statistics.median(cached[lo:hi]), statistics.median(recompute)
    kept = len(policy.read(state).frames)
    batch, _, _, latent, _ = bench.shape
    tokens_per_chunk = batch * CHUNK * bench.tokens
    return (
        f"| {latent}x{latent} | {bench.tokens} | {batch} | {name} | {kept} | {rate(tokens_per_chunk / c)} | "
        f"{rate(tokens_per_chunk / r)} | {r / c:.2f}x |"
    )


def rate(tokens_per_second: float) -> str:
    """Whole tokens per second, or three significant digits below 100 (real model sizes on a CPU)."""
    return f"{tokens_per_second:,.0f}" if tokens_per_second >= 100 else f"{tokens_per_second:.3g}"


# ------------------------------------------------------------------------------------------- bookkeeping
class Timers:
    """Wall time spent inside some methods, patched for the duration of a ``with`` block."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {}

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total[name] = self.total.get(name, 0.0) + time.perf_counter() - start
        return timed

    @contextmanager
    def patch(self, targets: list[tuple[object, str, str]]) -> Iterator[None]:
        saved = [(owner, attr, owner.__dict__[attr]) for owner, attr, _ in targets]
        try:
            for owner, attr, name in targets:
                original = owner.__dict__[attr]
                if isinstance(original, staticmethod):
                    setattr(owner, attr, staticmethod(self.wrap(name, original.__func__)))
                else:
                    setattr(owner, attr, self.wrap(name, original))
            yield
        finally:
            for owner, attr, original in saved:
                setattr(owner, attr, original)


def bench_bookkeeping(bench: Bench) -> None:
    args = bench.args
    policy = policies()["slow_fast"]
    targets = [
        (KVMemory, "read", "read"), (KVMemory, "commit", "commit"), (KVMemory, "gather", "gather"),
        (WanModel, "_memory_kv", "memory_kv"), (WanModel, "_streaming_rope", "rope"),
        (WanModel, "frame_summaries", "summaries"),
    ]
    print(f"\n## bookkeeping share, slow_fast (surprisal), chunks {args.warmup}..{args.warmup + args.timed}, "
          "per chunk")
    print(
        "| path | chunk time | policy decisions | KVMemory read+commit+gather | **share** | rotate + stage "
        "memory K/V | RoPE tables | frame summaries | extended share |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    variants = {"plain (no caches)": (False, False), "cached": (True, True)}
    memories = {v: bench.new_memory(policy, cache_reads=cache) for v, (cache, _) in variants.items()}
    gens = {v: torch.Generator().manual_seed(4) for v in variants}
    timers = {v: Timers() for v in variants}
    totals = {v: 0.0 for v in variants}
    for v, (_, text) in variants.items():  # warm up (unmeasured)
        for _ in range(args.warmup):
            bench.manual_chunk(memories[v], gens[v], reuse_text=text)
    for _ in range(args.timed):
        for v, (_, text) in variants.items():
            timer = timers[v]
            with timer.patch(targets), _patch_policy(policy, timer):
                _, elapsed = bench.manual_chunk(memories[v], gens[v], reuse_text=text)
            totals[v] += elapsed
    for v, timer in timers.items():
        t = {k: value / args.timed for k, value in timer.total.items()}
        chunk = totals[v] / args.timed
        core = t.get("read", 0) + t.get("commit", 0) + t.get("gather", 0)
        rotate = t.get("memory_kv", 0) - t.get("gather", 0)
        extended = core + rotate + t.get("rope", 0) + t.get("summaries", 0)
        ms = [1000 * x for x in (chunk, t.get("policy", 0), core)]
        print(
            f"| {v} | {ms[0]:.1f} ms | {ms[1]:.2f} ms | {ms[2]:.2f} ms | **{100 * core / chunk:.1f} %** | "
            f"{1000 * rotate:.2f} ms | {1000 * t.get('rope', 0):.2f} ms | {1000 * t.get('summaries', 0):.2f} "
            f"ms | {100 * extended / chunk:.1f} % |"
        )


def bench_subframe(bench: Bench) -> None:
    """What entries smaller than a frame cost: Deep Forcing keeping whole frames vs half of their tokens in
    the same slots (padded slots, one key-padding mask per read, per-token attention statistics)."""
    args = bench.args
    variants = {
        "whole frames": DeepForcing(sink=9, compressed=6, recent=6, rope_length=21),
        "half of the tokens": DeepForcing(sink=9, compressed=6, recent=6, token_share=0.5, rope_length=21),
    }
    targets = [(KVMemory, "read", "read"), (KVMemory, "commit", "commit"), (KVMemory, "gather", "gather"),
               (WanModel, "_frame_attention", "statistics")]
    print(f"\n## entries smaller than a frame, deep_forcing (18 slots), chunks {args.warmup}.."
          f"{args.warmup + args.timed}, interleaved, per chunk")
    print("| compressed entries hold | chunk time (median) | policy decisions | KVMemory read+commit+gather "
          "| attention statistics | attended tokens |")
    print("|---|---|---|---|---|---|")
    memories = {v: bench.new_memory(policy) for v, policy in variants.items()}
    gens = {v: torch.Generator().manual_seed(5) for v in variants}
    timers = {v: Timers() for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for chunk in range(args.warmup + args.timed):
        for v, policy in variants.items():
            if chunk < args.warmup:
                bench.manual_chunk(memories[v], gens[v], reuse_text=True)
                continue
            with timers[v].patch(targets), _patch_policy(policy, timers[v]):
                _, elapsed = bench.manual_chunk(memories[v], gens[v], reuse_text=True)
            times[v].append(elapsed)
    for v, timer in timers.items():
        t = {k: 1000 * value / args.timed for k, value in timer.total.items()}
        state = memories[v].states[0]
        attended = sum(state.entry_tokens(f) for f in state.kept_frames())
        print(f"| {v} | {1000 * statistics.median(times[v]):.1f} ms | {t.get('policy', 0):.2f} ms | "
              f"{t.get('read', 0) + t.get('commit', 0) + t.get('gather', 0):.2f} ms | "
              f"{t.get('statistics', 0):.2f} ms | {attended} |")


@contextmanager
def _patch_policy(policy: MemoryPolicy, timer: Timers) -> Iterator[None]:
    """Time the policy's own read/commit (they run inside KVMemory.read/commit)."""
    policy.read = timer.wrap("policy", policy.read)  # type: ignore[method-assign]
    policy.commit = timer.wrap("policy", policy.commit)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del policy.read, policy.commit


# ------------------------------------------------------------------------------------------------ train
def bench_train(bench: Bench) -> None:
    from cf_lightning.stages import ContextForcingModule, RolloutConfig
    from cf_lightning.stages.distill import StepDraws

    args = bench.args
    config = bench.model.config
    torch.manual_seed(0)
    module = ContextForcingModule(
        backbone=args.config,
        latent_channels=config.in_dim,
        text_dim=config.text_dim,
        memory=policies()["slow_fast"],
        chunk_frames=CHUNK,
        denoising_steps=args.steps,
        rollout=RolloutConfig(min_chunks=8, max_chunks=8, target_chunks=2),
    )
    gen = torch.Generator().manual_seed(0)
    frames = 8 * CHUNK
    batch = {
        "latents": torch.randn(args.batch, config.in_dim, frames, args.latent, args.latent, generator=gen),
        "text_emb": bench.context.cpu(),
    }
    draws = StepDraws(num_chunks=8, exit_step=args.steps - 1, seeds=list(range(args.batch)))
    mode = {"backward": lambda loss: loss.backward(), "forward only": lambda loss: None}
    times: dict[str, list[float]] = {m: [] for m in mode}
    for rep in range(1 + args.train_reps):
        for name, backward in mode.items():
            module.manual_backward = backward  # type: ignore[method-assign]  (no Trainer attached)
            module.zero_grad(set_to_none=True)
            start = time.perf_counter()
            module.micro_step(batch, draws, draws.seeds, generator_step=True, scale=1.0)
            if rep:
                times[name].append(time.perf_counter() - start)
    med = {m: statistics.median(t) for m, t in times.items()}
    print(
        f"\n## training micro-step (Context Forcing generator step: 8-chunk rollout, 2 target chunks with "
        f"one graph step, teacher CFG + critic scores, DMD + critic losses), median of {args.train_reps}"
    )
    print(f"| with backward | forward only | ratio |\n|---|---|---|\n| {1000 * med['backward']:.0f} ms | "
          f"{1000 * med['forward only']:.0f} ms | {med['backward'] / med['forward only']:.2f}x |")


# ---------------------------------------------------------------------------------------------- compile
def bench_compile(bench: Bench) -> None:
    args = bench.args
    policy = policies()["sliding_window"]
    compiled = copy.deepcopy(bench.model)
    for block in compiled.blocks:
        block.compile()
    models = {"eager": bench.model, "compiled blocks": compiled}
    memories = {name: bench.new_memory(policy) for name in models}
    gens = {name: torch.Generator().manual_seed(5) for name in models}
    start = time.perf_counter()
    for _ in range(args.warmup):  # fills the memory: shapes settle, compilation happens here
        for name, model in models.items():
            bench.manual_chunk(memories[name], gens[name], reuse_text=True, model=model)
    warm = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.timed):
        for name, model in models.items():
            times[name].append(
                bench.manual_chunk(memories[name], gens[name], reuse_text=True, model=model)[1]
            )
    eager, comp = statistics.median(times["eager"]), statistics.median(times["compiled blocks"])
    print(
        f"\n## torch.compile (blocks compiled, sliding_window, steady state; warm-up incl. compilation "
        f"{warm:.0f} s)"
    )
    print(f"| eager | compiled | speedup |\n|---|---|---|\n| {1000 * eager:.1f} ms | {1000 * comp:.1f} ms | "
          f"{eager / comp:.2f}x |")
    compiled_bench = copy.copy(bench)
    compiled_bench.model = compiled
    print(
        f"\nthroughput with compiled blocks on both sides, as in the throughput section (latent "
        f"{args.latent}, batch {args.batch}):"
    )
    print("| latent | tokens/frame | batch | policy | kept frames | cached tokens/s | recompute tokens/s | "
          "cached / recompute |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("sliding_window", "keyframe"):
        print(throughput_row(compiled_bench, name), flush=True)


# ---------------------------------------------------------------------------------------------- profile
OP_GROUPS = {  # torch.profiler op name -> what it is; anything else is "other elementwise and reductions"
    **dict.fromkeys(["aten::addmm", "aten::mm", "aten::bmm"], "matmul (every nn.Linear)"),
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention kernel (SDPA)",
    **dict.fromkeys(["aten::native_layer_norm", "aten::gelu", "aten::silu"], "LayerNorm, GELU, SiLU kernels"),
    **dict.fromkeys(["aten::slow_conv3d_forward", "aten::_slow_conv2d_forward"], "patch embedding (conv)"),
    **dict.fromkeys(["aten::view", "aten::as_strided", "aten::transpose", "aten::unsqueeze", "aten::t",
                     "aten::unflatten", "aten::flatten", "aten::expand", "aten::slice", "aten::select",
                     "aten::unbind", "aten::reshape", "aten::_reshape_alias", "aten::permute", "aten::to",
                     "aten::detach", "aten::alias", "aten::lift_fresh", "aten::empty", "aten::empty_strided",
                     "aten::empty_like", "aten::resize_"], "views, dtype no-ops, allocations"),
    **dict.fromkeys(["aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous", "aten::cat",
                     "aten::stack", "aten::index_select", "aten::index", "aten::fill_", "aten::zero_"],
                    "copies, concatenation, gathers"),
}


def _timed_forward(bench: Bench, x: torch.Tensor, t: torch.Tensor) -> float:
    """Seconds of one no-grad forward without memory (text projected outside the timing)."""
    with torch.no_grad():
        context_kv = bench.model(None, None, bench.context, mode="context_kv")
        bench.sync()
        start = time.perf_counter()
        bench.model(x, t, bench.context, context_kv=context_kv)
        bench.sync()
    return time.perf_counter() - start


def bench_profile(bench: Bench) -> None:
    """Where a cached chunk's time goes, next to a recompute chunk's, by kind of op (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    args = bench.args
    policy = policies()["sliding_window"]
    memory = None
    state = policy.new_state(CHUNK)
    clean: dict[int, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(6)
    for _ in range(args.warmup):  # steady state: the memory is full, shapes have settled
        memory, video, _ = bench.rollout_chunk(policy, memory, gen)
        keep_clean(policy, state, clean, video)
    runs: dict[str, Callable[[], float]] = {
        "cached": lambda: bench.rollout_chunk(policy, memory, gen)[2],
        "recompute": lambda: recompute_chunk(bench, policy, state, clean, gen),
    }
    _, ph, pw = bench.model.config.patch_size  # one token per frame: a forward with next to no arithmetic
    tiny = torch.randn(bench.shape[0], bench.shape[1], CHUNK, ph, pw, generator=gen).to(bench.device)
    zero = torch.zeros(bench.shape[0], CHUNK, device=bench.device)
    plain: dict[str, list[float]] = {name: [] for name in runs}
    floor: list[float] = []
    for _ in range(args.timed):  # interleaved; committing to the memory is part of a cached chunk, so keep it
        for name, run in runs.items():
            plain[name].append(run())
        floor.append(_timed_forward(bench, tiny, zero))
    groups: dict[str, dict[str, float]] = {}
    profiled: dict[str, float] = {}
    for name, run in runs.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            profiled[name] = sum(run() for _ in range(args.timed)) / args.timed
        per_group = groups.setdefault(name, {})
        for event in prof.key_averages():
            group = OP_GROUPS.get(event.key, "other elementwise and reductions")
            per_group[group] = per_group.get(group, 0.0) + event.self_cpu_time_total / 1e6 / args.timed
        per_group["outside ops (Python, nn.Module calls, dispatch)"] = profiled[name] - sum(
            per_group.values()
        )
    print(f"\n## profile: one chunk of sliding_window at steady state (after {args.warmup} chunks), "
          f"{args.timed} chunks each; torch.profiler self CPU time by kind of op")
    print("chunk time without the profiler (median): "
          + ", ".join(f"{name} {1000 * statistics.median(t):.1f} ms" for name, t in plain.items())
          + "; with it: " + ", ".join(f"{name} {1000 * t:.1f} ms" for name, t in profiled.items()))
    print(f"fixed cost of one forward, whatever its length (3 frames of 1 token each, no memory): "
          f"{1000 * statistics.median(floor):.2f} ms (median)")
    print("| where | " + " | ".join(f"{name} chunk" for name in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for group in sorted(groups["cached"], key=lambda g: -groups["cached"][g]):
        cells = [
            f"{1000 * groups[name].get(group, 0.0):.1f} ms "
            f"({100 * groups[name].get(group, 0.0) / profiled[name]:.0f} %)"
            for name in runs
        ]
        print(f"| {group} | " + " | ".join(cells) + " |")


SECTIONS = {"latency": bench_latency, "fastpaths": bench_fastpaths, "throughput": bench_throughput,
            "bookkeeping": bench_bookkeeping, "subframe": bench_subframe, "train": bench_train,
            "compile": bench_compile, "profile": bench_profile}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="small", help="model config name (default: small)")
    parser.add_argument("--chunks", default="10,100,1000", help="chunk indices for the latency table")
    parser.add_argument(
        "--latent", type=int, default=8, help="latent height = width (8: 16 tokens per frame)"
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per chunk")
    parser.add_argument("--text-len", type=int, default=16, help="text context tokens")
    parser.add_argument("--window", type=int, default=15, help="chunks per median (stream, throughput)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=61,
        help="side-by-side rounds of the latency table (its medians; a chunk from each snapshot per round)",
    )
    parser.add_argument("--full-cap", type=int, default=200, help="chunks after which `full` stops")
    parser.add_argument(
        "--throughput-at", type=int, default=100, help="chunk index of the throughput comparison"
    )
    parser.add_argument(
        "--sizes",
        default="4x8,8x1,8x4,16x1,24x1",
        help="throughput sizes, LATENTxBATCH (default 4x8,8x1,8x4,16x1,24x1; '' = --latent x --batch)",
    )
    parser.add_argument(
        "--warmup", type=int, default=25, help="chunks before timing (fastpaths, bookkeeping)"
    )
    parser.add_argument(
        "--timed", type=int, default=20, help="timed chunks (fastpaths, bookkeeping, compile)"
    )
    parser.add_argument("--train-reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sections", default="latency,fastpaths,throughput,bookkeeping",
                        help=f"comma-separated, from {','.join(SECTIONS)}")
    parser.add_argument("--train", action="store_true", help="also run the training-step section")
    parser.add_argument("--compile", action="store_true", help="also run the torch.compile section")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.chunks = [int(c) for c in args.chunks.split(",")]
    args.sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",") if size]
    sections = [s for s in args.sections.split(",") if s]
    sections += [
        s for s, flag in (("train", args.train), ("compile", args.compile)) if flag and s not in sections
    ]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = Bench(args)
    print(
        f"# streaming benchmark: config {args.config}, latent {args.latent}x{args.latent} ({bench.tokens} "
        f"tokens/frame), chunk {CHUNK} frames, batch {args.batch}, {args.steps} steps + refresh, text "
        f"{args.text_len} tokens"
    )
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, device {args.device}, "
          f"{torch.get_num_threads()} threads")
    for name in sections:
        SECTIONS[name](bench)


if __name__ == "__main__":
    main()
