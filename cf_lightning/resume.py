"""Resuming a run: ``--ckpt_path last`` (Lightning's) or ``auto`` picks the run directory's own
``last.ckpt``, and a checkpoint written by another module class (another stage) is refused before
Lightning loads any of it.

The run directory is the logger's ``<save_dir>/<name>/<version>`` (or a checkpoint callback's
``dirpath``). ``auto`` is ``last`` with one guard more: it refuses a logger without a fixed version,
because with Lightning's auto-incremented ``version_N`` every launch gets a new, empty directory and
``last`` silently starts over (a requeued job would never resume).
"""

from __future__ import annotations

import importlib
import os
import pickle
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch

from cf_lightning.callbacks.checkpointing import LAST, run_checkpoint_dir

AUTO = "auto"
#: Lightning's own name for the newest ``last*.ckpt`` of the trainer's ``ModelCheckpoint`` callbacks.
LAST_ALIAS = "last"
#: Where sharded (directory) checkpoints of Lightning's FSDP strategy keep everything but the tensors.
SHARDED_METADATA = "meta.pt"


def find_run_checkpoint(trainer: pl.Trainer, fixed_version: bool = True) -> Path | None:
    """The newest ``last.ckpt`` in the directories of the trainer's checkpoint callbacks, or ``None``
    when the run has not saved one yet; ``fixed_version`` refuses a run directory that changes with
    every launch (``--ckpt_path auto``)."""
    if not trainer.checkpoint_callbacks:
        raise ValueError(
            "--ckpt_path auto resumes from the run's checkpoint directory, but this trainer has no "
            "checkpoint callback (trainer.enable_checkpointing is false and none is configured)"
        )
    found = []
    for callback in trainer.checkpoint_callbacks:
        dirpath = getattr(callback, "dirpath", None)
        unversioned = trainer.loggers and getattr(trainer.loggers[0], "_version", None) is None
        if fixed_version and dirpath is None and unversioned:
            logger = type(trainer.loggers[0]).__name__
            raise ValueError(
                f"--ckpt_path auto resumes from this run's own directory, but {logger} has no fixed "
                "version, so every launch writes to a new version_N directory; set "
                "trainer.logger.init_args.version (e.g. to $SLURM_JOB_ID, which a requeued job "
                f"keeps) or the {type(callback).__name__}'s dirpath"
            )
        last = run_checkpoint_dir(trainer, dirpath) / LAST
        if last.exists():
            found.append(last)
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def recorded_module(path: str | os.PathLike) -> str | None:
    """The LightningModule class path ``cf-fit`` recorded in a checkpoint (``hyper_parameters._class_path``),
    read without loading the tensors; ``None`` when the checkpoint does not say."""
    file = Path(path)
    if file.is_dir():
        file = file / SHARDED_METADATA
        if not file.is_file():
            return None
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError):
        return None  # Python objects in the hyper-parameters or an old format: not read here
    return checkpoint.get("hyper_parameters", {}).get("_class_path")


def _import(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def check_resume(path: str | os.PathLike, expected: str) -> None:
    """Refuse to resume a run of module class ``expected`` (a class path) from a checkpoint that
    another module class wrote.

    A stage-2 ``ContextForcingModule`` resumed from a stage-1 ``StudentModule`` checkpoint must not
    happen by accident: LightningCLI would even swap the model config for the checkpoint's and train
    stage 1 again. Earlier-stage weights belong in ``init_from`` (``teacher.init_from`` and
    ``critic.init_from`` in stage 2).
    """
    recorded = recorded_module(path)
    if recorded is None:
        warnings.warn(f"{path} does not record which module wrote it, so resuming {expected} from it is not "
                      "checked", stacklevel=2)
        return
    ours, theirs = _import(expected), _import(recorded)
    if ours is not None and theirs is not None:
        same = ours is theirs
    else:
        same = recorded.rpartition(".")[2] == expected.rpartition(".")[2]
    if not same:
        raise ValueError(
            f"checkpoint {str(path)!r} was written by {recorded}, but this run trains {expected}: "
            "resuming would mix stages. Resume from a checkpoint of this run, or start from those "
            "weights with model.init_args.init_from (or teacher.init_from) instead of ckpt_path"
        )
