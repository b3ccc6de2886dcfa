"""cf-eval end to end: prompts x seeds through the generation seam, or a folder of mp4s, to the paper's
tables, per-timestamp curves and TensorBoard scalars with an HParams row."""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import metadata

from cf_lightning.cli.evaluate import main as cf_eval
from cf_lightning.cli.evaluate import option_value, read_prompts
from cf_lightning.data.video_write import write_mp4
from cf_lightning.eval_report import SystemResult, markdown_tables
from cf_lightning.eval_report import main as compare
from tests.metrics.tiny_models import tiny_clip, tiny_dinov2
from tests.test_generate import WORLD, tiny_checkpoint

SHORT = ["--timestamps", "0.5,1,1.5", "--width", "0.25", "--revisit_buckets", "0,2,4,8"]  # 8 fps, 16 frames


def trained_checkpoint(tmp_path):
    """A tiny checkpoint that carries the data settings cf-fit saves (world, pixel codec, hash text)."""
    checkpoint = tiny_checkpoint(tmp_path)
    saved = torch.load(checkpoint, weights_only=False)
    saved["datamodule_hyper_parameters"] = {
        "codec": "pixel",
        "codec_options": {"patch": 4},
        "text_encoder": "hash",
        "text_encoder_options": None,
        "world": WORLD,
    }
    torch.save(saved, checkpoint)
    return checkpoint


def test_two_prompts_two_seeds_give_the_papers_tables_curves_and_tensorboard(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "the camera circles in a loop", "category": "loop"}\n\n'
                       '{"prompt": "the camera wanders"}\n')
    out = tmp_path / "eval"
    cf_eval(
        [
            "--checkpoint",
            str(trained_checkpoint(tmp_path)),
            "--prompts",
            str(prompts),
            "--seeds",
            "0",
            "1",
            "--gen_fps",
            "8",
            "--dinov2",
            str(tiny_dinov2(tmp_path / "dinov2")),
            "--clip",
            str(tiny_clip(tmp_path / "clip")),
            "--out",
            str(out),
            "--name",
            "tiny",
            *SHORT,
            "--",
            "--memory",
            '{"class_path": "sliding_window", "init_args": {"sink": 1, "window": 4}}',
        ]
    )
    videos = sorted(p.name for p in (out / "videos").glob("*.mp4"))
    assert videos == ["p000_s0.mp4", "p000_s1.mp4", "p001_s0.mp4", "p001_s1.mp4"]
    assert (out / "videos" / "p001_s0.txt").read_text() == "the camera wanders"
    result = SystemResult.load(out / "scores.json")
    assert result.timestamps == [0.5, 1.0, 1.5] and len(result.videos) == 4
    assert all(len(v) == 3 for v in result.series.values()) and "clip_t" in result.series
    assert {"quality_drift", "fps", "effective_context", "revisit_auc"} <= set(result.scalars)
    table = (out / "table.md").read_text()
    assert "| tiny | DINOv2 (to first frame) |" in table and "| tiny | CLIP-T (text-frame) |" in table
    assert "| system | metric | 0.5s | 1s | 1.5s |" in table and "effective context" in table
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"

    runs = EventMultiplexer()
    runs.AddRunsFromDirectory(str(out))
    runs.Reload()
    (run,) = runs.Runs()
    scalars = runs.GetAccumulator(run).Tags()["scalars"]
    assert {
        "eval/dino_first/0.5s",
        "eval/clip_t/1.5s",
        "eval/effective_context",
        "eval_curve/subject",
    } <= set(scalars)
    content = runs.PluginRunToTagToContent(metadata.PLUGIN_NAME)[run]
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["eval/system"].string_value == "tiny"
    assert start.hparams["memory/policy"].string_value == "SlidingWindow"  # what generated, not what trained
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    assert "eval/dino_first/1s" in {m.name.tag for m in experiment.metric_infos}


def still(color: tuple[float, float, float], frames: int = 16) -> torch.Tensor:
    video = torch.zeros(frames, 3, 16, 16, dtype=torch.uint8)
    video[:] = torch.tensor([round(c * 255) for c in color], dtype=torch.uint8).view(3, 1, 1)
    video[:, :, 4:8, 4:12] = 255 - video[:, :, 4:8, 4:12]  # some layout, so features see structure
    return video


