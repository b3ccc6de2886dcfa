"""Text-to-long-video end to end on tiny real-architecture stand-ins of a Wan2.1 release."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from cf_lightning.cli.export import main as cf_export
from cf_lightning.cli.generate import main as cf_gen
from cf_lightning.codecs import build_codec
from cf_lightning.inference import (
    ChunkEvent,
    GenerationInterrupted,
    generate_video,
    get_preset,
    load_generator,
    read_prompt_switches,
    text_conditions,
)
from cf_lightning.models.checkpoint import load_wan, save_wan
from cf_lightning.text import build_text_encoder

RECIPES = Path(__file__).parents[2] / "recipes"

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

SIZE = 32  # pixels; the stand-in VAE is 8x spatial, so 4x4 latents
FRAMES = 6  # latent frames: 3 chunks of the run's 2 frames
PIXEL_FRAMES = 1 + 4 * (FRAMES - 1)  # the causal VAE decodes frame 0 alone, then 4 frames per latent frame


def three_prompts(folder: Path) -> Path:
    path = folder / "switches.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in [
        {"prompt": "a calm lake at dawn", "start_frame": 0},
        {"prompt": "the camera pans to a forest", "start_frame": 2},
        {"prompt": "then rain starts falling on city streets", "start_frame": 4}]) + "\n")
    return path


def release_args(wan_release: Path) -> list[str]:
    """`cf-gen` arguments shared by the text-to-video tests: the stand-in release's UMT5 and VAE, the length
    and the frame size."""
    return ["--umt5", str(wan_release), "--vae", str(wan_release), "--frames", str(FRAMES),
            "--height", str(SIZE), "--width", str(SIZE)]


def video_facts(path: Path) -> tuple[int, float, int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(video=0))
        return frames, float(stream.average_rate), stream.width, stream.height


def test_cf_gen_from_a_copied_checkpoint_in_another_folder(student_run, wan_release, tmp_path, monkeypatch):
    """The run's student init file is gone and the checkpoint sits elsewhere: only the backbone is
    rebuilt, from the checkpoint's own hyper-parameters."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(student_run, elsewhere / "copied.ckpt")
    prompts = three_prompts(elsewhere)
    monkeypatch.chdir(elsewhere)
    cf_gen(["--checkpoint", "copied.ckpt", "--out", "out", "--prompts", prompts.name,
            *release_args(wan_release)])
    assert video_facts(elsewhere / "out" / "video.mp4") == (PIXEL_FRAMES, 16.0, SIZE, SIZE)
    latents = np.load(elsewhere / "out" / "latents.npy")
    assert latents.shape == (4, FRAMES, 4, 4) and np.isfinite(latents).all()
    # the mp4 is the decode of those latents
    codec = build_codec("wan", path=str(wan_release))
    with torch.no_grad():
        pixels = codec.decode(torch.from_numpy(latents)[None])
    assert pixels.shape == (1, 3, PIXEL_FRAMES, SIZE, SIZE)

    cf_export(["copied.ckpt", "exported.safetensors"])
    exported = load_wan(elsewhere / "exported.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(),
                                                load_generator("copied.ckpt").model.state_dict().values()))


