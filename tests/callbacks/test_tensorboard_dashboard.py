"""Ablation dashboards read back with TensorBoard's own event reader and HParams metadata parser."""

from __future__ import annotations

import io

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import metadata
from tensorboard.plugins.hparams.backend_context import _sort_and_reduce_to_hparams_limit

from cf_lightning.callbacks import AblationDashboard, gif_summary, log_ablation_hparams, log_video
from cf_lightning.callbacks.tensorboard import LEAD_COLUMNS
from cf_lightning.stages import ContextForcingModule

POLICIES = {"SlowFast": 0.25, "SlidingWindow": 0.75}  # policy -> its fake val/recon


def read_runs(root) -> EventMultiplexer:
    multiplexer = EventMultiplexer(size_guidance={"images": 0, "scalars": 0})
    multiplexer.AddRunsFromDirectory(str(root))
    multiplexer.Reload()
    return multiplexer


def hparams_of(multiplexer: EventMultiplexer, run: str) -> tuple[dict, list[str]]:
    """The run's HParams columns and declared metric tags, parsed as the HParams plugin does."""
    content = multiplexer.PluginRunToTagToContent(metadata.PLUGIN_NAME)[run]
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    columns = {key: getattr(value, value.WhichOneof("kind")) for key, value in start.hparams.items()}
    return columns, [info.name.tag for info in experiment.metric_infos]


def test_two_runs_with_different_policies_are_found_with_their_metrics(tmp_path):
    for policy, recon in POLICIES.items():
        logger = TensorBoardLogger(tmp_path, name="ablation", default_hp_metric=False)
        log_ablation_hparams(logger, {"memory/policy": policy, "memory/budget": 8, "ema": True},
                             ["val/recon", "eval/effective_context"],
                             hparam_domain_discrete={"memory/policy": list(POLICIES)})
        logger.log_metrics({"val/recon": recon, "eval/effective_context": 16.0}, step=3)
        logger.finalize("success")
    multiplexer = read_runs(tmp_path / "ablation")
    assert sorted(multiplexer.Runs()) == ["version_0", "version_1"]
    for run, (policy, recon) in zip(["version_0", "version_1"], POLICIES.items()):
        columns, metric_tags = hparams_of(multiplexer, run)
        assert columns == {"memory/policy": policy, "memory/budget": 8.0, "ema": True}
        assert metric_tags == ["val/recon", "eval/effective_context"]
        [event] = multiplexer.Scalars(run, "val/recon")
        assert (event.step, event.value) == (3, recon)


def test_bad_hparams_are_named(tmp_path):
    logger = TensorBoardLogger(tmp_path, default_hp_metric=False)
    with pytest.raises(TypeError, match=r"'memory' = \{'sink': 3\} has type dict"):
        log_ablation_hparams(logger, {"memory": {"sink": 3}}, ["val/recon"])
    with pytest.raises(ValueError, match="distinct non-empty"):
        log_ablation_hparams(logger, {"memory/policy": "SlowFast"}, ["val/recon", "val/recon"])
    with pytest.raises(ValueError, match=r"names \['policy'\]"):
        log_ablation_hparams(logger, {"memory/policy": "SlowFast"}, ["val/recon"], {"policy": ["SlowFast"]})
    with pytest.raises(TypeError, match="got CSVLogger"):
        log_ablation_hparams(CSVLogger(tmp_path), {"memory/policy": "SlowFast"}, ["val/recon"])


def test_gif_summary_is_an_animated_gif():
    frames = torch.rand(5, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    image = gif_summary("rollout", frames, fps=4).value[0].image
    assert image.encoded_image_string.startswith(b"GIF89a")
    assert (image.height, image.width, image.colorspace) == (8, 10, 3)
    gif = Image.open(io.BytesIO(image.encoded_image_string))
    assert gif.n_frames == 5 and gif.info["duration"] == 250
    grey = gif_summary("rollout", frames[:, :1], fps=4).value[0].image
    assert grey.colorspace == 1 and grey.encoded_image_string.startswith(b"GIF89a")
    with pytest.raises(ValueError, match=r"\[T, C, H, W\].*got shape \(3, 8, 10\)"):
        gif_summary("rollout", frames[0], fps=4)
    with pytest.raises(ValueError, match="fps must be > 0, got 0"):
        gif_summary("rollout", frames, fps=0)


def test_log_video_reads_back_as_gif(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="videos", default_hp_metric=False)
    log_video(logger, "rollout/gif", torch.rand(3, 3, 8, 8), step=7, fps=8)
    logger.finalize("success")
    [event] = read_runs(tmp_path / "videos").Images("version_0", "rollout/gif")
    assert event.step == 7 and event.encoded_image_string.startswith(b"GIF89a")


class TinyModule(pl.LightningModule):
    """One linear layer and no dashboard hooks."""

    def __init__(self, recon: float) -> None:
        super().__init__()
        self.recon = recon
        self.layer = torch.nn.Linear(4, 4)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch).pow(2).mean()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val/recon", self.recon)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.rand(8, 4), batch_size=2)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.rand(2, 4), batch_size=2)


