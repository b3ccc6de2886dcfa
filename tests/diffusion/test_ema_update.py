import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cf_lightning.ema import EMA, ema_decay, update_ema


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))


def dyadic_(module: nn.Module, seed: int) -> None:
    """Values on a 1/8 grid: lerp and d*e + (1-d)*p are then exact in float32 for dyadic d."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*module.parameters(), module[1].running_mean, module[1].running_var]:
            t.copy_(torch.randint(-16, 17, t.shape, generator=g).float() / 8)


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.75, 0.875, 1.0])
def test_update_is_exactly_the_convex_combination(decay: float) -> None:
    ema, model = make_model(0), make_model(1)
    dyadic_(ema, 0)
    dyadic_(model, 1)
    model[1].num_batches_tracked.fill_(7)
    before = copy.deepcopy(ema)
    update_ema(ema, model, decay)
    for (name, e), (_, e0), (_, p) in zip(ema.state_dict().items(), before.state_dict().items(),
                                          model.state_dict().items()):
        if e.is_floating_point():
            assert torch.equal(e, decay * e0 + (1 - decay) * p), name
        else:
            assert torch.equal(e, p), name  # integer buffers are copied


@settings(max_examples=25, deadline=None)
@given(decay=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_update_matches_float64_reference(decay: float, seed: int) -> None:
    ema, model = make_model(seed), make_model(seed + 1)
    expected = {k: decay * v.double() + (1 - decay) * model.state_dict()[k].double()
                for k, v in ema.state_dict().items() if v.is_floating_point()}
    update_ema(ema, model, decay)
    for k, v in expected.items():
        torch.testing.assert_close(ema.state_dict()[k].double(), v, rtol=1e-6, atol=1e-6)


def test_update_leaves_source_and_autograd_alone() -> None:
    ema, model = make_model(0), make_model(1)
    source = copy.deepcopy(model.state_dict())
    update_ema(ema, model, 0.9)
    for k, v in model.state_dict().items():
        assert torch.equal(v, source[k])
    assert all(p.grad is None and p.grad_fn is None for p in ema.parameters())


def test_fp32_ema_of_a_bf16_model() -> None:
    ema, model = make_model(0), make_model(1).to(torch.bfloat16)
    expected = [0.5 * e + 0.5 * p.float() for e, p in zip(ema.parameters(), model.parameters())]
    update_ema(ema, model, 0.5)
    for e, x in zip(ema.parameters(), expected):
        assert e.dtype == torch.float32
        torch.testing.assert_close(e, x)


def test_start_step_rule_copies_then_averages() -> None:
    assert [ema_decay(s, 0.99, start_step=200) for s in (0, 199, 200, 201, 5000)] == [0.0, 0.0, 0.0, 0.99, 0.99]
    rule = EMA(decay=0.5, start_step=2)
    ema, model = make_model(0), make_model(1)
    assert rule.update(ema, model, step=1) == 0.0
    for e, p in zip(ema.parameters(), model.parameters()):
        assert torch.equal(e, p)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert rule.update(ema, model, step=3) == 0.5
    for e, p in zip(ema.parameters(), model.parameters()):
        torch.testing.assert_close(e, p - 0.5)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="decay must lie in \\[0, 1\\], got 1.5"):
        update_ema(make_model(), make_model(), 1.5)
    with pytest.raises(ValueError, match="start_step must be >= 0, got -1"):
        EMA(decay=0.9, start_step=-1)
    other = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    with pytest.raises(ValueError, match=r"parameter '2.weight': EMA shape \(3, 6\) != model shape \(2, 6\)"):
        update_ema(other, make_model(), 0.9)
    with pytest.raises(ValueError, match=r"missing from the EMA \['1.bias', '1.weight'"):
        update_ema(nn.Sequential(nn.Linear(4, 6)), make_model(), 0.9)


def lora_pair() -> tuple[nn.Module, nn.Module]:
    """A LoRA'd tiny Wan and its EMA copy, the way the context teacher builds them."""
    from cf_lightning.lora import inject_lora
    from cf_lightning.models import build_wan

    torch.manual_seed(0)
    model = build_wan("tiny")
    inject_lora(model, ["self_attn.q", "self_attn.v", "ffn.0"], rank=2, alpha=2.0)
    return copy.deepcopy(model).requires_grad_(False), model


def test_under_lora_only_the_adapters_are_averaged_and_frozen_weights_never_written() -> None:
    ema, model = lora_pair()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name for name in trainable)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in trainable:
                p.add_(1.0)  # a training step moved the adapters
            else:
                ema.get_parameter(name).sub_(1.0)  # marks the EMA's frozen copy: any write would move it
    before = {name: p.clone() for name, p in ema.named_parameters()}
    update_ema(ema, model, 0.5)
    for name, p in ema.named_parameters():
        if name in trainable:
            assert torch.equal(p, 0.5 * before[name] + 0.5 * model.get_parameter(name)), name
        else:  # never copied nor lerped: the frozen (nearly all) weights are not touched per step
            assert torch.equal(p, before[name]), name


def test_full_fine_tuning_averages_every_weight_as_before() -> None:
    ema, model = make_model(0), make_model(1)
    expected = [0.25 * e + 0.75 * p for e, p in zip(ema.parameters(), model.parameters())]
    update_ema(ema, model, 0.25)
    for e, x in zip(ema.parameters(), expected):
        torch.testing.assert_close(e, x, rtol=0, atol=1e-7)
