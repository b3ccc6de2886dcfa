"""Exponential moving average of the student's weights.

The EMA is kept inside the distillation module for the student only (Lightning's EMA callback would
also average the frozen teacher and the critic, and does not shard). Context Forcing uses decay 0.99
from generator step 200: before that the EMA simply follows the weights, so it starts from the
distilled student rather than from the initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def _check_decay(decay: float) -> None:
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must lie in [0, 1], got {decay}")


def _check_start_step(start_step: int) -> None:
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")


def ema_decay(step: int, decay: float, start_step: int = 0) -> float:
    """Decay to use at generator ``step``: 0 (copy the weights) up to ``start_step``, ``decay`` after."""
    _check_decay(decay)
    _check_start_step(start_step)
    return 0.0 if step <= start_step else decay


def _paired(ema_items: list[tuple[str, torch.Tensor]], items: list[tuple[str, torch.Tensor]],
            kind: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    ema_names = [name for name, _ in ema_items]
    names = [name for name, _ in items]
    if ema_names != names:
        missing = sorted(set(names) - set(ema_names))[:5]
        extra = sorted(set(ema_names) - set(names))[:5]
        raise ValueError(f"EMA and model {kind} differ: missing from the EMA {missing}, only in the EMA {extra}"
                         if missing or extra else f"EMA and model {kind} are registered in a different order")
    pairs = []
    for (name, e), (_, p) in zip(ema_items, items):
        if e.shape != p.shape:
            raise ValueError(f"{kind[:-1]} {name!r}: EMA shape {tuple(e.shape)} != model shape {tuple(p.shape)}")
        pairs.append((e, p))
    return pairs


@torch.no_grad()
def update_ema(ema_module: nn.Module, module: nn.Module, decay: float) -> None:
    """In place ``ema = decay * ema + (1 - decay) * p`` for every trainable parameter (``requires_grad``
    in ``module``) and floating-point buffer.

    Frozen parameters are left alone: they never change, so their average is themselves, and under LoRA
    (a rank-128 context teacher) they are nearly all the weights: lerping them would cost a pass over
    ~1.3B weights per step to average a few million. The EMA keeps the copy it was made with.
    One fused ``torch._foreach_lerp_`` per dtype keeps this cheap for a 1.3B student. Non-float buffers
    (step counters, index tables) cannot be averaged and are copied. The source is cast to the EMA's
    dtype and device, so an fp32 EMA of a bf16 student works.
    """
    _check_decay(decay)
    pairs = [(e, p) for e, p in _paired(list(ema_module.named_parameters()), list(module.named_parameters()),
                                        "parameters") if p.requires_grad]
    for e, p in _paired(list(ema_module.named_buffers()), list(module.named_buffers()), "buffers"):
        if e.is_floating_point():
            pairs.append((e, p))
        else:
            e.copy_(p)
    groups: dict[tuple[torch.dtype, torch.device], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for e, p in pairs:
        targets, sources = groups.setdefault((e.dtype, e.device), ([], []))
        targets.append(e.data)
        sources.append(p.detach().to(dtype=e.dtype, device=e.device))
    for targets, sources in groups.values():
        torch._foreach_lerp_(targets, sources, 1.0 - decay)


@dataclass
class EMA:
    """Decay plus start rule; call :meth:`update` once per generator step."""

    decay: float = 0.99
    start_step: int = 0

    def __post_init__(self) -> None:
        _check_decay(self.decay)
        _check_start_step(self.start_step)

    def update(self, ema_module: nn.Module, module: nn.Module, step: int) -> float:
        """Update ``ema_module`` towards ``module`` for generator ``step``; returns the decay used."""
        decay = ema_decay(step, self.decay, self.start_step)
        update_ema(ema_module, module, decay)
        return decay
