"""`cf-ablate` on a tiny config: TensorBoard's own reader finds each policy's hparams and metrics."""

from __future__ import annotations

import sys

import pytest
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import metadata
from tensorboard.plugins.hparams.backend_context import _sort_and_reduce_to_hparams_limit

from cf_lightning.ablate import load_variants
from cf_lightning.ablate import main as ablate
from tests.cli_helpers import RECIPES, TINY_DISTILL


def test_tiny_ablation_logs_hparams_and_metrics_per_policy(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cf-ablate"])
    variants = tmp_path / "variants.yaml"
    variants.write_text('slow_fast: []\n'
                        'sliding_window: [--model.memory, sliding_window, --model.memory.init_args.sink, "2",'
                        ' --model.memory.init_args.window, "8", --model.memory.init_args.rope_length, "10"]\n')
    ablate(["--config", str(RECIPES / "slowfast.yaml"), "--variants", str(variants), "--save_dir", str(tmp_path),
            "--name", "abl", *TINY_DISTILL, "--trainer.max_steps", "2", "--trainer.val_check_interval", "1",
            "--trainer.callbacks", ("[{class_path: cf_lightning.callbacks.AblationDashboard, init_args: "
            "{metric_tags: [val/effective_context, train/dmd_loss]}}]")])
    runs = EventMultiplexer()
    runs.AddRunsFromDirectory(str(tmp_path / "abl"))
    runs.Reload()
    policies = {}
    for run in ("slow_fast", "sliding_window"):
        content = runs.PluginRunToTagToContent(metadata.PLUGIN_NAME)[run]
        start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        policies[run] = start.hparams["memory/policy"].string_value
        experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
        assert {m.name.tag for m in experiment.metric_infos} == {"val/effective_context", "train/dmd_loss"}
        # the columns an ablation is about lead TensorBoard's order (differing first, then by name)
        _sort_and_reduce_to_hparams_limit(experiment, hparams_limit=5)
        assert [info.name for info in experiment.hparam_infos][:2] == ["memory/policy", "teacher/context"]
        scalars = runs.GetAccumulator(run).Tags()["scalars"]
        assert {"val/effective_context", "train/dmd_loss"} <= set(scalars)
    assert policies == {"slow_fast": "SlowFast", "sliding_window": "SlidingWindow"}
    table = (tmp_path / "abl" / "comparison.md").read_text()
    assert "| slow_fast |" in table and "| sliding_window |" in table
    assert (tmp_path / "abl" / "revisit_error.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_variant_files_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("slow_fast: --model.memory\n")
    with pytest.raises(TypeError, match="slow_fast"):
        load_variants(bad)
