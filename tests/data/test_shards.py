"""Latent shards: round trip, corrupt data skipped and reported, rank x worker splits, errors."""

from __future__ import annotations

import io
import json
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cf_lightning.codecs import PixelCodec, uint8_to_unit
from cf_lightning.data import ShardDataModule, ShardSkipWarning
from cf_lightning.data.revisit_world import generate_video
from cf_lightning.data.shards import collate_samples, encode_sample, open_shard_writer


def keys_of(loader) -> list[str]:
    return [key for batch in loader for key in batch["key"]]


def test_round_trip_latents_prompt_meta_and_truth(tmp_path: Path, write_world_shards, tiny_world) -> None:
    write_world_shards(tmp_path, num_shards=2, per_shard=3)
    dm = ShardDataModule(str(tmp_path), batch_size=2, shuffle_buffer=0)
    batches = list(dm.train_dataloader())
    assert len(batches) == 3 and sorted(keys_of(batches)) == [f"world-{i:05d}" for i in range(6)]
    codec = PixelCodec(4)
    batch = batches[0]
    for row, key in enumerate(batch["key"]):
        video = generate_video(tiny_world, int(key.split("-")[1]))
        expected = codec.encode(uint8_to_unit(video.frames).permute(1, 0, 2, 3)[None])[0]
        assert torch.equal(batch["latents"][row], expected.half().float())
        assert batch["prompt"][row] == video.prompt
        first = torch.nonzero(video.first_visit >= 0).flatten()
        assert torch.equal(batch["first_visit"][row], video.first_visit)  # pixel codec: 1 latent per frame
        assert torch.equal(batch["camera"][row], video.camera) and len(first) > 0
    assert batch["latents"].shape == (2, 48, 24, 4, 4) and batch["latents"].dtype == torch.float32
    assert "text_emb" not in batch


def test_meta_and_text_embeddings_round_trip(tmp_path: Path) -> None:
    latents = torch.randn(4, 3, 2, 2)
    emb = torch.randn(3, 5)
    meta = {"source": "test", "text_encoder": {"name": "hash", "dim": 5, "max_length": 7}}
    with open_shard_writer(tmp_path, 10) as sink:
        sink.write(encode_sample("a", latents, "a prompt", meta, text_emb=emb))
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        assert json.load(tar.extractfile("a.json")) == {"format": "cf-latents/1", **meta}
    batch = next(iter(ShardDataModule(str(tmp_path / "shard-000000.tar"), batch_size=1).train_dataloader()))
    assert torch.equal(batch["latents"][0], latents.half().float())
    assert batch["text_emb"].shape == (1, 7, 5) and batch["text_mask"].sum() == 3
    assert torch.equal(batch["text_emb"][0, :3], emb.half().float()) and (batch["text_emb"][0, 3:] == 0).all()
    assert "camera" not in batch and "first_visit" not in batch


def _corrupt_sample_shard(path: Path) -> None:
    """A valid tar whose second sample has garbage latents and whose third lacks its json."""
    good = encode_sample("c-0", torch.zeros(48, 2, 4, 4), "ok", {})
    bad = {**encode_sample("c-1", torch.zeros(48, 2, 4, 4), "bad", {}), "latents.npy": b"garbage"}
    incomplete = {
        k: v for k, v in encode_sample("c-2", torch.zeros(48, 2, 4, 4), "x", {}).items() if k != "json"
    }
    with tarfile.open(path, "w") as tar:
        for sample in (good, bad, incomplete):
            for ext, data in sample.items():
                if ext != "__key__":
                    info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def test_corrupt_shards_in_the_middle_are_skipped_and_reported(tmp_path: Path, write_world_shards) -> None:
    shards = write_world_shards(tmp_path, num_shards=3, per_shard=3)
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])  # truncated mid-member
    garbage = tmp_path / "shard-000001b.tar"
    garbage.write_bytes(b"this is not a tar file at all" * 50)
    mixed = tmp_path / "shard-000001c.tar"
    _corrupt_sample_shard(mixed)
    urls = [str(shards[0]), str(shards[1]), str(garbage), str(mixed), str(shards[2])]
    dm = ShardDataModule(urls, batch_size=1, shuffle_buffer=0)
    with pytest.warns(ShardSkipWarning) as record:
        keys = keys_of(dm.train_dataloader())
    messages = [str(w.message) for w in record if w.category is ShardSkipWarning]
    assert any(
        "shard-000001.tar" in m and "unexpected end of data" in m and "key 'world-" in m for m in messages
    )
    assert any("shard-000001b.tar" in m and "before its first sample" in m for m in messages)
    assert any("shard-000001c.tar" in m and "key 'c-1'" in m and "latents.npy" in m for m in messages)
    assert any("shard-000001c.tar" in m and "key 'c-2'" in m and "missing json" in m for m in messages)
    assert dm.num_skipped == len(messages) == 4
    # everything before the damage in shard 1 and all of shards 0 and 2 is read
    assert {f"world-{i:05d}" for i in (0, 1, 2, 6, 7, 8)} <= set(keys)
    assert "c-0" in keys and "c-1" not in keys and "c-2" not in keys
    assert 1 <= len([k for k in keys if k in {"world-00003", "world-00004", "world-00005"}]) < 3


