"""Lightning callbacks: TensorBoard ablation dashboards (HParams columns, GIF samples)."""

from cf_lightning.callbacks.tensorboard import AblationDashboard, gif_summary, log_ablation_hparams, log_video

__all__ = ["AblationDashboard", "gif_summary", "log_ablation_hparams", "log_video"]