def test_a_folder_of_mp4s_is_scored_per_timestamp_with_the_cut_where_it_is(tmp_path):
    folder = tmp_path / "samples"
    write_mp4(folder / "static.mp4", still((0.2, 0.6, 0.3)), fps=8)
    cut = still((0.2, 0.6, 0.3))
    cut[10:] = still((0.9, 0.1, 0.7), 6)  # between the 1 s window (frames 7-8) and the 1.5 s one (11-12)
    write_mp4(folder / "cut.mp4", cut, fps=8)
    cf_eval(["--videos", str(folder), "--dinov2", "pixel_stats", "--out", str(tmp_path / "out"), *SHORT])
    result = SystemResult.load(tmp_path / "out" / "scores.json")
    assert result.name == "samples" and result.videos == ["cut.mp4", "static.mp4"]
    first = result.series["dino_first"]
    assert first[0] == pytest.approx(1.0, abs=1e-3) and first[1] == pytest.approx(1.0, abs=1e-3)
    assert first[2] < 0.9  # the mean of 1 (static) and the cut video's drop
    assert "clip_t" not in result.series and "effective_context" not in result.scalars
    assert result.scalars["quality_drift"] == pytest.approx(0.0, abs=1e-2)


def test_saved_scores_compare_side_by_side_only_at_the_same_timestamps(tmp_path):
    series = {"dino_first": [1.0, 0.5], "subject": [0.9, 0.8]}
    first = SystemResult("a", [10.0, 20.0], series, {"quality_drift": 0.1})
    second = SystemResult("b", [10.0, 20.0], {"dino_first": [0.9, 0.9]}, {"quality_drift": 0.0, "fps": 17.0})
    compare(
        [str(first.save(tmp_path / "a")), str(second.save(tmp_path / "b")), "--out", str(tmp_path / "both")]
    )
    table = (tmp_path / "both" / "table.md").read_text()
    assert "| a | DINOv2 (to first frame) | 1.0000 | 0.5000 |" in table
    assert "| b | DINOv2 (to first frame) | 0.9000 | 0.9000 |" in table
    assert "| a | 0.9000 | 0.8000 | 0.1000 | - |" in table and "| b | - | - | 0.0000 | 17.0000 |" in table
    assert (tmp_path / "both" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="different timestamps"):
        markdown_tables([first, SystemResult("c", [5.0], {"dino_first": [1.0]}, {})])


def test_world_overrides_reach_the_revisit_sidecar_in_either_spelling():
    assert option_value(["--memory", "x", "--world", '{"a": 1}'], "--world") == '{"a": 1}'
    assert option_value(['--world={"a": 1}'], "--world") == '{"a": 1}'
    assert option_value(["--worlds", "x"], "--world") is None


def test_inputs_are_checked_by_name(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("a cat\n\n a dog \n")
    assert read_prompts(text) == ["a cat", "a dog"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a cat"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_prompts(bad)
    with pytest.raises(SystemExit):
        cf_eval(["--videos", str(tmp_path), "--out", str(tmp_path / "o")])  # no feature network named
    with pytest.raises(SystemExit):
        cf_eval(
            [
                "--videos",
                str(tmp_path),
                "--dinov2",
                "pixel_stats",
                "--out",
                str(tmp_path / "o"),
                "--",
                "--seed",
                "1",
            ]
        )
    with pytest.raises(FileNotFoundError, match="no .mp4 files"):
        cf_eval(["--videos", str(tmp_path), "--dinov2", "pixel_stats", "--out", str(tmp_path / "o")])
    mixed = tmp_path / "mixed"
    write_mp4(mixed / "a.mp4", still((0.5, 0.5, 0.5)), fps=8)
    write_mp4(mixed / "b.mp4", still((0.5, 0.5, 0.5)), fps=4)
    with pytest.raises(ValueError, match="b.mp4 has 4.0 fps, a.mp4 8.0; pass --fps"):
        cf_eval(["--videos", str(mixed), "--dinov2", "pixel_stats", "--out", str(tmp_path / "o"), *SHORT])
    folder = tmp_path / "short"
    write_mp4(folder / "one_second.mp4", still((0.5, 0.5, 0.5), 8), fps=8)
    with pytest.raises(ValueError, match=r"no frame in the windows at \[20.0, 30.0"):
        cf_eval(["--videos", str(folder), "--dinov2", "pixel_stats", "--out", str(tmp_path / "o"),
                 "--timestamps", "0.5,20,30"])


def test_clip_t_without_a_prompt_sidecar_is_named(tmp_path):
    folder = tmp_path / "samples"
    write_mp4(folder / "a.mp4", still((0.5, 0.5, 0.5)), fps=8)
    with pytest.raises(ValueError, match="CLIP-T needs the prompt of a.mp4: put it in a.txt"):
        cf_eval(
            [
                "--videos",
                str(folder),
                "--clip",
                str(tiny_clip(tmp_path / "clip")),
                "--out",
                str(tmp_path / "o"),
                *SHORT,
            ]
        )
    (folder / "a.txt").write_text("a grey square")
    cf_eval(
        [
            "--videos",
            str(folder),
            "--clip",
            str(tiny_clip(tmp_path / "clip2")),
            "--out",
            str(tmp_path / "o"),
            *SHORT,
        ]
    )
    assert json.loads((tmp_path / "o" / "scores.json").read_text())["series"]["clip_t"]
