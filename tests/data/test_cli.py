"""``cf-data`` end to end, in process: world shards, real mp4 files (pixel codec and Wan VAE), check."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from cf_lightning.cli.data import main
from cf_lightning.codecs import PixelCodec, unit_to_uint8
from cf_lightning.data import RevisitWorldConfig, ShardDataModule, generate_video
from cf_lightning.text import HashTextEncoder

WORLD_ARGS = [
    "--world.frame_height",
    "16",
    "--world.frame_width",
    "16",
    "--world.canvas_height",
    "64",
    "--world.canvas_width",
    "64",
    "--world.num_frames",
    "20",
    "--world.num_places",
    "4",
]
LEFT, RIGHT = (200, 30, 30), (20, 40, 220)


def write_mp4(path: Path, frames: int, height: int, width: int, fps: int = 8) -> None:
    """Left half red, right half blue, with a white bar moving down one row per frame (lossless x264)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
        stream.options = {"crf": "0"}
        for t in range(frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[:, : width // 2], image[:, width // 2 :] = LEFT, RIGHT
            image[t % height] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_world_command_writes_readable_shards(tmp_path: Path) -> None:
    out = tmp_path / "world"
    code = main(
        [
            "world",
            "--output",
            str(out),
            "--num_videos",
            "3",
            "--seed",
            "5",
            "--shard_size",
            "2",
            *WORLD_ARGS,
            "--codec_options",
            '{"patch": 4}',
            "--text_encoder",
            "hash",
            "--text_encoder_options",
            '{"dim": 8}',
        ]
    )
    assert code == 0 and len(list(out.glob("*.tar"))) == 2
    batch = next(iter(ShardDataModule(str(out), batch_size=3, shuffle_buffer=0).train_dataloader()))
    world = RevisitWorldConfig(
        frame_height=16, frame_width=16, canvas_height=64, canvas_width=64, num_frames=20, num_places=4
    )
    emb, mask = HashTextEncoder(dim=8).encode(batch["prompt"])
    for row, key in enumerate(batch["key"]):
        video = generate_video(world, int(key.split("-")[1]))
        decoded = unit_to_uint8(PixelCodec(4).decode(batch["latents"][row : row + 1])[0]).permute(1, 0, 2, 3)
        assert torch.equal(decoded, video.frames), "pixel codec + fp16 shards are lossless on uint8 frames"
        assert torch.equal(batch["first_visit"][row], video.first_visit)
    assert sorted(batch["key"]) == ["world-000000005", "world-000000006", "world-000000007"]
    torch.testing.assert_close(batch["text_emb"], emb, atol=2e-3, rtol=2e-3)
    assert torch.equal(batch["text_mask"], mask)


@pytest.fixture
def video_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "videos"
    folder.mkdir()
    write_mp4(folder / "first.clip.mp4", frames=12, height=48, width=64)
    (folder / "first.clip.txt").write_text("a red and blue split screen\n")
    write_mp4(folder / "second.mp4", frames=9, height=32, width=32)
    (folder / "second.txt").write_text("another split screen")
    return folder


def test_videos_command_mp4_round_trip(tmp_path: Path, video_folder: Path) -> None:
    out = tmp_path / "shards"
    argv = [
        "videos",
        "--input",
        str(video_folder),
        "--output",
        str(out),
        "--height",
        "32",
        "--width",
        "32",
        "--clip_frames",
        "4",
        "--codec_options",
        '{"patch": 8}',
    ]
    assert main(argv) == 0
    dm = ShardDataModule(str(out), batch_size=5, shuffle_buffer=0)
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch["key"]) == [
        "first_clip-0000",
        "first_clip-0001",
        "first_clip-0002",
        "second-0000",
        "second-0001",
    ]
    assert batch["latents"].shape == (5, 192, 4, 4, 4)
    assert {batch["prompt"][i] for i, k in enumerate(batch["key"]) if k.startswith("first")} == {
        "a red and blue split screen"
    }
    frames = unit_to_uint8(PixelCodec(8).decode(batch["latents"])).float()  # [B, 3, T, H, W]
    # left and right halves keep their colours (away from the moving bar and the seam)
    left = frames[:, :, :, :, 2:12].permute(1, 0, 2, 3, 4).reshape(3, -1).median(1).values
    right = frames[:, :, :, :, 20:30].permute(1, 0, 2, 3, 4).reshape(3, -1).median(1).values
    assert (left - torch.tensor(LEFT)).abs().max() <= 12 and (right - torch.tensor(RIGHT)).abs().max() <= 12
    with tarfile.open(out / "shard-000000.tar") as tar:
        meta = json.load(tar.extractfile(f"{sorted(batch['key'])[1]}.json"))
    assert meta["fps"] == 8 and meta["start_frame"] == 4 and meta["codec"] == {"name": "pixel", "patch": 8}


def test_videos_command_with_wan_vae(tmp_path: Path, video_folder: Path, wan_vae_dir: Path) -> None:
    out = tmp_path / "wan"
    argv = [
        "videos",
        "--input",
        str(video_folder),
        "--output",
        str(out),
        "--height",
        "32",
        "--width",
        "32",
        "--codec",
        "wan",
        "--codec_options",
        json.dumps({"path": str(wan_vae_dir)}),
    ]
    assert main(argv) == 0
    batch = next(iter(ShardDataModule(str(out), batch_size=1, shuffle_buffer=0).train_dataloader()))
    # 12 frames -> 9 usable (1 + 4k) -> 3 latent frames; 9 frames -> 3 latent frames
    assert batch["latents"].shape == (1, 4, 3, 4, 4)


def test_videos_command_missing_caption_fails_before_writing(
    tmp_path: Path, video_folder: Path, capsys
) -> None:
    (video_folder / "second.txt").unlink()
    out = tmp_path / "never"
    with pytest.raises(SystemExit):
        main(["videos", "--input", str(video_folder), "--output", str(out)])
    assert "second.mp4" in capsys.readouterr().err and not out.exists()


def test_videos_command_rejects_codec_incompatible_size(tmp_path: Path, video_folder: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(
            [
                "videos",
                "--input",
                str(video_folder),
                "--output",
                str(tmp_path / "x"),
                "--codec_options",
                '{"patch": 5}',
            ]
        )
    assert "divisible by 5" in capsys.readouterr().err


def test_check_command_reports_corrupt_shards(tmp_path: Path, write_world_shards, capsys) -> None:
    shards = write_world_shards(tmp_path, num_shards=2, per_shard=2)
    assert main(["check", str(tmp_path)]) == 0
    assert "4 samples in 2 shards, 0 skipped" in capsys.readouterr().out
    shards[0].write_bytes(shards[0].read_bytes()[:5000])
    with pytest.warns(UserWarning, match="shard-000000.tar"):
        assert main(["check", str(tmp_path)]) == 1
    assert main(["check", str(tmp_path / "missing.tar")]) == 2