@pytest.mark.parametrize("layout", ["wan", "diffusers", "self_forcing"])
def test_every_wan_layout_generates_the_same_video(student_run, wan_release, tmp_path, layout):
    """The same weights in each published layout, run with a named preset, give the same latents."""
    model = load_generator(student_run).model
    if layout == "self_forcing":
        weights = tmp_path / "student.pt"
        torch.save({"generator": {f"model.{k}": v for k, v in model.state_dict().items()}}, weights)
    else:
        weights = save_wan(model, tmp_path / layout, layout=layout)
    config = ["--config", "tiny"] if layout == "self_forcing" else []  # a .pt carries no config
    args = ["--prompt", "a calm lake at dawn", "--preset", "self_forcing", *release_args(wan_release)]
    cf_gen(["--checkpoint", str(weights), "--out", str(tmp_path / "out"), *config, *args])
    cf_gen(["--checkpoint", str(student_run), "--out", str(tmp_path / "run"), *args])
    ours, reference = np.load(tmp_path / "out" / "latents.npy"), np.load(tmp_path / "run" / "latents.npy")
    assert ours.shape == (4, FRAMES, 4, 4)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_an_interrupted_generation_leaves_every_finished_frame(student_run, wan_release, tmp_path):
    """SIGTERM delivered by the process to itself after chunk 1 (of 3): chunks 0 and 1 are published."""
    generator = load_generator(student_run)
    text = build_text_encoder("umt5", path=str(wan_release))
    conditions = text_conditions(text, read_prompt_switches(three_prompts(tmp_path)), 16)
    codec = build_codec("wan", path=str(wan_release))
    seen: list[int] = []

    def stop_at_second_chunk(event: ChunkEvent) -> None:
        seen.append(event.index)
        assert event.pixels is not None and event.memory.frames_committed == event.start_frame + 2
        if event.index == 1:
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(GenerationInterrupted, match="SIGTERM") as stopped:
        generate_video(generator.model, conditions, tmp_path / "out", preset=generator.preset, codec=codec,
                       num_frames=FRAMES, latent_hw=(4, 4), observer=stop_at_second_chunk)
    assert seen == [0, 1]
    written = stopped.value.written
    assert written is not None and not written.complete and written.latent_frames == 4
    assert video_facts(written.video) == (1 + 4 * 3, 16.0, SIZE, SIZE)
    assert np.load(written.latents).shape == (4, 4, 4, 4)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["latents.npy", "video.mp4"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the handler is restored"
    # the finished part is exactly the first chunks of the uninterrupted video
    full = generate_video(
        generator.model,
        conditions,
        tmp_path / "full",
        preset=generator.preset,
        codec=codec,
        num_frames=FRAMES,
        latent_hw=(4, 4),
    )
    np.testing.assert_array_equal(np.load(written.latents), np.load(full.latents)[:, :4])


def test_presets_run_as_their_references_configure_them():
    assert get_preset("self_forcing").chunk_frames == 3 and get_preset("longlive").memory().sink == 3
    forcing = get_preset("context_forcing")
    assert forcing.sigmas().tolist() == pytest.approx([1.0, 0.9375, 0.8333333, 0.625], abs=1e-6)
    memory = forcing.memory()
    assert (memory.sink, memory.slow, memory.fast, memory.rope_length) == (3, 12, 6, 21)


def test_cf_fit_predict_from_a_copied_checkpoint_in_another_folder(
    student_run, wan_release, tmp_path, monkeypatch
):
    """LightningCLI predict with the predict recipe streams the same video as cf-gen."""
    from cf_lightning.cli.fit import main as cf_fit

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(student_run, elsewhere / "copied.ckpt")
    prompts = three_prompts(elsewhere)
    monkeypatch.chdir(elsewhere)
    cf_fit(["predict", "--config", str(RECIPES / "predict.yaml"), "--ckpt_path", "copied.ckpt",
            "--trainer.accelerator", "cpu", "--data.prompts", prompts.name, "--data.num_frames", str(FRAMES),
            "--data.height", str(SIZE), "--data.width", str(SIZE), "--data.seeds", "[0, 1]",
            "--data.codec.init_args.path", str(wan_release),
            "--data.text_encoder.init_args.path", str(wan_release)])
    assert video_facts(elsewhere / "videos" / "seed_0" / "video.mp4") == (PIXEL_FRAMES, 16.0, SIZE, SIZE)
    predicted = np.load(elsewhere / "videos" / "seed_0" / "latents.npy")
    assert not np.allclose(predicted, np.load(elsewhere / "videos" / "seed_1" / "latents.npy"))
    cf_gen(["--checkpoint", "copied.ckpt", "--out", "gen", "--prompts", prompts.name,
            *release_args(wan_release)])
    np.testing.assert_allclose(predicted, np.load(elsewhere / "gen" / "latents.npy"), atol=1e-6)


def test_cf_gen_exits_with_the_signal_code_and_keeps_the_finished_part(student_run, wan_release, tmp_path,
                                                                     monkeypatch, capsys):
    """Ctrl-C (SIGINT) during cf-gen, delivered after the first chunk: exit status 130, a playable mp4."""
    import cf_lightning.cli.generate as cli

    def interrupt_after_first_chunk(event: ChunkEvent) -> None:
        if event.index == 0:
            signal.raise_signal(signal.SIGINT)

    def interrupted(*args, observer=None, **kwargs):  # keeps cf-gen's own observer (the memory timeline)
        def both(event: ChunkEvent) -> None:
            if observer is not None:
                observer(event)
            interrupt_after_first_chunk(event)

        return generate_video(*args, **kwargs, observer=both)

    monkeypatch.setattr(cli, "generate_video", interrupted)
    with pytest.raises(SystemExit) as stopped:
        cf_gen(["--checkpoint", str(student_run), "--out", str(tmp_path / "out"),
                "--prompt", "a calm lake at dawn", *release_args(wan_release)])
    assert stopped.value.code == 128 + signal.SIGINT
    assert "interrupted by SIGINT: wrote 5 frames" in capsys.readouterr().err
    assert video_facts(tmp_path / "out" / "video.mp4") == (5, 16.0, SIZE, SIZE)
    assert np.load(tmp_path / "out" / "latents.npy").shape == (4, 2, 4, 4)


def test_seconds_become_whole_chunks_of_latent_frames(wan_release):
    from cf_lightning.cli.generate import latent_frames_for

    codec = build_codec("wan", path=str(wan_release))
    # 960 frames: 1 + 240 latent frames, rounded up to chunks
    assert latent_frames_for(60, 16, codec, 3) == 243
    assert latent_frames_for(1, 16, codec, 2) == 6
    assert latent_frames_for(1, 16, build_codec("pixel", patch=4), 2) == 16


def test_cf_gen_in_bfloat16_stays_close_to_float32(student_run, wan_release, tmp_path):
    args = ["--checkpoint", str(student_run), "--prompt", "a calm lake at dawn", *release_args(wan_release)]
    cf_gen([*args, "--out", str(tmp_path / "fp32")])
    cf_gen([*args, "--out", str(tmp_path / "bf16"), "--dtype", "bfloat16"])
    full, half = np.load(tmp_path / "fp32" / "latents.npy"), np.load(tmp_path / "bf16" / "latents.npy")
    assert np.isfinite(half).all() and not np.array_equal(full, half)
    assert np.abs(full - half).max() < 0.1 * np.abs(full).max()
    assert video_facts(tmp_path / "bf16" / "video.mp4") == (PIXEL_FRAMES, 16.0, SIZE, SIZE)
