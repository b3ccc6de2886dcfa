"""``cf-data trajectories``: teacher ODE trajectories stored as shards, read back by the usual reader."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch

from cf_lightning.cli.data import main
from cf_lightning.data import ShardDataModule, ShardSkipWarning, generate_video, latent_truth
from cf_lightning.data.prompts import load_negative_prompt, save_negative_prompt
from cf_lightning.diffusion import cfg_velocity, denoising_sigmas, euler_sample, sampling_sigmas
from cf_lightning.text import HashTextEncoder
from tests.data.trajectory_shards import (
    CODEC_ARGS,
    TEXT_ARGS,
    TEXT_DIM,
    WORLD,
    WORLD_ARGS,
    fit_on_shards,
    save_tiny_teacher,
    write_trajectory_shards,
)


@pytest.fixture
def teacher_path(tmp_path: Path) -> Path:
    path = tmp_path / "teacher.safetensors"
    save_tiny_teacher(path)
    return path


def read_all(folder: Path) -> dict[str, torch.Tensor]:
    """Every sample, in written order (evaluation reads each shard once, in order)."""
    return next(iter(ShardDataModule(str(folder), val_urls=str(folder), batch_size=64).val_dataloader()))


def members(folder: Path) -> dict[str, bytes]:
    out = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            out.update({m.name: tar.extractfile(m).read() for m in tar if m.isreg()})
    return out


def test_stored_trajectories_equal_integrating_the_teacher(tmp_path: Path, teacher_path: Path) -> None:
    out = tmp_path / "ode"
    args = ["--batch_size", "2", "--shard_size", "3", "--noise_seed", "7", "--guidance_scale", "2.0"]
    assert write_trajectory_shards(out, teacher_path, *args, num_videos=5) == 0
    assert len(list(out.glob("*.tar"))) == 2
    batch = read_all(out)
    levels = denoising_sigmas(4, 5.0)
    assert batch["ode_trajectory"].shape == (5, 4, 3, 8, 4, 4) and batch["latents"].shape == (5, 3, 8, 4, 4)
    assert torch.equal(batch["ode_sigmas"], levels.expand(5, 4))

    teacher = save_tiny_teacher(tmp_path / "same.safetensors")
    grid = sorted(set(sampling_sigmas(6, 5.0).tolist()) | set(levels.tolist()), reverse=True)
    context, mask, camera = batch["text_emb"], batch["text_mask"], batch["camera"]

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = sigma * 1000
        return cfg_velocity(
            teacher(x, t, context, context_mask=mask, frame_cond=camera),
            teacher(x, t, torch.zeros_like(context), context_mask=mask, frame_cond=camera),
            2.0,
        )

    seeds = [int(key.split("-")[1]) for key in batch["key"]]  # world seed i is sample i
    noise = torch.stack(
        [torch.randn(3, 8, 4, 4, generator=torch.Generator().manual_seed(7 + s)) for s in seeds]
    )
    with torch.no_grad():
        torch.testing.assert_close(
            batch["latents"], euler_sample(velocity, noise, grid), atol=2e-3, rtol=2e-3
        )
        for i, level in enumerate(levels.tolist()):
            upto = grid[: grid.index(level) + 1]
            state = noise if len(upto) == 1 else euler_sample(velocity, noise, upto)
            torch.testing.assert_close(batch["ode_trajectory"][:, i], state, atol=2e-3, rtol=2e-3)
    for row, seed in enumerate(seeds):
        video = generate_video(WORLD, seed)
        truth = latent_truth(video, [range(t, t + 1) for t in range(8)])
        assert batch["prompt"][row] == video.prompt and torch.equal(batch["view"][row], truth.view)
        torch.testing.assert_close(batch["camera"][row], truth.camera)
    meta = json.loads(members(out)["world-000000002.json"])
    assert meta["ode"] == {"sigmas": levels.tolist(), "denoising_steps": 4, "shift": 5.0, "ode_steps": 6,
                           "guidance_scale": 2.0, "noise_seed": 9, "teacher": str(teacher_path),
                           "negative_prompt": None}
    assert meta["codec"] == {"name": "pooled_pixel", "patch": 4} and meta["seed"] == 2


def test_negative_prompt_is_the_unconditional_branch(tmp_path: Path, teacher_path: Path) -> None:
    """With --negative_prompt the teacher's guidance extrapolates from that prompt, not the null text."""
    negative = save_negative_prompt(
        tmp_path / "negative.safetensors", "blurry static", HashTextEncoder(dim=TEXT_DIM)
    )
    args = ["--guidance_scale", "2.0", "--ode_steps", "1", "--denoising_steps", "1"]
    assert write_trajectory_shards(tmp_path / "neg", teacher_path, *args, "--negative_prompt", str(negative),
                                   num_videos=2) == 0
    assert write_trajectory_shards(tmp_path / "null", teacher_path, *args, num_videos=2) == 0
    with_negative, with_null = read_all(tmp_path / "neg"), read_all(tmp_path / "null")
    teacher = save_tiny_teacher(tmp_path / "same.safetensors")
    emb = load_negative_prompt(negative, TEXT_DIM)
    context, mask, camera = with_negative["text_emb"], with_negative["text_mask"], with_negative["camera"]
    noise = torch.stack(
        [
            torch.randn(3, 8, 4, 4, generator=torch.Generator().manual_seed(int(k.split("-")[1])))
            for k in with_negative["key"]
        ]
    )
    one = torch.ones(2)
    with torch.no_grad():  # one Euler step from sigma 1 to 0: x0 = noise - v
        v = cfg_velocity(teacher(noise, one * 1000, context, context_mask=mask, frame_cond=camera),
                         teacher(noise, one * 1000, emb.expand(2, -1, -1), frame_cond=camera), 2.0)
    torch.testing.assert_close(with_negative["latents"], noise - v, atol=2e-3, rtol=2e-3)
    assert not torch.allclose(with_negative["latents"], with_null["latents"], atol=1e-2)
    meta = json.loads(members(tmp_path / "neg")["world-000000000.json"])
    assert meta["ode"]["negative_prompt"] == str(negative)


