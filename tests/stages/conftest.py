"""Tiny synthetic batches shaped like the data modules' output."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

CHANNELS, TEXT_DIM, HW = 4, 16, 4


class RandomClips(Dataset):
    """Fixed random latents/text/camera per index: enough to check training mechanics."""

    def __init__(self, num: int = 8, frames: int = 16) -> None:
        gen = torch.Generator().manual_seed(0)
        self.latents = torch.randn(num, CHANNELS, frames, HW, HW, generator=gen)
        self.text = torch.randn(num, 3, TEXT_DIM, generator=gen)
        self.camera = torch.rand(num, frames, 2, generator=gen) * 2 - 1

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"latents": self.latents[i], "text_emb": self.text[i], "camera": self.camera[i]}


@pytest.fixture
def loader():
    def make(num: int = 8, frames: int = 16, batch_size: int = 4) -> DataLoader:
        return DataLoader(RandomClips(num, frames), batch_size=batch_size)
    return make


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
