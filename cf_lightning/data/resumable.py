"""A training loader that resumes mid-epoch exactly where a checkpoint left it.

Lightning stores the state of every training loader that has ``state_dict``/``load_state_dict`` in
its checkpoints and restores it before iterating again (``FitLoop.on_save_checkpoint``,
``CombinedLoader._load_state_dicts``). A plain shuffled map-style loader has none: a resumed run
restarts the epoch with a fresh shuffle and trains on other batches than an uninterrupted run would.
Here an epoch's order is a pure function of (seed, epoch), the loader counts the samples it has
handed out, and a restored loader skips them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """This rank's indices for one epoch, shuffled from ``(seed, epoch)``, each yielded as ``(index, epoch)``.

    The epoch travels with the index so that a dataset draws per-sample randomness (a random crop)
    from the same pair instead of the global RNG, in whichever process or worker it runs. A
    ``DistributedSampler``, so Lightning neither replaces nor wraps it on several ranks and calls its
    ``set_epoch`` at every epoch start. ``skip`` drops that many indices from the next epoch only.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.skip = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        # A generator: the order is drawn at the first batch, after Lightning's set_epoch.
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        epoch = self.epoch
        for index in indices[skip:]:
            yield index, epoch


class ResumableLoader(DataLoader):
    """DataLoader over an :class:`EpochSampler` whose position (epoch, samples handed out) is
    checkpointed by Lightning. Batches are counted as they are yielded; Lightning fetches no batch
    ahead from a loader with a length, so the count is what training has consumed."""

    def __init__(self, dataset: Dataset, sampler: EpochSampler, **kwargs: Any) -> None:
        if not isinstance(sampler, EpochSampler):
            raise TypeError(f"ResumableLoader needs an EpochSampler, got {type(sampler).__name__}")
        super().__init__(dataset, sampler=sampler, **kwargs)
        self._samples = 0
        self._resume_at = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        start, self._resume_at = self._resume_at, 0
        self.sampler.skip = start
        self._samples = start
        for batch in super().__iter__():
            self._samples += self.batch_size
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "samples": self._samples}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue the saved epoch after its last consumed sample, or start the next one if it was done."""
        missing = {"epoch", "samples"} - set(state)
        if missing:
            raise KeyError(
                f"loader state {state} lacks {sorted(missing)}; it was not saved by a ResumableLoader"
            )
        finished = state["samples"] >= len(self) * self.batch_size
        self.sampler.set_epoch(state["epoch"] + int(finished))
        self._resume_at = 0 if finished else state["samples"]
