import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cf_lightning.lora import LoRALinear, inject_lora, lora_parameters, lora_state_dict, merge_lora

TARGETS = ["q", "k", "v", "o", "ffn.0", "ffn.2"]


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.qk = nn.Linear(dim, dim)  # a suffix "q" must not match "qk"
        self.norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.o(self.q(x) * torch.sigmoid(self.k(x)) + self.v(x) + 0.1 * self.qk(x))
        return x + self.ffn(self.norm(x))


class Toy(nn.Module):
    def __init__(self, dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList([Block(dim), Block(dim)])
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn(5, 8, generator=torch.Generator().manual_seed(seed))


def train(model: nn.Module, steps: int = 3) -> None:
    opt = torch.optim.Adam(lora_parameters(model), lr=1e-2)
    target = torch.randn(5, 3, generator=torch.Generator().manual_seed(9))
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(inputs()) - target).square().mean()
        loss.backward()
        opt.step()


def test_injection_wraps_the_named_linears_and_keeps_outputs() -> None:
    model = Toy()
    before = model(inputs()).detach()
    names = inject_lora(model, TARGETS, rank=4, alpha=8)
    assert names == [f"blocks.{i}.{n}" for i in range(2) for n in ["q", "k", "v", "o", "ffn.0", "ffn.2"]]
    assert isinstance(model.blocks[0].ffn[0], LoRALinear)
    assert isinstance(model.blocks[0].qk, nn.Linear) and isinstance(model.head, nn.Linear)
    assert torch.equal(model(inputs()), before)


def test_training_moves_only_the_adapters() -> None:
    model = Toy()
    inject_lora(model, TARGETS, rank=4, alpha=8)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    before = model(inputs()).detach()
    train(model)
    adapters = set(map(id, lora_parameters(model)))
    assert len(adapters) == 24
    for name, p in model.named_parameters():
        if id(p) in adapters:
            assert p.requires_grad and p.grad is not None, name
        else:
            assert not p.requires_grad and p.grad is None, name
    for k, v in model.state_dict().items():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k
    assert not torch.allclose(model(inputs()), before, atol=1e-4)


def test_merge_restores_plain_linears_with_identical_outputs() -> None:
    reference = Toy()
    original_keys = list(reference.state_dict())
    linear_names = [n for n, m in reference.named_modules() if isinstance(m, nn.Linear)]
    model = Toy()
    inject_lora(model, TARGETS, rank=4, alpha=8)
    train(model)
    adapted = model(inputs()).detach()
    merged = merge_lora(model)
    assert merged is model
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert [n for n, m in merged.named_modules() if isinstance(m, nn.Linear)] == linear_names
    assert all(type(m) is nn.Linear for n, m in merged.named_modules() if n in linear_names)
    assert list(merged.state_dict()) == original_keys
    torch.testing.assert_close(merged(inputs()), adapted, atol=1e-6, rtol=0)
    reference.load_state_dict(merged.state_dict())  # loads into the un-adapted architecture


@settings(max_examples=25, deadline=None)
@given(rank=st.integers(1, 6), alpha=st.floats(0.5, 64.0), fan_in=st.integers(1, 12),
       fan_out=st.integers(1, 12), seed=st.integers(0, 1000), bias=st.booleans())
def test_single_layer_merge_is_exact(rank: int, alpha: float, fan_in: int, fan_out: int, seed: int,
                                     bias: bool) -> None:
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(fan_in, fan_out, bias=bias), rank=rank, alpha=alpha)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(7, fan_in)
    expected = layer.base(x) + alpha / rank * x @ layer.lora_a.T @ layer.lora_b.T
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    out = layer(x).detach()
    merged = merge_lora(layer)
    assert type(merged) is nn.Linear
    torch.testing.assert_close(merged(x), out, atol=1e-5, rtol=1e-5)


def test_regex_targets_and_repeated_injection() -> None:
    model = Toy()
    assert inject_lora(model, [r"blocks\.0\.(q|k)"], rank=2, alpha=2) == ["blocks.0.q", "blocks.0.k"]
    assert inject_lora(model, ["ffn.2"], rank=2, alpha=2) == ["blocks.0.ffn.2", "blocks.1.ffn.2"]
    # Adapters injected first stay trainable after the second call froze the base model.
    assert all(p.requires_grad for p in lora_parameters(model)) and len(lora_parameters(model)) == 8
    with pytest.raises(ValueError, match="no nn.Linear matches"):
        inject_lora(model, [r"blocks\.0\.q"], rank=2, alpha=2)  # already wrapped: nothing left


def test_no_match_names_patterns_and_candidates() -> None:
    with pytest.raises(ValueError, match=r"target_modules=\['to_q', 'to_k'\].*blocks\.0\.q"):
        inject_lora(Toy(), ["to_q", "to_k"], rank=2, alpha=2)
    with pytest.raises(TypeError, match="list of names"):
        inject_lora(Toy(), "q", rank=2, alpha=2)
    with pytest.raises(ValueError, match="not a valid regex"):
        inject_lora(Toy(), ["q["], rank=2, alpha=2)
    with pytest.raises(ValueError, match="rank must be >= 1, got 0"):
        inject_lora(Toy(), ["q"], rank=0, alpha=2)


def test_lora_state_dict_round_trip() -> None:
    model = Toy()
    inject_lora(model, TARGETS, rank=4, alpha=8)
    train(model)
    state = lora_state_dict(model)
    assert len(state) == 24 and all(k.endswith(("lora_a", "lora_b")) for k in state)
    assert "blocks.1.ffn.0.lora_b" in state
    fresh = Toy()
    inject_lora(fresh, TARGETS, rank=4, alpha=8)
    result = fresh.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert torch.equal(fresh(inputs()), model(inputs()))


def test_fp32_adapters_on_a_bf16_base() -> None:
    layer = LoRALinear(nn.Linear(8, 4).to(torch.bfloat16), rank=2, alpha=2)
    layer.lora_a.data = layer.lora_a.data.float()
    layer.lora_b.data = torch.randn(4, 2)
    out = layer(torch.randn(3, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
