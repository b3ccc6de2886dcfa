"""TensorBoard ablation dashboards: curated HParams columns and Pillow GIF video summaries.

Lightning's automatic ``log_hyperparams`` logs the nested LightningCLI config (columns such as
``memory/init_args/sink``, disjoint between policies) and writes HParams summaries only together with a
placeholder ``hp_metric``. For ablations we instead write the HParams plugin summaries ourselves, once,
from a flat curated dict with a ``memory/policy`` column, declaring the metric tags that the run logs
normally with ``self.log``. Use ``TensorBoardLogger(default_hp_metric=False)`` so this is the run's only
HParams entry.

Column order: TensorBoard's HParams backend sorts the columns of an experiment summary by
``(not differs, name)``, and its table shows only the first five, so with every column marked alike
an ablation's deciding columns (``memory/policy``, ``teacher/context``) vanish behind alphabetically
earlier ones. The columns named ``lead`` are therefore written first and marked ``differs``, which puts
them first in both the backend's and the table's order.

``SummaryWriter.add_video`` needs ``moviepy<2`` (2.x writes nothing), so videos are written as
animated GIF image summaries, which the Images tab plays.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard.summary import hparams as hparams_summaries

Primitive = bool | int | float | str
#: The columns an ablation of this suite is about, shown first when a module reports them.
LEAD_COLUMNS = ("memory/policy", "teacher/context")


def _check_logger(logger: object) -> TensorBoardLogger:
    if not isinstance(logger, TensorBoardLogger):
        raise TypeError(f"expected a lightning TensorBoardLogger, got {type(logger).__name__}")
    return logger


@rank_zero_only
def log_ablation_hparams(logger: TensorBoardLogger, hparams: Mapping[str, Primitive], metric_tags: Sequence[str],
                         hparam_domain_discrete: Mapping[str, Sequence[Primitive]] | None = None,
                         lead: Sequence[str] = ()) -> None:
    """Write the HParams plugin summaries (experiment, session start, session end) of this run.

    ``hparams`` is flat with primitive values (they become the table's columns); ``metric_tags`` only
    declares which scalar tags of the run the table shows; their values come from ordinary logging.
    ``hparam_domain_discrete`` lists the possible values of categorical columns (e.g. all policies) so
    the HParams filter offers them even before a run of each exists. ``lead`` names the columns that
    tell the runs apart: they come first, in that order, and TensorBoard shows them (module docstring).
    Call it once per run.
    """
    _check_logger(logger)
    if not hparams:
        raise ValueError("hparams is empty: an ablation run needs at least one column, e.g. memory/policy")
    for key, value in hparams.items():
        if not isinstance(value, (bool, int, float, str)):
            raise TypeError(f"hparam {key!r} = {value!r} has type {type(value).__name__}; HParams columns take "
                            "bool, int, float or str (flatten nested values into 'group/name' keys)")
    tags = list(metric_tags)
    if not tags or len(set(tags)) != len(tags) or not all(isinstance(t, str) and t for t in tags):
        raise ValueError(f"metric_tags must be distinct non-empty strings, got {tags}")
    discrete = {key: list(values) for key, values in (hparam_domain_discrete or {}).items()}
    unknown = sorted(set(discrete) - set(hparams))
    if unknown:
        raise ValueError(f"hparam_domain_discrete names {unknown}, which are not in hparams {sorted(hparams)}")
    missing = [key for key in lead if key not in hparams]
    if missing:
        raise ValueError(f"lead columns {missing} are not in hparams {sorted(hparams)}")
    ordered = {**{key: hparams[key] for key in lead}, **hparams}
    experiment, session_start, session_end = hparams_summaries(
        ordered, dict.fromkeys(tags, 0.0), hparam_domain_discrete=discrete or None)
    _mark_lead_columns(experiment, lead)
    writer = logger.experiment._get_file_writer()
    for summary in (experiment, session_start, session_end):
        writer.add_summary(summary)


def _mark_lead_columns(experiment: Summary, lead: Sequence[str]) -> None:
    """Set ``differs`` on the ``lead`` columns of an HParams experiment summary, in place."""
    plugin_data = experiment.value[0].metadata.plugin_data
    content = HParamsPluginData.FromString(plugin_data.content)
    for info in content.experiment.hparam_infos:
        info.differs = info.name in lead
    plugin_data.content = content.SerializeToString()


def gif_summary(tag: str, frames: torch.Tensor, fps: float) -> Summary:
    """An animated GIF image summary of ``frames`` ``[T, C, H, W]`` in [0, 1] with C = 1 or 3."""
    if frames.ndim != 4 or frames.shape[1] not in (1, 3) or frames.shape[0] == 0:
        raise ValueError(f"frames must be [T, C, H, W] with T >= 1 and C in (1, 3), got shape {tuple(frames.shape)}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    pixels = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    images = [Image.fromarray(frame.squeeze(-1).numpy()) for frame in pixels]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(1, round(1000 / fps)), loop=0)
    _, height, width, channels = pixels.shape
    image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=buffer.getvalue())
    return Summary(value=[Summary.Value(tag=tag, image=image)])


@rank_zero_only
def log_video(logger: TensorBoardLogger, tag: str, video: torch.Tensor, step: int, fps: float) -> None:
    """Log ``video`` ``[T, C, H, W]`` in [0, 1] as an animated GIF at ``step`` (rank zero only)."""
    summary = gif_summary(tag, video, fps)
    _check_logger(logger).experiment._get_file_writer().add_summary(summary, global_step=step)


class AblationDashboard(pl.Callback):
    """Makes every run of an ablation a row of TensorBoard's HParams table, optionally with sample videos.

    At fit start, if the LightningModule defines ``ablation_hparams() -> dict[str, primitive]``, its
    columns are written with the declared ``metric_tags``; those of ``lead_columns`` it reports come
    first and are shown by default. With ``sample_every_n_steps``, a module that
    defines ``sample_video() -> [T, C, H, W]`` in [0, 1] has it logged as a GIF every n optimizer steps.
    ``sample_video`` runs on every rank (a sharded model's forward is collective) under ``no_grad``;
    only rank zero writes. Without a TensorBoardLogger the callback warns once and does nothing.
    """

    def __init__(self, metric_tags: Sequence[str],
                 hparam_domain_discrete: Mapping[str, Sequence[Primitive]] | None = None,
                 sample_every_n_steps: int | None = None, sample_tag: str = "samples/video",
                 fps: float = 8.0, lead_columns: Sequence[str] = LEAD_COLUMNS) -> None:
        if sample_every_n_steps is not None and sample_every_n_steps < 1:
            raise ValueError(f"sample_every_n_steps must be >= 1 or None, got {sample_every_n_steps}")
        self.metric_tags = list(metric_tags)
        self.hparam_domain_discrete = hparam_domain_discrete
        self.sample_every_n_steps = sample_every_n_steps
        self.sample_tag = sample_tag
        self.fps = fps
        self.lead_columns = list(lead_columns)
        self._last_sampled_step: int | None = None

    @staticmethod
    def _logger(trainer: pl.Trainer) -> TensorBoardLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = self._logger(trainer)
        if logger is None:
            rank_zero_warn("AblationDashboard found no TensorBoardLogger among the trainer's loggers; "
                           "it logs nothing")
            return
        ablation_hparams = getattr(pl_module, "ablation_hparams", None)
        if callable(ablation_hparams):
            hparams = ablation_hparams()
            lead = [key for key in self.lead_columns if key in hparams]
            log_ablation_hparams(logger, hparams, self.metric_tags, self.hparam_domain_discrete, lead)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        # with gradient accumulation several batches end on the same optimizer step: sample once
        if self.sample_every_n_steps is None or step % self.sample_every_n_steps or step == self._last_sampled_step:
            return
        sample_video = getattr(pl_module, "sample_video", None)
        logger = self._logger(trainer)
        if not callable(sample_video) or logger is None:
            return
        self._last_sampled_step = step
        with torch.no_grad():
            video = sample_video()
        log_video(logger, self.sample_tag, video, step, self.fps)
