"""Lightning callbacks: resumable checkpoints, TensorBoard ablation dashboards and long-video writing."""

from cf_lightning.callbacks.checkpointing import RunCheckpoint
from cf_lightning.callbacks.tensorboard import AblationDashboard, gif_summary, log_ablation_hparams, log_video
from cf_lightning.callbacks.video import LongVideoWriter

__all__ = [
    "AblationDashboard",
    "LongVideoWriter",
    "RunCheckpoint",
    "gif_summary",
    "log_ablation_hparams",
    "log_video",
]
