"""Every use of the weights goes through ``forward()`` of the model and of each block, streaming included.

Wrappers act at ``forward()``: FSDP gathers a block's weights in its forward pre-hook and frees them in
its post-hook, activation checkpointing replaces a block's forward, ``torch.compile`` traces it. The
emulation below does what FSDP does to weights (real only between a module's pre- and post-hook, NaN
otherwise), so any use that bypassed ``forward()`` would turn the rollout's output or memory into NaN.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper, checkpoint_wrapper

from cf_lightning.diffusion import denoising_sigmas
from cf_lightning.models import WanModel, build_wan
from cf_lightning.rollout import rollout
from memory_policies import SlowFast

B, H, W, CHUNK, CHUNKS = 2, 4, 4, 2, 4


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny() -> WanModel:
    torch.manual_seed(0)
    return build_wan("tiny")


def policy() -> SlowFast:
    return SlowFast(sink=1, slow=2, fast=4, threshold=0.9, interval=1, rope_length=7)


def run(model: nn.Module, grad_from_chunk: int | None = None):
    """A training-style rollout (the last chunk keeps its graph when asked) from fixed noise and text."""
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(B, 4, CHUNK * CHUNKS, H, W, generator=gen)
    context = torch.randn(B, 5, 16, generator=gen)
    return rollout(model, policy(), noise, context, denoising_sigmas(2, 5.0), chunk_frames=CHUNK, exit_step=1,
                   grad_from_chunk=grad_from_chunk, generator=[torch.Generator().manual_seed(b) for b in range(B)])


class ReshardLikeFSDP:
    """A module's own parameters hold their values only between its forward pre- and post-hook, as under
    FSDP; records the ``mode`` of every call it sees."""

    def __init__(self, module: nn.Module, recurse: bool) -> None:
        self.params = list(module.parameters(recurse=recurse))
        self.real = [p.data for p in self.params]
        self.modes: list[str] = []
        self._free()
        module.register_forward_pre_hook(self._gather, with_kwargs=True)
        module.register_forward_hook(self._free_after, with_kwargs=True)

    def _gather(self, module, args, kwargs) -> None:
        self.modes.append(kwargs.get("mode", "predict" if isinstance(module, WanModel) else "block"))
        for p, real in zip(self.params, self.real):
            p.data = real

    def _free_after(self, module, args, kwargs, output) -> None:
        self._free()

    def _free(self) -> None:
        for p in self.params:
            p.data = torch.full_like(p.data, float("nan"))  # a new tensor: saved activations keep the real one


def resharded(model: WanModel) -> tuple[ReshardLikeFSDP, list[ReshardLikeFSDP]]:
    """Root unit (the model's own, non-block weights) and one unit per block, as FSDP wraps a Wan model."""
    blocks = [ReshardLikeFSDP(block, recurse=True) for block in model.blocks]
    own = [p for name, p in model.named_parameters() if not name.startswith("blocks.")]
    root = ReshardLikeFSDP(model, recurse=False)
    root.params, root.real = own, [p.data for p in own]
    root._free()
    return root, blocks


def test_streaming_rollout_and_commit_use_weights_only_inside_forward():
    reference = run(tiny())
    model = tiny()
    root, blocks = resharded(model)
    result = run(model)
    assert torch.equal(result.video, reference.video)
    assert torch.equal(result.memory.keys, reference.memory.keys)
    assert torch.equal(result.memory.values, reference.memory.values)
    # the text projection, the denoising forwards and the commit-only refresh all passed the hooks
    assert {"context_kv", "predict", "commit"} <= set(root.modes)
    for unit in blocks:
        assert {"context_kv", "block"} <= set(unit.modes)
    assert "keys_values" in blocks[-1].modes  # the commit stops at the last block's keys and values


def test_activation_checkpointing_wrappers_run_the_streaming_path():
    reference = tiny()
    out = run(reference, grad_from_chunk=CHUNKS - 1)
    out.video.square().mean().backward()
    model = tiny()
    recomputed = []
    for i, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda *_: recomputed.append(torch.is_grad_enabled()))
        model.blocks[i] = checkpoint_wrapper(block)  # what FSDP's activation_checkpointing_policy applies
    assert all(isinstance(b, CheckpointWrapper) for b in model.blocks)
    wrapped = run(model, grad_from_chunk=CHUNKS - 1)
    calls_in_forward = len(recomputed)
    wrapped.video.square().mean().backward()
    assert torch.equal(wrapped.video, out.video)
    assert len(recomputed) > calls_in_forward  # the backward re-ran checkpointed blocks
    grads = {name.replace("_checkpoint_wrapped_module.", ""): p.grad for name, p in model.named_parameters()}
    for name, p in reference.named_parameters():
        assert torch.allclose(grads[name], p.grad, atol=1e-6), name


@pytest.mark.slow
def test_torch_compile_traces_the_blocks_of_every_streaming_call():
    """Per-block compilation (the usual way to compile a DiT); a compiled root would inline the blocks.
    Dynamo tracing only (no code generation), still ~25 s on two loaded cores."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    reference = run(tiny())
    model = tiny()
    counters = [CompileCounter() for _ in model.blocks]
    for block, counter in zip(model.blocks, counters):
        block.compile(backend=counter, dynamic=True)
    result = run(model)
    torch._dynamo.reset()
    assert torch.allclose(result.video, reference.video, atol=1e-5)
    assert all(counter.frame_count > 0 for counter in counters)


@pytest.mark.slow
def test_inductor_compiled_blocks_stream_like_eager():
    """The real compiler (C++ codegen on CPU): tens of seconds of compilation on two cores."""
    torch._dynamo.reset()
    reference = run(tiny())
    model = tiny()
    for block in model.blocks:
        block.compile(dynamic=True)
    result = run(model)
    torch._dynamo.reset()
    assert torch.allclose(result.video, reference.video, atol=1e-4)
    assert torch.allclose(result.memory.keys, reference.memory.keys, atol=1e-4)
