"""Per-GPU memory and time of a training recipe, computed from its config; checked against CPU peaks.

Parameter counts come from building each backbone on the ``meta`` device (its named config plus the
recipe's LoRA), token counts from the latent size and the recipe's chunk, memory policy budget and
rollout lengths. What the plan counts, per GPU, for ``N`` GPUs that shard with FSDP (full shard):

* states: every backbone's weights (fp32 masters), gradients and AdamW moments of what trains, and the
  EMA, all divided by ``N``; plus the gathered working set (two blocks at a time, FSDP prefetch);
* activations with per-block checkpointing (not sharded): each kept block input, and, for the
  student's streamed chunks that keep a graph, the memory keys/values each layer attended to (the
  backward of attention needs them; they are copies gathered from the pool, one per chunk and layer);
  plus one block's recomputed internals at the longest sequence;
* the student's K/V memory pool (the policy budget) and DMD's extra forwards (teacher twice for
  guidance, critic once) over ``[context | target]``.

Time is forward FLOPs (linear layers 2 x weights x tokens, attention 4 x dim x query x key tokens) over
an assumed sustained throughput, ``--tflops`` (dense bf16 peak of the GPU) times ``--mfu``; a backward
counts twice a forward and checkpointing one more forward. It is a plan, not a measurement.

    python benchmarks/memory_plan.py recipes/wan2.1-1.3b/*.yaml recipes/wan2.1-14b/*.yaml --gpus 8
    python benchmarks/memory_plan.py --check      # the activation model against measured CPU peaks
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from cf_lightning.lora import inject_lora
from cf_lightning.models import WanConfig, WanModel
from cf_lightning.recipe import load_recipe
from memory_policies.registry import build_policy

GIB = 1024**3
TEXT_TOKENS = 512  # Wan's UMT5 context length
DEFAULT_LORA_TARGETS = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "ffn.0", "ffn.2"]


@dataclass(frozen=True)
class Backbone:
    """Parameter counts of one backbone as a recipe builds it."""

    config: WanConfig
    total: int
    trainable: int
    per_block: int

    @classmethod
    def build(cls, name: str, overrides: dict | None = None, lora_rank: int = 0,
              lora_targets: list[str] | None = None) -> Backbone:
        config = WanConfig.from_name(name, **(overrides or {}))
        with torch.device("meta"):
            model = WanModel(config)
            if lora_rank:
                inject_lora(
                    model, lora_targets or DEFAULT_LORA_TARGETS, rank=lora_rank, alpha=float(lora_rank)
                )
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return cls(config, total, trainable, sum(p.numel() for p in model.blocks[0].parameters()))

    def forward_flops(self, query_tokens: int, key_tokens: int) -> float:
        """One forward: linear layers on the query tokens, self-attention over the keys, cross-attention."""
        c = self.config
        linear = 2 * self.per_block * query_tokens * c.num_layers
        attention = 4 * c.dim * query_tokens * (key_tokens + TEXT_TOKENS) * c.num_layers
        return linear + attention

    def block_peak(self, tokens: int, key_tokens: int, act_bytes: int) -> float:
        """One block's internals while it runs (or is recomputed): projections, norms, FFN hidden."""
        c = self.config
        return (tokens * (10 * c.dim + 2 * c.ffn_dim) + key_tokens * 2 * c.dim) * act_bytes

    def checkpoint_inputs(self, tokens: int, act_bytes: int) -> float:
        """What per-block checkpointing keeps of one forward: each block's input, and what the head (norm,
        modulation, projection; not checkpointed) saves, about four more token-by-dim tensors."""
        return (self.config.num_layers + 4) * tokens * self.config.dim * act_bytes

    def attended_kv(self, key_tokens: int, kv_bytes: int) -> float:
        """Keys and values one streamed chunk attended to, in every layer (kept for its backward)."""
        return self.config.num_layers * key_tokens * 2 * self.config.dim * kv_bytes


@dataclass
class Plan:
    rows: list[tuple[str, float]]
    seconds: float

    @property
    def total(self) -> float:
        return sum(b for _, b in self.rows)


def _args(recipe: dict) -> dict:
    return recipe["model"]["init_args"]


def _bytes(recipe: dict) -> tuple[int, int]:
    """Activation bytes and K/V memory bytes: both the autocast dtype under mixed precision."""
    precision = str(recipe.get("trainer", {}).get("precision", "32"))
    size = 2 if "16" in precision else 4
    return size, size


def _policy_budget(args: dict) -> int:
    memory = args.get("memory")
    if memory is None:
        return 0
    policy = build_policy(memory["class_path"], **memory.get("init_args", {}))
    return policy.budget(args.get("chunk_frames", 2)) or 0


