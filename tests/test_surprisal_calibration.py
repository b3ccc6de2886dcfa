"""The surprisal calibration procedure on a folder of mp4 files with known cuts (benchmarks/surprisal.py),
run on a tiny Wan VAE and backbone: scenes are labelled per latent frame from the cut list, frames that
straddle a cut are left out, and the similarities split into within-scene pairs and cuts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from cf_lightning.codecs import build_codec
from cf_lightning.models import WanConfig, WanModel
from tests.stand_ins import write_wan_vae

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
surprisal = pytest.importorskip("surprisal")


def write_cut_video(path: Path, colours: list[tuple[int, int, int]], frames_each: list[int]) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv444p"
        stream.options = {"crf": "0"}
        for colour, count in zip(colours, frames_each):
            image = np.zeros((16, 16, 3), np.uint8)
            image[:] = colour
            for _ in range(count):
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_scene_ids_leave_out_frames_that_straddle_a_cut():
    groups = [range(1), range(1, 5), range(5, 9), range(9, 13), range(13, 17)]
    assert surprisal.scene_ids(groups, [9]).tolist() == [0, 0, 0, 1, 1]
    assert surprisal.scene_ids(groups, [7]).tolist() == [0, 0, -1, 1, 1]
    assert surprisal.scene_ids(groups, []).tolist() == [0] * 5


def test_mp4_folder_with_known_cuts_splits_within_and_across(tmp_path):
    write_cut_video(tmp_path / "a.mp4", [(200, 30, 30), (20, 40, 220)], [9, 8])   # cut at frame 9
    write_cut_video(tmp_path / "b.mp4", [(10, 200, 10), (250, 250, 250)], [7, 10])  # cut at 7, inside a frame
    (tmp_path / "cuts.json").write_text(json.dumps({"a.mp4": [9], "b.mp4": [7]}))
    codec = build_codec("wan", path=str(write_wan_vae(tmp_path / "wan")))
    torch.manual_seed(0)
    model = WanModel(WanConfig.from_name("tiny")).eval()
    videos = list(surprisal.mp4_videos(tmp_path, codec, None, model.config.text_dim, None))
    assert [v[0].shape[2] for v in videos] == [5, 5]
    within, cuts = surprisal.similarities(model, videos, "mean_key", 0, chunk=1, generated=False)
    # a: scenes 0 0 0 1 1 -> 3 within pairs + 1 cut; b: 0 0 -1 1 1 -> 2 within pairs, no usable cut pair
    assert within.numel() == 5 and cuts.numel() == 1
    assert torch.all(within.abs() <= 1.0 + 1e-5)
