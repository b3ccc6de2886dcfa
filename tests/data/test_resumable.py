"""The training loader resumes mid-epoch with the same batches and crops as an uninterrupted one."""

from __future__ import annotations

import pytest
import torch

from cf_lightning.data import RevisitWorldConfig, RevisitWorldDataModule
from cf_lightning.data.resumable import EpochSampler

SMALL = RevisitWorldConfig(num_frames=32)


def epochs(loader, first: int, count: int) -> list[dict]:
    batches = []
    for epoch in range(first, first + count):
        loader.sampler.set_epoch(epoch)  # what Lightning does at each epoch start
        batches += list(loader)
    return batches


def same(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(x["key"] == y["key"] and torch.equal(x["latents"], y["latents"])
                                    for x, y in zip(a, b))


def test_loader_restored_mid_epoch_continues_with_the_same_batches_and_crops():
    data = RevisitWorldDataModule(world=SMALL, num_videos=6, batch_size=2, clip_frames=4, num_val_videos=1)
    uninterrupted = epochs(data.train_dataloader(), 0, 2)
    assert [b["key"] for b in uninterrupted[:3]] != [b["key"] for b in uninterrupted[3:]], (
        "reshuffled per epoch"
    )

    killed = data.train_dataloader()
    stream = iter(killed)
    seen = [next(stream), next(stream)]
    state = killed.state_dict()
    assert state == {"epoch": 0, "samples": 4}
    resumed = data.train_dataloader()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert same(seen + rest + epochs(resumed, 1, 1), uninterrupted)


def test_state_saved_at_the_end_of_an_epoch_starts_the_next():
    data = RevisitWorldDataModule(world=SMALL, num_videos=4, batch_size=2, clip_frames=4, num_val_videos=1)
    loader = data.train_dataloader()
    list(loader)
    resumed = data.train_dataloader()
    resumed.load_state_dict(loader.state_dict())
    assert resumed.sampler.epoch == 1
    assert same(list(resumed), epochs(data.train_dataloader(), 1, 1))


def test_crop_is_drawn_from_the_video_and_epoch_not_the_global_rng():
    data = RevisitWorldDataModule(world=SMALL, num_videos=2, batch_size=2, clip_frames=4, num_val_videos=1)
    torch.manual_seed(0)
    a = data.train_set[(1, 3)]
    torch.manual_seed(1)
    b = data.train_set[(1, 3)]
    assert torch.equal(a["latents"], b["latents"]) and torch.equal(a["camera"], b["camera"])
    starts = {tuple(data.train_set[(1, epoch)]["camera"][0].tolist()) for epoch in range(8)}
    assert len(starts) > 1, "the crop moves from epoch to epoch"


def test_ranks_split_one_epoch_without_overlap():
    dataset = list(range(10))
    ranks = [list(EpochSampler(dataset, num_replicas=2, rank=r, seed=5)) for r in range(2)]
    indices = [i for rank in ranks for i, _ in rank]
    assert sorted(indices) == dataset and all(epoch == 0 for rank in ranks for _, epoch in rank)


def test_foreign_loader_state_is_named():
    loader = RevisitWorldDataModule(
        world=SMALL, num_videos=2, batch_size=2, num_val_videos=1
    ).train_dataloader()
    with pytest.raises(KeyError, match="lacks \\['samples'\\]"):
        loader.load_state_dict({"epoch": 0})
