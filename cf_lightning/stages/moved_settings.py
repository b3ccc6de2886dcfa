"""Settings that moved or were renamed, per stage, so a checkpoint that records the old names is refused
with every moved name and its new place, instead of failing on the first key the module no longer has.

What changed: stage 2's flat arguments went into groups (``rollout``, ``teacher``, ``critic``,
``optimization``); every stage names its starting weights ``init_from`` (a group's ``init_from`` for a
teacher or critic); teacher contexts are ``memory | last_n | none`` everywhere (the teacher stage's
``context_modes`` with ``policy`` became ``contexts`` with ``memory``; ``short_teacher`` became
``teacher.context: last_n``). Such a checkpoint's weights still load wherever only weights or the
backbone settings are read (``init_from``, ``cf-gen``, ``cf-eval``, ``cf-export``), whose names did not
change.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L

#: Per module class name: old setting -> where it lives now.
MOVED_SETTINGS: dict[str, dict[str, str]] = {
    "ContextForcingModule": {
        "student_init": "init_from",
        "teacher": "teacher.init_from",
        "teacher_backbone": "teacher.backbone",
        "teacher_overrides": "teacher.backbone_overrides",
        "teacher_context": "teacher.context",
        "teacher_context_frames": "teacher.context_frames",
        "short_teacher": "teacher.context: last_n",
        "context_positions": "teacher.context_positions",
        "context_timestep": "teacher.context_timestep",
        "guidance_scale": "teacher.guidance_scale",
        "guidance_form": "teacher.guidance_form",
        "negative_prompt": "teacher.negative_prompt",
        "critic_init": "critic.init_from",
        "min_rollout_chunks": "rollout.min_chunks",
        "max_rollout_chunks": "rollout.max_chunks",
        "curriculum_steps": "rollout.curriculum_steps",
        "target_chunks": "rollout.target_chunks",
        "revisit_targets": "rollout.revisit_targets",
        "generator_optimizer": "optimization.generator_optimizer",
        "critic_optimizer": "optimization.critic_optimizer",
        "generator_lr_scheduler": "optimization.generator_lr_scheduler",
        "critic_lr_scheduler": "optimization.critic_lr_scheduler",
        "generator_every": "optimization.generator_every",
        "accumulate": "optimization.accumulate",
        "grad_clip": "optimization.grad_clip",
        "schedule_unit": "optimization.schedule_unit",
        "ema_decay": "optimization.ema_decay",
        "ema_start": "optimization.ema_start",
    },
    "StudentModule": {
        "teacher": "teacher.init_from",
        "teacher_backbone": "teacher.backbone",
        "teacher_overrides": "teacher.backbone_overrides",
    },
    "TeacherModule": {"context_modes": "contexts (with memory for policy)"},
}


def moved_in(hparams: Mapping[str, Any], module: str) -> list[str]:
    """The old names ``hparams`` of a ``module`` (class name) checkpoint records. A ``teacher`` that is
    a group (a mapping or dataclass) is the new form; a path or ``None`` the old one."""
    moved = MOVED_SETTINGS.get(module, {})
    group = hparams.get("teacher")
    grouped_teacher = isinstance(group, Mapping) or hasattr(group, "__dataclass_fields__")
    return [name for name in moved if name in hparams and not (name == "teacher" and grouped_teacher)]


def check_settings(hparams: Mapping[str, Any], module: str, source: str) -> None:
    """Refuse hyper-parameters of a ``module`` checkpoint that use names from before the change, naming
    each with its new place."""
    moved = moved_in(hparams, module)
    if moved:
        renames = ", ".join(f"{name} -> {MOVED_SETTINGS[module][name]}" for name in moved)
        raise ValueError(
            f"{source} records {module} settings under old names, which the module no longer reads: "
            f"{renames}. Its weights still load (cf-gen, cf-eval and cf-export read only the backbone "
            "settings); to train or score it as a module, start a new run from its weights with "
            "model.init_args.init_from"
        )


def check_checkpoint_settings(path: str | Path) -> None:
    """:func:`check_settings` for the module class a ``.ckpt`` records (``_class_path``); checkpoints of
    other modules, or that record none, pass."""
    from cf_lightning.stages.common import read_lightning_checkpoint

    hparams = read_lightning_checkpoint(path).get("hyper_parameters") or {}
    module = str(hparams.get("_class_path", "")).rpartition(".")[2]
    check_settings(hparams, module, str(path))


class RefusesMovedSettings(L.LightningModule):
    """``load_from_checkpoint`` checks the checkpoint's settings first (:func:`check_settings`)."""

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args: Any,  # type: ignore[override]
                             **kwargs: Any) -> Any:
        from cf_lightning.stages.common import read_lightning_checkpoint

        hparams = read_lightning_checkpoint(checkpoint_path).get("hyper_parameters") or {}
        check_settings(hparams, cls._settings_name(), str(checkpoint_path))
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    @classmethod
    def _settings_name(cls) -> str:
        """The stage whose settings this class takes (subclasses of a stage take its settings)."""
        for base in cls.__mro__:
            if base.__name__ in MOVED_SETTINGS:
                return base.__name__
        return cls.__name__
