"""The pan world overlay (recipes/pan/world.yaml): camera motion within segments that stays exact in latents.

Its claims are what docs/results.md relies on: every frame is whole colour blocks (the pooled codec
round-trips it), each pan step moves the content by exactly one latent cell, and a revisit repeats its
first visit's latent frame.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from cf_lightning.cli.fit import main
from cf_lightning.codecs import PooledPixelCodec, uint8_to_unit
from cf_lightning.data.revisit_world import RevisitWorldConfig, generate_video
from cf_lightning.models.frame_cond import frequencies_to_resolve
from cf_lightning.recipe import load_recipe

RECIPES = Path(__file__).parents[2] / "recipes"
OVERLAY = RECIPES / "pan" / "world.yaml"
FOURIER = RECIPES / "pan" / "fourier.yaml"


@pytest.fixture(scope="module")
def world() -> RevisitWorldConfig:
    return RevisitWorldConfig(**load_recipe(OVERLAY)["data"]["init_args"]["world"])


def _shifted_equal(before: torch.Tensor, after: torch.Tensor, dy: int, dx: int) -> bool:
    """Whether ``after`` is ``before`` moved by ``(dy, dx)`` cells where the two overlap (``[C, h, w]``)."""
    h, w = before.shape[-2:]
    y0, y1, x0, x1 = max(dy, 0), max(-dy, 0), max(dx, 0), max(-dx, 0)
    return torch.equal(before[:, y0:h - y1, x0:w - x1], after[:, y1:h - y0, x1:w - x0])


def test_pans_move_whole_cells_and_latents_are_exact(world: RevisitWorldConfig) -> None:
    assert world.pan_step == world.block_size and world.pan_positions > 1
    codec = PooledPixelCodec(patch=world.block_size)
    steps = 0
    for seed in range(10**9, 10**9 + 4):
        video = generate_video(world, seed)
        pixels = uint8_to_unit(video.frames).permute(1, 0, 2, 3).unsqueeze(0)
        latents = codec.encode(pixels)
        torch.testing.assert_close(codec.decode(latents), pixels, atol=1e-6, rtol=0)
        cuts = set(video.segment_starts.tolist())
        for t in range(1, video.frames.shape[0]):
            if t in cuts:
                continue
            move = video.position[t] - video.position[t - 1]
            assert (move.abs() == world.block_size).any() and (move % world.block_size == 0).all()
            dy, dx = (move // world.block_size).tolist()
            assert _shifted_equal(latents[0, :, t - 1], latents[0, :, t], dy, dx)
            steps += 1
        for t in (video.first_visit >= 0).nonzero().flatten().tolist():
            assert torch.equal(latents[0, :, t], latents[0, :, int(video.first_visit[t])])
    assert steps > 100


def printed_configs(recipe: list[str], overlay: Path, capsys, monkeypatch) -> tuple[dict, dict]:
    """The configs ``cf-fit fit --print_config`` prints for ``recipe`` without and with ``overlay``."""
    monkeypatch.setattr(sys, "argv", ["cf-fit"])
    printed = []
    for extra in ([], ["--config", str(overlay)]):
        with pytest.raises(SystemExit) as done:
            main(["fit", *recipe, *extra, "--print_config"])
        assert done.value.code == 0
        printed.append(yaml.safe_load(capsys.readouterr().out))
    return printed[0], printed[1]


@pytest.mark.parametrize("recipe", ["context_teacher.yaml", "student_init.yaml", "student_recall.yaml",
                                    "slowfast.yaml", "sliding_window.yaml"])
def test_overlay_swaps_only_the_world(recipe: str, world: RevisitWorldConfig, capsys, monkeypatch) -> None:
    plain, pan = printed_configs(["--config", str(RECIPES / recipe)], OVERLAY, capsys, monkeypatch)
    pan_world = pan["data"]["init_args"].pop("world")
    plain["data"]["init_args"].pop("world")
    assert pan == plain, "the overlay changes the world only"
    assert RevisitWorldConfig(**pan_world) == world


def test_fourier_overlay_resolves_one_pan_step_and_changes_only_the_camera_input(world, capsys, monkeypatch):
    recipe = ["--config", str(RECIPES / "context_teacher.yaml"), "--config", str(OVERLAY)]
    plain, fourier = printed_configs(recipe, FOURIER, capsys, monkeypatch)
    overrides = fourier["model"]["init_args"].pop("backbone_overrides")
    plain["model"]["init_args"].pop("backbone_overrides")
    assert fourier == plain, "the overlay changes the backbone's camera input only"
    assert overrides == {"frame_cond_frequencies": frequencies_to_resolve(world.camera_step)}
