"""Learning-rate schedules for the stages' ``lr_scheduler`` arguments (Lightning ``LRSchedulerCallable``).

Warm-up followed by cosine decay needs two torch schedulers chained by ``SequentialLR``, which takes
scheduler instances and so cannot be written as one ``class_path`` in a recipe; :class:`WarmupCosineLR`
is that schedule as one scheduler whose factor is a closed form of the step count, so a resumed run
(or a scheduler stepped late to catch up) lands on exactly the same learning rate.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupCosineLR(LRScheduler):
    """Linear warm-up to the optimizer's learning rate, then cosine decay to ``min_ratio`` of it.

    Args:
        warmup_steps: steps of linear warm-up; step ``i < warmup_steps`` uses ``(i + 1) / warmup_steps``
            of the base rate, so the first step already learns.
        total_steps: step at which the cosine reaches ``min_ratio``; ``None`` keeps the base rate after
            the warm-up (warm-up only).
        min_ratio: final fraction of the base rate.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int = 0, total_steps: int | None = None,
                 min_ratio: float = 0.0, last_epoch: int = -1) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if total_steps is not None and total_steps <= warmup_steps:
            raise ValueError(f"total_steps must exceed warmup_steps={warmup_steps} (or be None: no decay), "
                             f"got {total_steps}")
        if not 0.0 <= min_ratio <= 1.0:
            raise ValueError(f"min_ratio must lie in [0, 1], got {min_ratio}")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_ratio = min_ratio
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """Fraction of the base learning rate at optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.total_steps is None:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]
