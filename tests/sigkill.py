"""A callback that SIGKILLs its own process at a chosen training batch.

Resume tests kill a run from inside: a kill sent from outside after polling the logs races the
run (on an idle machine a short run can reach its last checkpoint before the signal lands), while a
kill at a known batch always lands between two checkpoints, whatever the machine's speed.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


class SigkillAtBatch(Callback):
    """Kill this process, with no chance to clean up, as training batch ``batch`` (0-based) starts.

    Batches are counted from this process's start, so a kill always hits a fresh run at the same
    point; everything batches ``0 .. batch - 1`` logged and saved is on disk by then.
    """

    def __init__(self, batch: int) -> None:
        super().__init__()
        if batch < 1:
            raise ValueError(f"batch must be >= 1 (at least one batch trained before the kill), got {batch}")
        self.batch = batch
        self.started = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.started == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
        self.started += 1
