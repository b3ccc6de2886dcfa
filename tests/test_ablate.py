"""`cf-ablate` on a tiny config: TensorBoard's own reader finds each policy's hparams and metrics."""

from __future__ import annotations

import json
import sys

import pytest
import yaml
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import metadata
from tensorboard.plugins.hparams.backend_context import _sort_and_reduce_to_hparams_limit

from cf_lightning.cli.ablate import load_variants
from cf_lightning.cli.ablate import main as ablate
from cf_lightning.cli.fit import main as cf_fit
from cf_lightning.cli.generate import parse_policy
from cf_lightning.eval_report import SystemResult
from tests.cli_helpers import RECIPES, TINY_DISTILL


def test_tiny_ablation_logs_hparams_and_metrics_per_policy(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cf-ablate"])
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the camera circles through 4 places in a loop, returning to each in turn\n")
    evaluation = (f"--eval=--prompts {prompts} --seeds 0 --dinov2 pixel_stats --gen_fps 8 --frames 16 "
                  "--timestamps 0.5,1,1.5 --width 0.25 --revisit_buckets 0,2,4,8 -- --raw")
    variants = tmp_path / "variants.yaml"
    variants.write_text(
        "slow_fast: []\n"
        'sliding_window: [--model.memory, sliding_window, --model.memory.init_args.sink, "2",'
        ' --model.memory.init_args.window, "8", --model.memory.init_args.rope_length, "10"]\n'
    )
    ablate(
        [
            "--config",
            str(RECIPES / "slowfast.yaml"),
            "--variants",
            str(variants),
            "--save_dir",
            str(tmp_path),
            "--name",
            "abl",
            evaluation,
            *TINY_DISTILL,
            "--trainer.max_steps",
            "2",
            "--trainer.val_check_interval",
            "1",
            "--trainer.callbacks",
            (
                "[{class_path: cf_lightning.callbacks.AblationDashboard, init_args: "
                "{metric_tags: [val/effective_context, train/dmd_loss]}}]"
            ),
        ]
    )
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
    # cf-eval of every variant's final checkpoint: its own run with an HParams row, and side-by-side tables
    assert "eval/quality_drift" in table and "eval/effective_context" in table
    for run in ("slow_fast", "sliding_window"):
        content = runs.PluginRunToTagToContent(metadata.PLUGIN_NAME)[f"{run}/eval"]
        start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        assert start.hparams["eval/system"].string_value == run
        assert start.hparams["memory/policy"].string_value == policies[run]
        assert SystemResult.load(tmp_path / "abl" / run / "eval" / "scores.json").timestamps == [
            0.5,
            1.0,
            1.5,
        ]
    evaluation_table = (tmp_path / "abl" / "evaluation.md").read_text()
    assert "| slow_fast | DINOv2 (to first frame) |" in evaluation_table
    assert "| sliding_window | DINOv2 (to first frame) |" in evaluation_table
    assert (tmp_path / "abl" / "evaluation_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_variant_files_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("slow_fast: --model.memory\n")
    with pytest.raises(TypeError, match="slow_fast"):
        load_variants(bad)


TABLE3_CHANGES = {
    "context_forcing": {},
    "uniform_every_chunk": {"memory.init_args.admission": "uniform", "memory.init_args.interval": 1},
    "uniform_every_2_chunks": {"memory.init_args.admission": "uniform", "memory.init_args.interval": 2},
    "no_contextual_dmd": {"teacher.context": "none"},
    "no_bounded_positions": {"memory.init_args.position_mode": "absolute",
                             "teacher.context_positions": "absolute"},
}


def printed_model(overrides: list[str], capsys) -> dict:
    with pytest.raises(SystemExit):
        cf_fit(["fit", "--config", str(RECIPES / "slowfast.yaml"), *overrides, "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("variant", sorted(TABLE3_CHANGES))
def test_table3_variant_parses_and_changes_only_its_ingredient(variant, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cf-fit"])
    variants = load_variants(RECIPES / "ablations" / "table3.yaml")
    assert sorted(variants) == sorted(TABLE3_CHANGES)
    base, changed = flat(printed_model([], capsys)), flat(printed_model(variants[variant], capsys))
    expected = TABLE3_CHANGES[variant]
    assert {k: changed[k] for k in expected} == expected
    assert {k for k, v in changed.items() if base.get(k) != v} <= set(expected)  # nothing else changes
    model = printed_model(variants[variant], capsys)
    policy = parse_policy(json.dumps(model["memory"]))
    policy.new_state(model["chunk_frames"])  # the policy accepts its budget with these positions
