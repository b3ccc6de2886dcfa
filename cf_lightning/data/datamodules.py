"""LightningDataModules: latent shards through webdataset, and the revisit world generated in memory.

Both yield the same batch dicts (see :func:`~cf_lightning.data.shards.collate_samples` and
``docs/data.md``), so a recipe switches between a CPU toy run and real data by swapping the
``data:`` block. Constructor arguments are plain typed values, so LightningCLI builds them from YAML
and their hyperparameters stay printable.
"""

from __future__ import annotations

import dataclasses
import os
import random
import warnings
from functools import partial
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from jsonargparse import lazy_instance
from torch.utils.data import DataLoader, Dataset

from cf_lightning.codecs import LatentCodec, PixelCodec, uint8_to_unit
from cf_lightning.components import component_spec
from cf_lightning.data.resumable import EpochSampler, ResumableLoader
from cf_lightning.data.revisit_world import RevisitWorldConfig, generate_video, latent_truth
from cf_lightning.data.shards import (
    ShardLoader,
    SkipLog,
    build_shard_pipeline,
    collate_samples,
    crop_sample,
    decode_samples,
    expand_shards,
    read_shards,
)
from cf_lightning.text import HashTextEncoder, TextEncoder

__all__ = ["RevisitWorldDataModule", "RevisitWorldDataset", "ShardDataModule"]


def _positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