def _states(backbones: list[Backbone], gpus: int) -> list[tuple[str, float]]:
    weights = sum(b.total for b in backbones) * 4
    trainable = sum(b.trainable for b in backbones)
    widest = max(backbones, key=lambda b: b.per_block)
    return [("weights (fp32, all backbones incl. EMA) / N", weights / gpus),
            ("gradients (fp32) / N", trainable * 4 / gpus),
            ("AdamW moments (fp32) / N", trainable * 8 / gpus),
            ("gathered blocks (2, fp32)", 2 * widest.per_block * 4)]


def stage2_plan(recipe: dict, gpus: int, tokens_per_frame: int, tflops: float, mfu: float) -> Plan:
    """Context Forcing stage 2: student, critic (trained), teacher (frozen), EMA of the student."""
    a = _args(recipe)
    rollout_cfg, teacher_cfg = a.get("rollout") or {}, a.get("teacher") or {}
    optim = a.get("optimization") or {}
    act, kv = _bytes(recipe)
    student = Backbone.build(a["backbone"], a.get("backbone_overrides"))
    teacher = (Backbone.build(teacher_cfg["backbone"], teacher_cfg.get("backbone_overrides"))
               if teacher_cfg.get("backbone") else Backbone.build(a["backbone"], a.get("backbone_overrides")))
    frozen_teacher = Backbone(teacher.config, teacher.total, 0, teacher.per_block)
    ema = Backbone(student.config, student.total, 0, student.per_block)
    chunk, budget = a.get("chunk_frames", 2), _policy_budget(a)
    micro = recipe["data"]["init_args"].get("batch_size", 1) // optim.get("accumulate", 1)
    query, keys = chunk * tokens_per_frame, (budget + chunk) * tokens_per_frame
    target_chunks = rollout_cfg.get("target_chunks", 2)
    context_frames = {"memory": budget, "last_n": teacher_cfg.get("context_frames", 8), "none": 0}[
        teacher_cfg.get("context", "memory")]
    scored = (context_frames + target_chunks * chunk) * tokens_per_frame
    pool = student.config.num_layers * budget * tokens_per_frame * 2 * student.config.dim * kv * micro
    student_graph = (
        target_chunks * micro * (student.checkpoint_inputs(query, act) + student.attended_kv(keys, kv))
    )
    generator_phase = student_graph + micro * max(student.block_peak(query, keys, act),
                                                   teacher.block_peak(scored, scored, act))
    critic_phase = micro * (teacher.checkpoint_inputs(scored, act) + teacher.block_peak(scored, scored, act))
    rows = _states([student, teacher, frozen_teacher, ema], gpus)  # student, critic, teacher, EMA
    rows += [(f"K/V memory pool ({budget} frames)", pool),
             ((f"activations: max(generator phase {generator_phase / GIB:.1f} GiB, critic phase "
              f"{critic_phase / GIB:.1f} GiB)"), max(generator_phase, critic_phase))]
    chunks = rollout_cfg.get("max_chunks", 8)
    steps = a.get("denoising_steps", 4)
    per_chunk = student.forward_flops(query, keys)
    rollout = ((chunks - target_chunks) * (steps + 1) + target_chunks * ((steps + 1) / 2 + 1)) * per_chunk
    generator_extra = 3 * target_chunks * per_chunk + 3 * teacher.forward_flops(scored, scored)
    critic = 4 * teacher.forward_flops(scored, scored)
    per_video = rollout + critic + generator_extra / optim.get("generator_every", 5)
    videos = recipe["data"]["init_args"].get("batch_size", 1)  # per GPU per critic step
    return Plan(rows, videos * per_video / (tflops * 1e12 * mfu))


def teacher_plan(recipe: dict, gpus: int, tokens_per_frame: int, tflops: float, mfu: float) -> Plan:
    """Teacher / context teacher: one backbone (maybe LoRA) and its EMA, flow matching on [context |
    target]."""
    a = _args(recipe)
    act, _ = _bytes(recipe)
    model = Backbone.build(
        a["backbone"], a.get("backbone_overrides"), a.get("lora_rank", 0), a.get("lora_targets")
    )
    ema = Backbone(model.config, model.total, 0, model.per_block)
    modes = a.get("contexts") or ["none"]
    context = 0 if modes == ["none"] else max(_policy_budget(a), a.get("context_frames", 8))
    tokens = (context + a.get("target_frames", 8)) * tokens_per_frame
    micro = recipe["data"]["init_args"].get("batch_size", 1)
    rows = _states([model, ema], gpus)
    rows.append(("activations (checkpoint inputs + one block)",
                 micro * (model.checkpoint_inputs(tokens, act) + model.block_peak(tokens, tokens, act))))
    checkpointing = (
        1 if a.get("gradient_checkpointing") or "activation_checkpointing_policy" in str(recipe) else 0
    )
    flops = (3 + checkpointing) * model.forward_flops(tokens, tokens) * micro
    return Plan(rows, flops / (tflops * 1e12 * mfu))


