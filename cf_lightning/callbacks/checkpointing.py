"""Checkpoints a killed run can resume from exactly: saved every N training batches, written
atomically, rotated, kept in the run's own directory.

:class:`RunCheckpoint` is a ``ModelCheckpoint``, so Lightning treats it as its own: ``--ckpt_path last``
finds its ``last.ckpt``, ``trainer.checkpoint_callback`` is this callback, loggers are told of each
save. It replaces ModelCheckpoint's triggers and its write:

- The trigger counts training batches, not ``trainer.global_step``: that counts every optimizer step,
  and Context Forcing steps the critic every batch and the generator every k-th, so the step count
  moves by 1 or 2 per batch and ``every_n_train_steps=N`` skips multiples of N.
- Lightning's own write goes through a temporary file in the system temp directory and
  ``shutil.move``, which degrades to a copy (and a half-written checkpoint under its final name if
  the process dies) when that directory is on another filesystem; here the temporary file sits next
  to the checkpoint and ``os.replace`` publishes it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

LAST = "last.ckpt"
PARTIAL = ".partial"
STEP_PREFIX = "batch="


def run_checkpoint_dir(trainer: pl.Trainer, dirpath: str | os.PathLike | None = None) -> Path:
    """Where a run's checkpoints live: ``dirpath`` if given, else ``<save_dir>/<name>/<version>/checkpoints``
    of the first logger (``ModelCheckpoint``'s rule), else ``<default_root_dir>/checkpoints``."""
    if dirpath is not None:
        return Path(dirpath)
    if not trainer.loggers:
        return Path(trainer.default_root_dir) / "checkpoints"
    logger = trainer.loggers[0]
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / version / "checkpoints"


def _fsync(path: Path) -> None:
    """Flush a file, or every file of a directory checkpoint (sharded strategies), to disk."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def publish(partial: Path, target: Path) -> None:
    """Give a completely written ``partial`` the name ``target`` in one rename.

    A file replaces the old one atomically. A directory (sharded checkpoints) cannot replace a
    non-empty directory, so the old one steps aside first; a crash between the two renames leaves
    ``<target>.old`` complete and no ``target``, never a half-written one.
    """
    _fsync(partial)
    if partial.is_dir() and target.exists():
        old = target.with_name(target.name + ".old")
        _remove(old)
        os.replace(target, old)
        os.replace(partial, target)
        _remove(old)
    else:
        os.replace(partial, target)
    _fsync_dir(target.parent)


class RunCheckpoint(ModelCheckpoint):
    """Save every ``every_n_batches`` training batches to ``batch=<n>.ckpt`` and ``last.ckpt``.

    Args:
        every_n_batches: training batches between saves; counted by this callback and stored in the
            checkpoint, so the count continues across resumes and never skips.
        max_checkpoints: keep only the newest N ``batch=*.ckpt`` files (by write time, so those left
            by a run that was resumed from an earlier checkpoint go first); ``None`` keeps all,
            0 writes ``last.ckpt`` only.
        dirpath: checkpoint directory; default the run directory's ``checkpoints/`` (see
            :func:`run_checkpoint_dir`), which ``cf-fit fit --ckpt_path last`` (or ``auto``) resumes from.
        save_on_train_end: also write ``last.ckpt`` when training ends between two saves, so it
            always holds the final state.

    Every file is written as ``<name>.partial`` in the same directory and renamed when complete;
    partial files of a crashed run are removed when the next run in that directory starts.
    ``last.ckpt`` is a hard link to the newest ``batch=*.ckpt`` (a copy where links are refused),
    so a save writes the checkpoint once. No metric is monitored, so ``best_model_path`` is the newest
    checkpoint, as for ``ModelCheckpoint(monitor=None)``.
    """

    def __init__(self, every_n_batches: int = 500, max_checkpoints: int | None = None, dirpath: str | None = None,
                 save_on_train_end: bool = True) -> None:
        if every_n_batches < 1:
            raise ValueError(f"every_n_batches must be >= 1, got {every_n_batches}")
        if max_checkpoints is not None and max_checkpoints < 0:
            raise ValueError(f"max_checkpoints must be >= 0 (0: last.ckpt only) or None (keep all), "
                             f"got {max_checkpoints}")
        # ModelCheckpoint's step and epoch triggers off: this callback saves on its batch count only.
        super().__init__(dirpath=dirpath, every_n_train_steps=0, every_n_epochs=0,
                         save_on_train_epoch_end=False)
        self.every_n_batches = every_n_batches
        self.max_checkpoints = max_checkpoints
        self.save_on_train_end = save_on_train_end
        self.batches = 0
        self._saved_at: int | None = None

    @property
    def state_key(self) -> str:
        """The class name, as before this became a ``ModelCheckpoint``, so earlier checkpoints resume
        their batch count (ModelCheckpoint's key lists its monitor and triggers, unused here)."""
        return type(self).__qualname__

    @property
    def directory(self) -> Path:
        if self.dirpath is None:
            raise RuntimeError("RunCheckpoint has no directory before the trainer sets it up")
        return Path(self.dirpath)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Resolve the directory and remove partial files of a crashed run (ModelCheckpoint's setup
        would warn that a resumed run's directory is not empty)."""
        self.dirpath = str(trainer.strategy.broadcast(run_checkpoint_dir(trainer, self.dirpath)))
        if stage == "fit" and trainer.is_global_zero and self.directory.is_dir():
            for leftover in self.directory.glob(f"*{PARTIAL}"):
                _remove(leftover)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.batches += 1
        if self.batches % self.every_n_batches == 0:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """No save at epoch ends: only the batch count triggers one."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """No save after validation: only the batch count triggers one."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_on_train_end and self._saved_at != self.batches:
            self.save(trainer, last_only=True)

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batches = int(state_dict["batches"])
        self._saved_at = self.batches

    def save(self, trainer: pl.Trainer, last_only: bool = False) -> None:
        """Write this batch's checkpoint (unless ``last_only``), point ``last.ckpt`` at it, rotate."""
        last = self.directory / LAST
        if last_only or self.max_checkpoints == 0:
            self._write(trainer, last)
            newest = last
        else:
            newest = self.directory / f"{STEP_PREFIX}{self.batches:07d}.ckpt"
            self._write(trainer, newest)
            self._link_last(trainer, newest, last)
            if trainer.is_global_zero and self.max_checkpoints is not None:
                self._rotate()
        trainer.strategy.barrier("RunCheckpoint.save")
        self._saved_at = self.batches
        self.best_model_path, self.last_model_path = str(newest), str(last)
        for logger in trainer.loggers:
            logger.after_save_checkpoint(proxy(self))

    def _write(self, trainer: pl.Trainer, target: Path) -> None:
        partial = target.with_name(target.name + PARTIAL)
        trainer.save_checkpoint(partial, weights_only=False)  # every rank: the strategy decides who writes what
        if trainer.is_global_zero:
            publish(partial, target)
        trainer.strategy.barrier("RunCheckpoint.write")

    def _link_last(self, trainer: pl.Trainer, step: Path, last: Path) -> None:
        if not trainer.strategy.broadcast(step.is_file()):
            self._write(trainer, last)  # a sharded checkpoint is a directory: hard links do not apply
            return
        if trainer.is_global_zero:
            partial = last.with_name(last.name + PARTIAL)
            partial.unlink(missing_ok=True)
            try:
                os.link(step, partial)
            except OSError:
                shutil.copyfile(step, partial)
            publish(partial, last)

    def _rotate(self) -> None:
        assert self.max_checkpoints is not None
        steps = sorted((p for p in self.directory.glob(f"{STEP_PREFIX}*.ckpt")),
                       key=lambda p: (p.stat().st_mtime_ns, p.name))
        for old in steps[:max(len(steps) - self.max_checkpoints, 0)]:  # fewer than the limit: keep all
            _remove(old)