class ShardDataModule(L.LightningDataModule):
    """Latent shards (written by ``cf-data``) read with webdataset.

    Args:
        train_urls: shard path, folder of ``*.tar``, brace pattern or list of them.
        val_urls, test_urls: the same for evaluation (read once, in order, last batch kept).
        batch_size: samples per batch (per rank).
        num_workers: DataLoader workers per rank; shards are split between them.
        resampled: draw training shards with replacement, independently per rank and worker: every
            rank then runs the same number of steps by construction (recommended for multi-GPU).
            Needs ``samples_per_epoch``.
        samples_per_epoch: total training samples per epoch over all ranks; each rank runs
            ``samples_per_epoch // (batch_size * world_size)`` batches, re-reading its shards as
            needed. Required when resampling or when training on more than one rank. It also gives
            the loader a length, which a resumed run needs to continue mid-epoch exactly (see
            :class:`~cf_lightning.data.shards.ShardLoader`); without it a resume restarts the pass.
        shuffle_buffer: per-worker sample shuffle buffer for training (0 or 1: no shuffle).
        clip_frames: cut every sample to this many latent frames (random start for training when
            ``random_crop``, start 0 for evaluation); shorter samples are skipped and reported.
        random_crop: see ``clip_frames``.
        text_encoder: text encoder (``class_path``/``init_args`` or class name in a recipe, e.g.
            ``HashTextEncoder``, ``UMT5TextEncoder``) used for samples whose shards carry no
            precomputed embeddings; ``None`` yields prompts only.
        seed: seeds shard order, resampling, shuffles and crops (per epoch, rank and worker).

    Corrupt or truncated data is skipped with a ``ShardSkipWarning`` naming shard and key; the
    running count is ``num_skipped`` and is logged as ``data/skipped`` to the trainer's logger.
    Shard paths are checked when the module is built, before any training.
    """

    def __init__(
        self,
        train_urls: str | list[str],
        val_urls: str | list[str] | None = None,
        test_urls: str | list[str] | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        resampled: bool = False,
        samples_per_epoch: int | None = None,
        shuffle_buffer: int = 64,
        clip_frames: int | None = None,
        random_crop: bool = True,
        text_encoder: TextEncoder | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["text_encoder"])
        self.hparams["text_encoder"] = None if text_encoder is None else component_spec(text_encoder)
        _positive(batch_size=batch_size, samples_per_epoch=samples_per_epoch, clip_frames=clip_frames)
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if resampled and samples_per_epoch is None:
            raise ValueError("resampled=True draws shards forever: set samples_per_epoch to define an epoch")
        self.shards = {"train": expand_shards(train_urls, "train_urls")}
        for split, urls in (("val", val_urls), ("test", test_urls)):
            if urls is not None:
                self.shards[split] = expand_shards(urls, f"{split}_urls")
        self.text_encoder = text_encoder
        self.skips = {split: SkipLog(num_workers) for split in ("train", "val", "test")}
        self._probe: dict[str, Any] | None = None
        self._passes = {split: torch.zeros((), dtype=torch.long).share_memory_() for split in self.skips}

    @property
    def latent_channels(self) -> int:
        """Latent channels of the training shards (read from their first sample)."""
        return int(self._first_sample()["latents"].shape[0])

    @property
    def text_dim(self) -> int:
        """Width of the prompt embeddings: the configured encoder's, or the one stored in the shards."""
        if self.text_encoder is not None:
            return self.text_encoder.dim
        sample = self._first_sample()
        if "text_emb" not in sample:
            raise ValueError(f"shard {sample['shard']!r} stores no prompt embeddings and no text_encoder is set; "
                             "set data.text_encoder (e.g. HashTextEncoder or UMT5TextEncoder)")
        return int(sample["text_emb"].shape[-1])

    @property
    def frame_cond_dim(self) -> int:
        """Per-frame condition width (the camera of revisit-world shards), 0 when shards carry none."""
        sample = self._first_sample()
        return int(sample["camera"].shape[-1]) if "camera" in sample else 0

    def _first_sample(self) -> dict[str, Any]:
        if self._probe is None:
            skips = SkipLog()
            for sample in decode_samples(read_shards(({"url": url} for url in self.shards["train"]), skips), skips):
                self._probe = sample
                break
            else:
                raise ValueError(f"no readable sample in the training shards {self.shards['train'][:4]}")
        return self._probe

    @property
    def num_skipped(self) -> int:
        """Shards/samples skipped so far (all splits, all workers of this rank)."""
        return sum(log.total for log in self.skips.values())

    def _rank_and_world(self) -> tuple[int, int]:
        """Rank and world size from the trainer, else torch.distributed, else RANK/WORLD_SIZE."""
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))

    def _log_skips(self, _: int) -> None:
        if self.trainer is not None and self.trainer.logger is not None:
            self.trainer.logger.log_metrics(
                {"data/skipped": float(self.num_skipped)}, step=self.trainer.global_step
            )

    def _loader(self, split: str, num_batches: int | None, rank: int, world_size: int) -> ShardLoader:
        h = self.hparams
        train = split == "train"
        pipeline = build_shard_pipeline(
            self.shards[split],
            batch_size=h.batch_size,
            skips=self.skips[split],
            passes=self._passes[split],
            train=train,
            resampled=train and h.resampled,
            shuffle_buffer=h.shuffle_buffer,
            clip_frames=h.clip_frames,
            random_crop=h.random_crop,
            seed=h.seed,
            rank=rank,
            world_size=world_size,
            text_encoder=self.text_encoder,
        )
        return ShardLoader(
            pipeline, self._passes[split], h.num_workers, num_batches, self.skips[split], self._log_skips
        )

    def train_dataloader(self) -> ShardLoader:
        h = self.hparams
        rank, world = self._rank_and_world()
        slots = world * max(1, h.num_workers)
        if not h.resampled and world > 1 and h.samples_per_epoch is None:
            raise ValueError(
                f"training on {world} ranks without resampling needs samples_per_epoch, so that every "
                "rank runs the same number of batches (unequal counts hang the collective ops)"
            )
        if not h.resampled and len(self.shards["train"]) < slots:
            raise ValueError(
                f"{len(self.shards['train'])} training shards cannot feed {world} rank(s) x "
                f"{max(1, h.num_workers)} worker(s); write more shards or use resampled=True"
            )
        num_batches = None
        if h.samples_per_epoch is not None:
            num_batches = h.samples_per_epoch // (h.batch_size * world)
            if num_batches < 1:
                raise ValueError(
                    f"samples_per_epoch={h.samples_per_epoch} is less than one batch of {h.batch_size} "
                    f"on each of {world} rank(s)"
                )
        return self._loader("train", num_batches, rank, world)

    def _eval_loader(self, split: str) -> ShardLoader | list:
        if split not in self.shards:
            return []
        rank, world = self._rank_and_world()
        slots = world * max(1, self.hparams.num_workers)
        if len(self.shards[split]) % slots:
            warnings.warn(
                f"{len(self.shards[split])} {split} shards do not divide evenly over {world} rank(s) x "
                f"{max(1, self.hparams.num_workers)} worker(s): ranks will see different sample counts",
                stacklevel=2,
            )
        return self._loader(split, None, rank, world)

    def val_dataloader(self) -> ShardLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> ShardLoader | list:
        return self._eval_loader("test")