def test_pickled_members_are_never_decoded(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    sample = encode_sample("p", torch.zeros(3, 1, 1, 1), "x", {})
    sample["latents.pth"] = pickle.dumps(Exploit())
    with open_shard_writer(tmp_path, 10) as sink:
        sink.write(sample)
    batch = next(iter(ShardDataModule(str(tmp_path), batch_size=1).train_dataloader()))
    assert batch["key"] == ["p"] and not marker.exists()


def test_two_ranks_times_two_workers_see_disjoint_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_world_shards
) -> None:
    write_world_shards(tmp_path, num_shards=8, per_shard=2)
    seen = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        dm = ShardDataModule(
            str(tmp_path), batch_size=2, num_workers=2, samples_per_epoch=16, shuffle_buffer=4
        )
        loader = dm.train_dataloader()
        assert len(loader) == 4
        seen[rank] = keys_of(loader)
    assert len(seen[0]) == len(seen[1]) == 8
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == {f"world-{i:05d}" for i in range(16)}


def test_resampled_epochs_have_fixed_length_and_fresh_order(tmp_path: Path, write_world_shards) -> None:
    write_world_shards(tmp_path, num_shards=4, per_shard=2)
    dm = ShardDataModule(str(tmp_path), batch_size=2, resampled=True, samples_per_epoch=12, seed=3)
    loader = dm.train_dataloader()
    first, second = keys_of(loader), keys_of(loader)
    assert len(loader) == 6 and len(first) == len(second) == 12
    assert first != second, "each epoch draws a new shard sequence"
    again = keys_of(
        ShardDataModule(
            str(tmp_path), batch_size=2, resampled=True, samples_per_epoch=12, seed=3
        ).train_dataloader()
    )
    assert again == first, "seeded: reproducible"


def test_clip_frames_crop_random_for_train_fixed_for_val(tmp_path: Path, write_world_shards) -> None:
    write_world_shards(tmp_path, num_shards=1, per_shard=4)
    dm = ShardDataModule(str(tmp_path), val_urls=str(tmp_path), batch_size=4, clip_frames=10, seed=1)
    train = next(iter(dm.train_dataloader()))
    val = next(iter(dm.val_dataloader()))
    assert train["latents"].shape[2] == val["latents"].shape[2] == 10
    assert train["camera"].shape == (4, 10, 2) and train["first_visit"].shape == (4, 10)
    full = next(iter(ShardDataModule(str(tmp_path), batch_size=4, shuffle_buffer=0).train_dataloader()))
    order = [full["key"].index(k) for k in val["key"]]
    assert torch.equal(val["latents"], full["latents"][order, :, :10])
    # first visits are recomputed inside the clip: they point into it and to pixel-equal latents
    fv = train["first_visit"]
    for b, f in torch.nonzero(fv >= 0).tolist():
        assert torch.equal(train["latents"][b, :, f], train["latents"][b, :, fv[b, f]])
    starts = {
        k: int((full["camera"][full["key"].index(k)] == train["camera"][i, 0]).all(-1).nonzero()[0])
        for i, k in enumerate(train["key"])
    }
    assert any(s > 0 for s in starts.values()), "training crops start at random frames"