def plan(path: Path, gpus: int, tokens_per_frame: int, tflops: float, mfu: float) -> Plan:
    recipe = load_recipe(path)
    kind = recipe["model"]["class_path"].rsplit(".", 1)[-1]
    build = stage2_plan if kind == "ContextForcingModule" else teacher_plan
    return build(recipe, gpus, tokens_per_frame, tflops, mfu)


# ---------------------------------------------------------------------------------------------- CPU check
CHECK_CONFIG = {"dim": 256, "ffn_dim": 512, "num_heads": 4, "num_layers": 4, "in_dim": 4, "out_dim": 4,
                "text_dim": 16, "freq_dim": 16}
CHECK_POLICY = {"sink": 1, "window": 4, "rope_length": 7}


def _measure(what: str) -> None:
    """Runs in a fresh process: resident bytes the graph of a student rollout holds before its backward."""
    from cf_lightning.diffusion import denoising_sigmas
    from cf_lightning.rollout import rollout
    from memory_policies import SlidingWindow

    torch.set_num_threads(1)
    config = WanConfig(**CHECK_CONFIG)
    model = WanModel(config)
    model.gradient_checkpointing = True
    chunks, target, hw = 6, int(what), (32, 32)
    noise = torch.randn(1, 4, 2 * chunks, *hw)
    context = torch.randn(1, 8, 16)
    policy = SlidingWindow(**CHECK_POLICY)
    sigmas = denoising_sigmas(2, 5.0)
    rollout(model, policy, noise, context, sigmas, chunk_frames=2)  # warm up, no graph
    base = _resident()
    result = rollout(model, policy, noise, context, sigmas, chunk_frames=2, exit_step=1,
                     grad_from_chunk=chunks - target)
    print(_resident() - base)  # what the graph holds once the rollout is done
    result.video.square().mean().backward()


def _resident() -> int:
    """Resident bytes now (Linux). The check runs with a fixed mmap threshold, so freed tensors leave RSS."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def check() -> None:
    """Predicted vs measured: what the graph of 1 and of 4 streamed chunks holds (the difference is 3
    chunks' graph, free of warm-up effects), fp32 on CPU, a width-256 4-layer model, 256 tokens a frame."""
    from memory_policies import SlidingWindow

    tokens = (32 // 2) * (32 // 2)
    model = Backbone(WanConfig(**CHECK_CONFIG), 0, 0, 0)
    budget = SlidingWindow(**CHECK_POLICY).budget(2) or 0
    query, keys = 2 * tokens, (budget + 2) * tokens
    per_chunk = model.checkpoint_inputs(query, 4) + model.attended_kv(keys, 4)
    measured = {}
    for target in (1, 4):
        out = subprocess.run(
            [sys.executable, __file__, "--measure", str(target)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"},
        )
        measured[target] = int(out.stdout.strip().splitlines()[-1])
    predicted = 3 * per_chunk
    delta = measured[4] - measured[1]
    print(f"budget {budget} frames, {tokens} tokens a frame: 3 extra graph chunks predicted "
          f"{predicted / 2**20:.1f} MiB, measured {delta / 2**20:.1f} MiB (resident, ratio "
          f"{delta / predicted:.2f})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipes", nargs="*", type=Path)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--latent-hw", type=int, nargs=2, default=[60, 104],
                        help="latent height and width (480x832 video through Wan's 8x VAE)")
    parser.add_argument("--tflops", type=float, default=989.0, help="dense bf16 peak per GPU (H100 SXM: 989)")
    parser.add_argument("--mfu", type=float, default=0.35, help="assumed fraction of the peak sustained")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        return _measure(args.measure)
    if args.check:
        return check()
    tokens = (args.latent_hw[0] // 2) * (args.latent_hw[1] // 2)
    for path in args.recipes:
        for gpus in args.gpus:
            result = plan(path, gpus, tokens, args.tflops, args.mfu)
            print(f"\n{path} on {gpus} GPU(s): {result.total / GIB:.1f} GiB per GPU, "
                  f"~{result.seconds:.1f} s per step at {args.mfu:.0%} of {args.tflops:.0f} TFLOP/s")
            for name, size in result.rows:
                print(f"  {size / GIB:8.2f} GiB  {name}")


if __name__ == "__main__":
    main()