class RevisitWorldDataset(Dataset):
    """Revisit-world videos generated on access: item ``i`` is ``generate_video(world, seeds[i])``.

    Frames are encoded by ``codec`` and the ground truth is aligned to its latent frames, giving
    the same sample dicts as the shard reader. Generation is deterministic per seed, so nothing is
    stored and every worker or rank reproduces the same videos.
    """

    def __init__(
        self,
        world: RevisitWorldConfig,
        seeds: list[int],
        codec: LatentCodec,
        clip_frames: int | None = None,
        random_crop: bool = True,
    ) -> None:
        self.world = world
        self.seeds = list(seeds)
        self.codec = codec
        self.groups = codec.frame_groups(world.num_frames)
        codec.latent_size(world.frame_height, world.frame_width)
        if clip_frames is not None and not 1 <= clip_frames <= len(self.groups):
            raise ValueError(
                f"clip_frames={clip_frames} must be in [1, {len(self.groups)}] (latent frames of a "
                f"{world.num_frames}-frame video)"
            )
        self.clip_frames = clip_frames
        self.random_crop = random_crop

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Item ``key``, or ``(index, epoch)`` as :class:`EpochSampler` yields it: the crop start is
        drawn from (video seed, epoch), never from the global RNG, so every worker and a resumed run
        cut the same clip."""
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        seed = self.seeds[index]
        video = generate_video(self.world, seed)
        with torch.no_grad():
            latents = self.codec.encode(uint8_to_unit(video.frames).permute(1, 0, 2, 3).unsqueeze(0))[0]
        truth = latent_truth(video, self.groups)
        sample = {
            "key": f"world-{seed}",
            "shard": "<memory>",
            "latents": latents.cpu(),
            "prompt": video.prompt,
            "meta": {"source": "revisit_world", "seed": seed, "trajectory": video.trajectory},
            "camera": truth.camera,
            "view": truth.view,
            "place": truth.place,
        }
        if self.clip_frames is None:
            return sample
        slack = len(self.groups) - self.clip_frames
        start = random.Random(f"crop/{seed}/{epoch}").randint(0, slack) if self.random_crop else 0
        return crop_sample(sample, start, self.clip_frames)


class RevisitWorldDataModule(L.LightningDataModule):
    """The revisit world generated on the fly: the CPU recipes' data, no shards needed.

    Args:
        world: world sizes and statistics (default :class:`RevisitWorldConfig`).
        num_videos: training videos, seeds ``seed .. seed + num_videos - 1``.
        batch_size, num_workers: as usual; the training loader shuffles and splits over ranks itself
            and resumes mid-epoch (:class:`~cf_lightning.data.resumable.ResumableLoader`).
        clip_frames: training clip length in latent frames (random start when ``random_crop``);
            ``None`` trains on whole videos. Evaluation always uses whole videos.
        random_crop: see ``clip_frames``.
        codec: the latent codec, by ``class_path``/``init_args`` or class name in a recipe
            (default ``PixelCodec(patch=8)``).
        text_encoder: the text encoder, chosen the same way (default ``HashTextEncoder()``), or ``None``.
        seed: first training seed; also seeds the training order of every epoch.
        val_seeds: held-out evaluation seeds; default ``num_val_videos`` seeds from 10**9. Must not
            overlap the training seeds, or "held-out" metrics would be measured on training videos.
        num_val_videos: number of default evaluation seeds.
        val_num_frames: evaluation video length (design: 2-3x the training length); default as training.
    """

    VAL_SEED_BASE = 10**9

    def __init__(
        self,
        world: RevisitWorldConfig | None = None,
        num_videos: int = 512,
        batch_size: int = 8,
        num_workers: int = 0,
        clip_frames: int | None = None,
        random_crop: bool = True,
        codec: LatentCodec = lazy_instance(PixelCodec),
        text_encoder: TextEncoder | None = lazy_instance(HashTextEncoder),
        seed: int = 0,
        val_seeds: list[int] | None = None,
        num_val_videos: int = 32,
        val_num_frames: int | None = None,
    ) -> None:
        super().__init__()
        self.world = world or RevisitWorldConfig()
        self.save_hyperparameters(ignore=["world", "codec", "text_encoder"])
        # plain records, not modules: cf-gen rebuilds the run's codec and text encoder from them
        self.hparams["world"] = dataclasses.asdict(self.world)
        self.hparams["codec"] = component_spec(codec)
        self.hparams["text_encoder"] = None if text_encoder is None else component_spec(text_encoder)
        _positive(num_videos=num_videos, batch_size=batch_size, num_val_videos=num_val_videos)
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if num_videos < batch_size:
            raise ValueError(
                f"num_videos={num_videos} is less than one training batch (batch_size={batch_size})"
            )
        self.train_seeds = list(range(seed, seed + num_videos))
        self.val_seeds = (
            list(val_seeds)
            if val_seeds is not None
            else [self.VAL_SEED_BASE + i for i in range(num_val_videos)]
        )
        overlap = sorted(set(self.train_seeds) & set(self.val_seeds))
        if overlap:
            raise ValueError(
                f"val_seeds overlap the training seeds [{seed}, {seed + num_videos}): {overlap[:8]}"
            )
        self.val_world = dataclasses.replace(self.world, num_frames=val_num_frames or self.world.num_frames)
        self.codec = codec
        self.text_encoder = text_encoder
        self.train_set = RevisitWorldDataset(
            self.world, self.train_seeds, self.codec, clip_frames, random_crop
        )
        self.val_set = RevisitWorldDataset(self.val_world, self.val_seeds, self.codec)

    @property
    def latent_channels(self) -> int:
        return self.codec.latent_channels

    @property
    def text_dim(self) -> int:
        if self.text_encoder is None:
            raise ValueError("RevisitWorldDataModule has text_encoder=None, so batches carry no prompt embeddings; "
                             "set data.text_encoder (e.g. HashTextEncoder)")
        return self.text_encoder.dim

    @property
    def frame_cond_dim(self) -> int:
        """The per-frame camera position (y, x) that tells the model where it is on a revisit."""
        return 2

    def _loader_options(self) -> dict[str, Any]:
        return {"batch_size": self.hparams.batch_size, "num_workers": self.hparams.num_workers,
                "collate_fn": partial(collate_samples, text_encoder=self.text_encoder)}

    def train_dataloader(self) -> ResumableLoader:
        """Shuffled from (``seed``, epoch) and split over ranks; Lightning checkpoints its position, so a
        run resumed mid-epoch trains on the same batches as an uninterrupted one."""
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        sampler = EpochSampler(self.train_set, num_replicas=world, rank=rank, seed=self.hparams.seed)
        return ResumableLoader(self.train_set, sampler, drop_last=True, **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, **self._loader_options())

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, **self._loader_options())
