"""The memory plan (benchmarks/memory_plan.py) counts what the modules build and reads every Wan recipe."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from cf_lightning.lora import inject_lora, lora_parameters
from cf_lightning.models import build_wan

ROOT = Path(__file__).parents[1]
WAN_RECIPES = sorted(p for p in (ROOT / "recipes").glob("wan2.1-*/*.yaml"))


@pytest.fixture(scope="module")
def memory_plan():
    spec = importlib.util.spec_from_file_location("memory_plan", ROOT / "benchmarks" / "memory_plan.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["memory_plan"] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    yield module
    del sys.modules["memory_plan"]


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_parameter_counts_are_the_built_model_s(memory_plan, lora_rank):
    planned = memory_plan.Backbone.build("small", lora_rank=lora_rank)
    model = build_wan("small")
    if lora_rank:
        inject_lora(model, memory_plan.DEFAULT_LORA_TARGETS, rank=lora_rank, alpha=1.0)
    assert planned.total == sum(p.numel() for p in model.parameters())
    trainable = lora_parameters(model) if lora_rank else list(model.parameters())
    assert planned.trainable == sum(p.numel() for p in trainable)
    assert planned.per_block == sum(p.numel() for p in model.blocks[0].parameters())


@torch.no_grad()
def test_attended_kv_is_what_a_streamed_chunk_gathers(memory_plan):
    """The activation term that dominates stage 2, against the tensors the model really stages."""
    model = build_wan("tiny")
    planned = memory_plan.Backbone.build("tiny")
    from memory_policies import SlidingWindow

    memory = model.new_memory(SlidingWindow(sink=1, window=4, rope_length=7), 1, 2, (4, 4))
    context = torch.randn(1, 3, 16)
    for _ in range(4):  # fill the memory to its budget
        model(torch.randn(1, 4, 2, 4, 4), torch.zeros(1), context, memory=memory, mode="commit")
    model(torch.randn(1, 4, 2, 4, 4), torch.zeros(1), context, memory=memory)
    staged = [v for k, v in memory.read().cache.items() if k[0] == "memory"]
    held = sum(chunk.keys.nbytes + chunk.values.nbytes for chunk in staged)
    frames = memory.stored_frames() + memory.chunk_frames
    assert held == planned.attended_kv(frames * model.tokens_per_frame((4, 4)), 4)


@pytest.mark.parametrize("recipe", WAN_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_wan_recipe_has_a_plan(memory_plan, recipe):
    plan = memory_plan.plan(recipe, gpus=8, tokens_per_frame=1560, tflops=989.0, mfu=0.35)
    assert plan.total > 0 and plan.seconds > 0
    assert all(size >= 0 for _, size in plan.rows)
