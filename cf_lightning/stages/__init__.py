"""LightningModules for each stage; importing this makes their class names resolve in YAML."""

from cf_lightning.stages.distill import ContextForcingModule
from cf_lightning.stages.student import StudentModule
from cf_lightning.stages.teacher import TeacherModule

__all__ = ["ContextForcingModule", "StudentModule", "TeacherModule"]
