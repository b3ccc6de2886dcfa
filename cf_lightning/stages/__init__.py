"""LightningModules for each stage; importing this makes their class names resolve in YAML. The
stage-2 module's grouped settings are exported beside it."""

from cf_lightning.stages.distill import ContextForcingModule
from cf_lightning.stages.distill_config import CriticConfig, OptimizationConfig, RolloutConfig, TeacherConfig
from cf_lightning.stages.student import StudentModule
from cf_lightning.stages.teacher import TeacherModule

__all__ = [
    "ContextForcingModule",
    "CriticConfig",
    "OptimizationConfig",
    "RolloutConfig",
    "StudentModule",
    "TeacherConfig",
    "TeacherModule",
]
