"""Chunk-by-chunk teacher trajectories (``cf-data trajectories --chunk_context``): each chunk is the
teacher's ODE after the data frames its context picks, and the student init regresses it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from cf_lightning.cli.data import main
from cf_lightning.data.shards import crop_sample, encode_sample
from cf_lightning.data.trajectories import ChunkContext, OdeSettings, chunkwise_trajectory, sample_noise
from cf_lightning.diffusion import cfg_velocity, denoising_sigmas, euler_sample, sampling_sigmas
from cf_lightning.models import WanConfig, WanModel
from memory_policies import SlowFast
from tests.data.test_trajectories import members, read_all
from tests.data.trajectory_shards import (
    CODEC_ARGS,
    WORLD_ARGS,
    fit_on_shards,
    save_tiny_teacher,
    write_trajectory_shards,
)

LAST_TWO = ["--chunk_context", "last_n", "--context_frames", "2", "--context_positions", "packed"]


@pytest.fixture
def teacher_path(tmp_path: Path) -> Path:
    path = tmp_path / "teacher.safetensors"
    save_tiny_teacher(path)
    return path


def test_each_chunk_is_the_teacher_after_the_data_frames_before_it(tmp_path: Path, teacher_path: Path
                                                                   ) -> None:
    chunked, world = tmp_path / "chunked", tmp_path / "world"
    args = ["--noise_seed", "3", "--guidance_scale", "2.0", *LAST_TWO]
    assert write_trajectory_shards(chunked, teacher_path, *args, num_videos=3) == 0
    assert main(["world", "--output", str(world), "--num_videos", "3", *WORLD_ARGS, *CODEC_ARGS]) == 0
    batch = read_all(chunked)
    # the samples keep the world's data latents: the history the teacher saw
    assert torch.equal(batch["latents"], read_all(world)["latents"])
    teacher = save_tiny_teacher(tmp_path / "same.safetensors")
    levels = denoising_sigmas(4, 5.0)
    grid = sorted(set(sampling_sigmas(6, 5.0).tolist()) | set(levels.tolist()), reverse=True)
    text, mask, camera, latents = batch["text_emb"], batch["text_mask"], batch["camera"], batch["latents"]
    noise = torch.stack([sample_noise(latents.shape[1:], 3 + row) for row in range(3)])
    for start in range(0, 8, 2):
        context = list(range(max(0, start - 2), start))
        n = len(context)

        def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            seq = torch.cat([latents[:, :, context], x], dim=2)
            steps = torch.cat([torch.zeros(3, n), (sigma * 1000)[:, None].expand(3, 2)], dim=1)
            cond = torch.cat([camera[:, context], camera[:, start:start + 2]], dim=1)
            positions = torch.arange(n + 2).expand(3, -1)
            out = [teacher(seq, steps, t, context_mask=mask, frame_cond=cond, positions=positions)[:, :, n:]
                   for t in (text, torch.zeros_like(text))]
            return cfg_velocity(*out, 2.0)

        chunk_noise = noise[:, :, start:start + 2]
        with torch.no_grad():
            torch.testing.assert_close(batch["ode_endpoint"][:, :, start:start + 2],
                                       euler_sample(velocity, chunk_noise, grid), atol=2e-3, rtol=2e-3)
            for i, level in enumerate(levels.tolist()):
                upto = grid[: grid.index(level) + 1]
                state = chunk_noise if len(upto) == 1 else euler_sample(velocity, chunk_noise, upto)
                torch.testing.assert_close(batch["ode_trajectory"][:, i, :, start:start + 2], state,
                                           atol=2e-3, rtol=2e-3)
    meta = json.loads(members(chunked)["world-000000001.json"])
    assert meta["ode"]["chunk_context"] == {"source": "last_n", "chunk_frames": 2, "context_frames": 2,
                                            "positions": "packed", "memory": None}


def test_a_chunk_depends_only_on_the_frames_the_memory_holds() -> None:
    """Memory context: changing a data frame the memory dropped, or one after the chunk, leaves the
    chunk's trajectory alone; changing a held frame does not."""
    torch.manual_seed(0)
    teacher = WanModel(WanConfig.from_name("tiny", in_dim=3, out_dim=3, text_dim=8)).eval()
    memory = SlowFast(sink=2, slow=2, fast=2, admission="uniform", interval=2, rope_length=6)
    context = ChunkContext("memory", chunk_frames=2, memory=memory, positions="student")
    settings = OdeSettings(denoising_steps=2, shift=5.0, ode_steps=3, guidance_scale=2.0, noise_seed=0,
                           teacher="tiny")
    clean, noise, text = torch.randn(1, 3, 16, 2, 2), torch.randn(1, 3, 16, 2, 2), torch.randn(1, 4, 8)
    kept = context.kept(clean)[0]
    last = len(kept) - 1
    held, start = kept[last], last * 2
    dropped = [f for f in range(start) if f not in held]
    assert held and dropped

    def run(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return chunkwise_trajectory(teacher, frames, noise, text, None, None, settings, context)

    endpoint, states = run(clean)
    assert endpoint.shape == clean.shape and states.shape == (1, 2, *clean.shape[1:])
    moved = clean.clone()
    moved[:, :, dropped] += 1.0
    assert torch.equal(run(moved)[0][:, :, start:], endpoint[:, :, start:])
    moved = clean.clone()
    moved[:, :, held[-1]] += 1.0
    assert not torch.allclose(run(moved)[0][:, :, start:], endpoint[:, :, start:])


def test_chunk_trajectories_refuse_what_would_mislead_the_student() -> None:
    with pytest.raises(ValueError, match="unknown chunk context 'window'; allowed: memory, last_n"):
        ChunkContext("window", chunk_frames=2)
    with pytest.raises(ValueError, match="needs a memory policy"):
        ChunkContext("memory", chunk_frames=2)
    latents = torch.zeros(3, 4, 2, 2, dtype=torch.float16)
    states = torch.zeros(2, 3, 4, 2, 2, dtype=torch.float16)
    meta = {"ode": {"sigmas": [1.0, 0.5]}}
    with pytest.raises(ValueError, match="ode_endpoint of 'k' must come with ode_trajectory"):
        encode_sample("k", latents, "p", meta, ode_endpoint=latents)
    with pytest.raises(ValueError, match=r"ode_endpoint of 'k' .* latents' shape \(3, 4, 2, 2\)"):
        encode_sample("k", latents, "p", meta, ode_trajectory=states, ode_endpoint=latents[:, :2])
    sample = {"key": "k", "latents": latents.float(), "ode_trajectory": states.float(),
              "ode_endpoint": latents.float()}
    assert crop_sample(sample, 0, 2)["ode_endpoint"].shape == (3, 2, 2, 2)
    with pytest.raises(ValueError, match="'k' holds chunk-by-chunk .* start 1"):
        crop_sample(sample, 1, 2)


def test_context_ode_recipe_trains_on_chunk_trajectories(tmp_path: Path, teacher_path: Path,
                                                          monkeypatch) -> None:
    from cf_lightning.stages.common import batch_condition
    from cf_lightning.stages.student import StudentModule

    monkeypatch.setattr("sys.argv", ["cf-fit"])
    assert write_trajectory_shards(tmp_path / "ode", teacher_path, *LAST_TWO) == 0
    batch = read_all(tmp_path / "ode")
    student = StudentModule(latent_channels=3, text_dim=16, frame_cond_dim=2, objective="ode", clip_frames=8)
    history, endpoint, _ = student.ode_pairs(batch, batch_condition(batch))
    assert torch.equal(history, batch["latents"]) and torch.equal(endpoint, batch["ode_endpoint"])
    checkpoint = fit_on_shards("student_context_ode.yaml", tmp_path / "ode", tmp_path,
                               "--model.init_from", "null")
    assert checkpoint["global_step"] == 2 and checkpoint["hyper_parameters"]["objective"] == "ode"


def test_the_benchmark_tells_returns_from_continuations_and_new_views() -> None:
    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    from chunk_trajectories import frame_kinds

    kinds = frame_kinds(torch.tensor([5, 5, 7, 7, 5, 9, 7]))
    assert kinds == [("new", 0), ("continue", 0), ("new", 0), ("continue", 0), ("return", 3), ("new", 0),
                     ("return", 3)]