class TinyAblation(TinyModule):
    """Declares its ablation columns and renders a tiny sample video."""

    def __init__(self, policy: str, recon: float) -> None:
        super().__init__(recon)
        self.policy = policy

    def ablation_hparams(self) -> dict[str, str | int]:
        return {"memory/policy": self.policy, "memory/budget": 8}

    def sample_video(self) -> torch.Tensor:
        return torch.sigmoid(self.layer(torch.ones(6, 3, 4, 4)))


def fit(module: pl.LightningModule, root, callback: AblationDashboard) -> None:
    trainer = pl.Trainer(
        max_steps=4,
        logger=TensorBoardLogger(root, name="ablation", default_hp_metric=False),
        callbacks=[callback],
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(module)


def test_dashboard_callback_logs_hparams_and_samples_for_each_run(tmp_path):
    for policy, recon in POLICIES.items():
        fit(TinyAblation(policy, recon), tmp_path, AblationDashboard(["val/recon"], sample_every_n_steps=2))
    multiplexer = read_runs(tmp_path / "ablation")
    for run, (policy, recon) in zip(["version_0", "version_1"], POLICIES.items()):
        columns, metric_tags = hparams_of(multiplexer, run)
        assert columns == {"memory/policy": policy, "memory/budget": 8.0}
        assert metric_tags == ["val/recon"]
        assert multiplexer.Scalars(run, "val/recon")[-1].value == recon
        samples = multiplexer.Images(run, "samples/video")
        assert [event.step for event in samples] == [2, 4]
        assert all(event.encoded_image_string.startswith(b"GIF89a") for event in samples)


def test_dashboard_skips_modules_without_hooks_and_warns_without_tensorboard(tmp_path):
    fit(TinyModule(0.5), tmp_path, AblationDashboard(["val/recon"], sample_every_n_steps=1))
    multiplexer = read_runs(tmp_path / "ablation")
    assert "version_0" not in multiplexer.PluginRunToTagToContent(metadata.PLUGIN_NAME)
    assert multiplexer.Runs()["version_0"]["images"] == []
    trainer = pl.Trainer(
        max_steps=1,
        logger=CSVLogger(tmp_path),
        callbacks=[AblationDashboard(["val/recon"])],
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    with pytest.warns(UserWarning, match="no TensorBoardLogger"):
        trainer.fit(TinyAblation("SlowFast", 0.5))


def shown_columns(root, run: str) -> list[str]:
    """The columns TensorBoard's HParams table shows by default: the backend's order (differing columns
    first, then by name), cut to the five the table displays."""
    content = read_runs(root).PluginRunToTagToContent(metadata.PLUGIN_NAME)[run]
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    _sort_and_reduce_to_hparams_limit(experiment, hparams_limit=5)
    return [info.name for info in experiment.hparam_infos]


def test_the_columns_an_ablation_is_about_come_first_and_are_shown(tmp_path):
    hparams = ContextForcingModule().ablation_hparams()
    assert sorted(hparams).index("teacher/context") >= 5, "alphabetically the column would be hidden"
    for version, lead in (("plain", []), ("led", list(LEAD_COLUMNS))):
        logger = TensorBoardLogger(tmp_path, name="ablation", version=version, default_hp_metric=False)
        log_ablation_hparams(logger, hparams, ["val/revisit_auc"], lead=lead)
        logger.finalize("success")
        written = metadata.parse_experiment_plugin_data(
            read_runs(tmp_path / "ablation").PluginRunToTagToContent(metadata.PLUGIN_NAME)[version][
                metadata.EXPERIMENT_TAG])
        assert [info.name for info in written.hparam_infos][:len(lead)] == lead
    assert "teacher/context" not in shown_columns(tmp_path / "ablation", "plain")
    assert shown_columns(tmp_path / "ablation", "led")[:2] == ["memory/policy", "teacher/context"]
    with pytest.raises(ValueError, match=r"lead columns \['memory/nope'\] are not in hparams"):
        log_ablation_hparams(logger, hparams, ["val/revisit_auc"], lead=["memory/nope"])