@pytest.mark.parametrize("urls", [[], "", " ", [""]])
def test_empty_shard_list_fails_naming_the_value(urls) -> None:
    with pytest.raises(ValueError, match=re.escape(f"train_urls={urls!r} names no shards")):
        ShardDataModule(urls)


def test_missing_shard_fails_before_training(tmp_path: Path, write_world_shards) -> None:
    write_world_shards(tmp_path, num_shards=1, per_shard=1)
    missing = str(tmp_path / "shard-000099.tar")
    with pytest.raises(FileNotFoundError, match="shard-000099.tar"):
        ShardDataModule([str(tmp_path / "shard-000000.tar"), missing])
    with pytest.raises(FileNotFoundError, match="val_urls.*nope"):
        ShardDataModule(str(tmp_path), val_urls=str(tmp_path / "nope-{0..1}.tar"))
    with pytest.raises(ValueError, match="samples_per_epoch"):
        ShardDataModule(str(tmp_path), resampled=True)


def test_decode_of_latents_as_npy_only() -> None:
    sample = encode_sample("k", torch.ones(2, 1, 1, 1), "p", {"fps": 8})
    array = np.load(io.BytesIO(sample["latents.npy"]), allow_pickle=False)
    assert array.dtype == np.float16 and array.shape == (2, 1, 1, 1)
    with pytest.raises(ValueError, match="'a.b'"):
        encode_sample("a.b", torch.ones(2, 1, 1, 1), "p", {})


def test_ode_trajectories_round_trip_crop_and_validate(tmp_path: Path) -> None:
    latents, states = torch.randn(3, 6, 2, 2), torch.randn(4, 3, 6, 2, 2)
    meta = {"ode": {"sigmas": [1.0, 0.9, 0.8, 0.5]}}
    with pytest.raises(ValueError, match=r"ode_trajectory of 'k' must be \[S, 3, 6, 2, 2\] with S sigmas"):
        encode_sample("k", latents, "p", {"ode": {"sigmas": [1.0]}}, ode_trajectory=states)
    with pytest.raises(ValueError, match="ode_trajectory of 'k' are not finite in float16"):
        encode_sample("k", latents, "p", meta, ode_trajectory=states * 1e6)
    bad = {**encode_sample("t-1", latents, "p", meta, ode_trajectory=states), "ode_trajectory.npy": b"junk"}
    with open_shard_writer(tmp_path, 10) as sink:
        sink.write(encode_sample("t-0", latents, "p", meta, ode_trajectory=states))
        sink.write(bad)
    dm = ShardDataModule(
        str(tmp_path), val_urls=str(tmp_path), batch_size=2, clip_frames=4, random_crop=False
    )
    with pytest.warns(ShardSkipWarning, match="key 't-1'.*ode_trajectory.npy"):
        batch = next(iter(dm.val_dataloader()))
    assert batch["key"] == ["t-0"] and batch["ode_trajectory"].shape == (1, 4, 3, 4, 2, 2)
    assert torch.equal(batch["ode_trajectory"][0], states[:, :, :4].half().float())
    assert torch.equal(batch["ode_sigmas"], torch.tensor([meta["ode"]["sigmas"]]))


def test_a_batch_mixing_trajectory_lengths_is_refused_naming_the_keys() -> None:
    def sample(key: str, levels: list[float]) -> dict:
        return {"key": key, "latents": torch.zeros(3, 2, 1, 1), "prompt": "", "meta": {},
                "ode_trajectory": torch.zeros(len(levels), 3, 2, 1, 1), "ode_sigmas": torch.tensor(levels)}

    with pytest.raises(ValueError, match=r"different numbers of sigmas: \{'a': \[1.0, 0.5\], 'b': \[1.0\]\}"):
        collate_samples([sample("a", [1.0, 0.5]), sample("b", [1.0])])