def test_output_is_deterministic_for_a_seed(tmp_path: Path, teacher_path: Path) -> None:
    runs = {}
    for name, args in {"a": ["--batch_size", "3"], "again": ["--batch_size", "3"], "b": ["--batch_size", "2"],
                       "c": ["--noise_seed", "1"]}.items():
        assert write_trajectory_shards(tmp_path / name, teacher_path, *args) == 0
        runs[name] = members(tmp_path / name)
    assert runs["a"] == runs["again"], "same seed and batching: byte-identical shards"
    a, b = read_all(tmp_path / "a"), read_all(tmp_path / "b")
    for name in ("latents", "ode_trajectory"):  # other batching: the same noise, arithmetic equal to float16
        torch.testing.assert_close(a[name], b[name], atol=2e-3, rtol=2e-3)
    differs = [k for k in runs["a"] if k.endswith(".npy") and runs["a"][k] != runs["c"][k]]
    assert sorted(differs) == sorted(
        k for k in runs["a"] if k.endswith((".latents.npy", ".ode_trajectory.npy"))
    )


def test_conditions_from_existing_shards(tmp_path: Path, teacher_path: Path) -> None:
    world = tmp_path / "world"
    assert main(["world", "--output", str(world), "--num_videos", "3", "--shard_size", "2", *WORLD_ARGS,
                 *CODEC_ARGS]) == 0
    source = read_all(world)
    assert "text_emb" not in source

    out = tmp_path / "ode"
    argv = ["trajectories", "--teacher", str(teacher_path), "--output", str(out), "--input", str(world),
            "--ode_steps", "2"]
    with pytest.raises(SystemExit):
        main(argv)  # the source shards carry no prompt embeddings and no text encoder is given
    assert not out.exists(), "nothing is written when the first batch is refused"
    assert main([*argv, *TEXT_ARGS]) == 0
    batch = read_all(out)
    assert batch["key"] == source["key"] and batch["prompt"] == source["prompt"]
    for name in ("camera", "view", "place"):
        assert torch.equal(batch[name], source[name])
    assert batch["text_emb"].shape[-1] == 16 and not torch.equal(batch["latents"], source["latents"])
    meta = json.loads(members(out)["world-000000000.json"])
    assert meta["text_encoder"]["name"] == "hash" and meta["ode"]["ode_steps"] == 2 and meta["seed"] == 0


def test_bad_input_shards_fail_or_are_skipped_by_name(tmp_path: Path, teacher_path: Path, capsys) -> None:
    def run(source: str | Path) -> int:
        return main(["trajectories", "--teacher", str(teacher_path), "--output", str(tmp_path / "out"),
                     "--input", str(source), *TEXT_ARGS])

    empty = tmp_path / "empty"
    empty.mkdir()
    for source, message in ((tmp_path / "missing.tar", "does not exist"), (empty, "holds no .tar shards")):
        with pytest.raises(SystemExit):
            run(source)
        assert message in capsys.readouterr().err
    garbage = empty / "bad.tar"
    garbage.write_bytes(b"not a tar file" * 64)
    with pytest.warns(ShardSkipWarning, match="bad.tar"), pytest.raises(SystemExit):
        run(garbage)
    assert "no condition samples to integrate" in capsys.readouterr().err

    assert write_trajectory_shards(tmp_path / "good", teacher_path, num_videos=2) == 0
    (tmp_path / "good" / "shard-000001.tar").write_bytes(b"garbage" * 100)
    with pytest.warns(ShardSkipWarning, match="shard-000001.tar"):
        assert run(tmp_path / "good") == 0
    assert len(read_all(tmp_path / "out")["key"]) == 2
    assert "1 input samples or shards skipped" in capsys.readouterr().out


def test_a_teacher_of_other_sizes_is_refused_naming_them(tmp_path: Path, capsys) -> None:
    teacher = tmp_path / "wide_text.safetensors"
    save_tiny_teacher(teacher, text_dim=8)
    with pytest.raises(SystemExit):
        write_trajectory_shards(tmp_path / "out", teacher)
    assert "text_dim 16 (teacher: 8)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_student_ode_recipe_trains_on_the_command_output(
    tmp_path: Path, teacher_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr("sys.argv", ["cf-fit"])
    assert write_trajectory_shards(tmp_path / "ode", teacher_path) == 0
    checkpoint = fit_on_shards("student_ode.yaml", tmp_path / "ode", tmp_path)
    assert checkpoint["global_step"] == 2 and checkpoint["hyper_parameters"]["teacher"]["init_from"] is None
