"""cf-eval through the text-to-video path: prompts x seeds -> UMT5 -> streaming student -> Wan VAE -> mp4s,
scored per timestamp with CLIP-T against each video's own prompt."""

from __future__ import annotations

from cf_lightning.cli.evaluate import main as cf_eval
from cf_lightning.eval_report import SystemResult
from tests.metrics.tiny_models import tiny_clip

SIZE, FRAMES = 32, 6  # 6 latent frames decode to 21 pixel frames: 1.3 s at 16 fps


def test_prompts_and_seeds_of_a_text_to_video_student_are_generated_and_scored(
    student_run, wan_release, tmp_path
):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a calm lake at dawn\na fox runs through snow\n")
    out = tmp_path / "eval"
    cf_eval(["--checkpoint", str(student_run), "--prompts", str(prompts), "--seeds", "0", "1",
             "--dinov2", "pixel_stats", "--clip", str(tiny_clip(tmp_path / "clip")), "--timestamps", "0.5,1",
             "--width", "0.25", "--out", str(out), "--name", "t2v",
             "--", "--umt5", str(wan_release), "--vae", str(wan_release), "--frames", str(FRAMES),
             "--height", str(SIZE), "--width", str(SIZE)])
    assert sorted(p.name for p in (out / "videos").glob("*.mp4")) == [
        f"p00{p}_s{s}.mp4" for p in (0, 1) for s in (0, 1)
    ]
    assert not list((out / "videos").glob("*.first_visit.json"))  # no revisit world, no effective context
    result = SystemResult.load(out / "scores.json")
    assert result.timestamps == [0.5, 1.0] and {"dino_first", "clip_t", "subject"} <= set(result.series)
    assert "effective_context" not in result.scalars and result.scalars["fps"] > 0
    assert "| t2v | CLIP-T (text-frame) |" in (out / "table.md").read_text()
