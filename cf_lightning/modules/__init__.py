"""LightningModules for each stage; importing this makes their class names resolve in YAML."""

from cf_lightning.modules.distill import ContextForcingModule
from cf_lightning.modules.student import StudentModule
from cf_lightning.modules.teacher import TeacherModule

__all__ = ["ContextForcingModule", "StudentModule", "TeacherModule"]
