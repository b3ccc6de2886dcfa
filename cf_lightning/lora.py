"""Low-rank adapters (LoRA) for ``nn.Linear``, without a peft dependency.

The context teacher is the base Wan model plus rank-128 adapters on q, k, v, o and the FFN; the same
helpers serve generator LoRA. Adapters are plain submodules, so FSDP, checkpoints and ``state_dict``
handle them like any other weight, and :func:`merge_lora` folds them back for export or inference.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * B(A(dropout(x)))`` with ``base`` frozen.

    ``B`` starts at zero so wrapping leaves the model's outputs unchanged until training moves it; ``A``
    gets nn.Linear's own init so the first updates are well scaled. The adapter weights are created in
    the base weight's dtype and device; inputs are cast to the adapter dtype, so the adapters may be kept
    in fp32 under a bf16 base.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base).__name__}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.base = base
        self.base.requires_grad_(False)
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        factory = {"dtype": base.weight.dtype, "device": base.weight.device}
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        h = self.dropout(x).to(self.lora_a.dtype)
        delta = F.linear(F.linear(h, self.lora_a), self.lora_b) * self.scaling
        return out + delta.to(out.dtype)

    def delta_weight(self) -> Tensor:
        """``scaling * B @ A`` in float32, the weight change this adapter stands for."""
        return (self.lora_b.float() @ self.lora_a.float()) * self.scaling

    def merged(self) -> nn.Linear:
        """The base Linear with the adapter folded into its weight (modifies and returns ``base``)."""
        with torch.no_grad():
            weight = self.base.weight
            weight.copy_((weight.float() + self.delta_weight().to(weight.device)).to(weight.dtype))
        return self.base

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"


def _compile_targets(patterns: list[str]) -> list[tuple[str, re.Pattern[str]]]:
    if isinstance(patterns, str):
        raise TypeError(f"target_modules must be a list of names, got the string {patterns!r}")
    if not patterns:
        raise ValueError("target_modules is empty: name at least one module suffix or regex")
    compiled = []
    for pattern in patterns:
        try:
            compiled.append((pattern, re.compile(pattern)))
        except re.error as err:
            raise ValueError(f"target_modules entry {pattern!r} is not a valid regex: {err}") from err
    return compiled


def _matches(name: str, targets: list[tuple[str, re.Pattern[str]]]) -> bool:
    # A dotted suffix ("q" matches "blocks.0.attn.q", not "blocks.0.attn.qk") or a full-name regex.
    return any(name == p or name.endswith("." + p) or regex.fullmatch(name) for p, regex in targets)


def inject_lora(
    model: nn.Module,
    target_modules: list[str],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    freeze_base_model: bool = True,
) -> list[str]:
    """Replace every matching ``nn.Linear`` in ``model`` by a :class:`LoRALinear`, in place.

    ``target_modules`` entries match module names by dotted suffix (``"q"``, ``"ffn.0"``) or by full-name
    regex (``r"blocks\\.\\d+\\.self_attn\\.[qkvo]"``). With ``freeze_base_model`` every other parameter
    is frozen too, so only the adapters (including ones injected earlier) train. Returns the names of the wrapped modules; raises if
    nothing matches, listing some available Linear names.
    """
    compiled = _compile_targets(target_modules)
    inside_lora = {f"{name}.base" if name else "base"
                   for name, module in model.named_modules() if isinstance(module, LoRALinear)}
    linears = [(name, module) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and name and name not in inside_lora]
    targets = [(name, module) for name, module in linears if _matches(name, compiled)]
    if not targets:
        available = [name for name, _ in linears]
        raise ValueError(f"inject_lora: no nn.Linear matches target_modules={list(target_modules)}; "
                         f"{len(available)} unwrapped Linear modules, e.g. {available[:8]}")
    if freeze_base_model:
        model.requires_grad_(False)
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(module, rank=rank, alpha=alpha, dropout=dropout))
    if freeze_base_model:
        for p in lora_parameters(model):
            p.requires_grad_(True)
    return [name for name, _ in targets]


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain ``nn.Linear`` back under its old name.

    Works in place and returns ``model`` (or the bare Linear when ``model`` itself is a LoRALinear). The
    merged Linears keep the base's ``requires_grad`` (frozen after :func:`inject_lora`).
    """
    if isinstance(model, LoRALinear):
        return model.merged()
    wrapped = [(name, module) for name, module in model.named_modules() if isinstance(module, LoRALinear)]
    for name, module in wrapped:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module.merged())
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter weights only, for the optimizer (frozen base weights never reach it)."""
    return [p for module in model.modules() if isinstance(module, LoRALinear) for p in (module.lora_a, module.lora_b)]


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Adapter weights under their full ``state_dict`` names: a checkpoint of megabytes, not gigabytes.

    Load it back with ``model.load_state_dict(sd, strict=False)`` after :func:`inject_lora`.
    """
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            prefix = f"{name}." if name else ""
            state[f"{prefix}lora_a"] = module.lora_a.detach()
            state[f"{prefix}lora_b"] = module.lora_b.detach()
    return state


def fold_lora_state_dict(state: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """A state dict of a model with adapters -> the plain model's, each adapter folded into its weight.

    ``X.base.weight + alpha / rank * X.lora_b @ X.lora_a`` becomes ``X.weight`` (and ``X.base.bias``
    ``X.bias``), exactly what :func:`merge_lora` does to modules, so a checkpoint of a LoRA run loads
    into an adapter-free backbone without rebuilding the module that trained it.
    """
    adapters = {key[: -len(".lora_a")] for key in state if key.endswith(".lora_a")}
    out = {}
    for key, value in state.items():
        owner = next((name for name in adapters if key.startswith(name + ".")), None)
        if owner is None:
            out[key] = value
        elif key == f"{owner}.base.weight":
            a, b = state[f"{owner}.lora_a"], state[f"{owner}.lora_b"]
            out[f"{owner}.weight"] = value + (alpha / a.shape[0]) * (b.float() @ a.float()).to(value.dtype)
        elif key == f"{owner}.base.bias":
            out[f"{owner}.bias"] = value
    return out
