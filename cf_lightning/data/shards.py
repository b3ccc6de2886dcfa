"""The latent shard format and the webdataset pipeline that reads it (no Lightning here).

A shard is a plain tar file written by :func:`open_shard_writer` (webdataset's ``ShardWriter``).
Each sample is a group of members sharing a key:

==========================  ======================================================================
``KEY.latents.npy``         float16 ``[C, F, h, w]`` codec latents (the ODE endpoint in trajectory shards
                            of whole clips, the data the teacher saw in chunk-by-chunk ones)
``KEY.txt``                 the prompt (UTF-8)
``KEY.json``                metadata: source, codec, frame counts, sizes, text encoder (if any) ...
``KEY.camera.npy``          float32 ``[F, 2]`` camera (y, x) in [-1, 1] (revisit world only)
``KEY.view.npy``            int64 ``[F]`` view ids, equal ids = pixel-equal frames (revisit world only)
``KEY.place.npy``           int64 ``[F]`` place ids (revisit world only)
``KEY.text_emb.npy``        float16 ``[n, D]`` prompt embeddings, valid tokens only (optional)
``KEY.ode_trajectory.npy``  float16 ``[S, C, F, h, w]`` teacher ODE states at the sigmas listed in
                            ``json["ode"]["sigmas"]`` (``cf-data trajectories`` only)
``KEY.ode_endpoint.npy``    float16 ``[C, F, h, w]`` the teacher's endpoint when it was integrated chunk
                            by chunk after the data frames (``cf-data trajectories --chunk_context``)
==========================  ======================================================================

Arrays are ``.npy`` read with ``allow_pickle=False`` and nothing else is decoded: a shard can never
execute code (webdataset's default ``.pth`` decoder would unpickle). Reading is robust by design:
an unreadable shard or a corrupt sample is skipped with a :class:`ShardSkipWarning` that names the
shard and the key, and counted in a :class:`SkipLog`, so a bad file never stops an epoch and is
never dropped silently.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import random
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch import Tensor
from torch.utils.data import DataLoader, get_worker_info
from webdataset.tariterators import base_plus_ext

from cf_lightning.data.revisit_world import first_visit_from_views
from cf_lightning.text.base import TextEncoder

__all__ = [
    "FORMAT",
    "CorruptSampleError",
    "ShardLoader",
    "ShardSkipWarning",
    "SkipLog",
    "build_shard_pipeline",
    "collate_samples",
    "crop_sample",
    "decode_sample",
    "decode_samples",
    "encode_sample",
    "expand_shards",
    "open_shard_writer",
    "per_frame_truth",
    "read_shards",
]

FORMAT = "cf-latents/1"
"""Value of ``meta["format"]`` in every sample written by this module."""

_PER_FRAME = ("camera", "view", "place")
_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)
"""What a damaged, truncated or non-tar file raises while being read (incl. compressed shards)."""


class ShardSkipWarning(UserWarning):
    """A corrupt shard or sample was skipped; turn into an error with ``-W error::...ShardSkipWarning``."""


class CorruptSampleError(ValueError):
    """A sample's members are missing or cannot be decoded."""


class SkipLog:
    """Counts and reports skipped shards/samples across DataLoader workers.

    The counts live in a shared-memory tensor with one slot per worker, so workers never race on
    a slot and the main process reads the total without any message passing.
    """

    def __init__(self, num_workers: int = 0) -> None:
        self.counts = torch.zeros(max(1, num_workers), dtype=torch.long).share_memory_()

    @property
    def total(self) -> int:
        """Skipped items so far, summed over workers."""
        return int(self.counts.sum())

    def report(self, shard: str, key: str | None, reason: str) -> None:
        """Warn naming ``shard`` and ``key`` and count one skipped item."""
        info = get_worker_info()
        self.counts[(info.id if info else 0) % self.counts.numel()] += 1
        where = f"key {key!r}" if key is not None else "before its first sample"
        warnings.warn(f"skipped data in shard {shard!r}, {where}: {reason}", ShardSkipWarning, stacklevel=2)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def per_frame_truth(sample: dict[str, Any]) -> dict[str, Tensor]:
    """The per-frame ground truth a (decoded) sample carries, as :func:`encode_sample` keyword arguments,
    so a sample re-written from another (encoded, or integrated by a teacher) keeps it."""
    return {name: sample[name] for name in _PER_FRAME if name in sample}


def encode_sample(
    key: str,
    latents: Tensor,
    prompt: str,
    meta: dict[str, Any],
    *,
    camera: Tensor | None = None,
    view: Tensor | None = None,
    place: Tensor | None = None,
    text_emb: Tensor | None = None,
    ode_trajectory: Tensor | None = None,
    ode_endpoint: Tensor | None = None,
) -> dict[str, Any]:
    """Serialise one sample (latents ``[C, F, h, w]``) to the tar members described above.

    ``text_emb`` holds only the valid tokens ``[n, D]``; readers pad it back to
    ``meta["text_encoder"]["max_length"]``. ``ode_trajectory`` ``[S, C, F, h, w]`` needs its ``S``
    sigmas in ``meta["ode"]["sigmas"]``, so a reader can tell at which levels the states were taken.
    """
    if "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must not contain '.' or '/' (webdataset splits keys there)")
    if latents.ndim != 4:
        raise ValueError(f"latents must be [C, F, h, w], got shape {tuple(latents.shape)}")
    _check_float16(key, "latents", latents)
    sample: dict[str, Any] = {
        "__key__": key,
        "latents.npy": _npy(latents.detach().cpu().to(torch.float16).numpy()),
        "txt": prompt.encode("utf-8"),
        "json": json.dumps({"format": FORMAT, **meta}).encode("utf-8"),
    }
    if camera is not None:
        sample["camera.npy"] = _npy(camera.detach().cpu().to(torch.float32).numpy())
    for name, value in (("view", view), ("place", place)):
        if value is not None:
            sample[f"{name}.npy"] = _npy(value.detach().cpu().to(torch.int64).numpy())
    if text_emb is not None:
        sample["text_emb.npy"] = _npy(text_emb.detach().cpu().to(torch.float16).numpy())
    if ode_trajectory is not None:
        sigmas = (meta.get("ode") or {}).get("sigmas")
        if not _trajectory_fits(ode_trajectory.shape, latents.shape, sigmas):
            raise ValueError(
                f"ode_trajectory of {key!r} must be [S, {', '.join(map(str, latents.shape))}] with S sigmas "
                f"in meta['ode']['sigmas'], got shape {tuple(ode_trajectory.shape)} and sigmas {sigmas}"
            )
        _check_float16(key, "ode_trajectory", ode_trajectory)
        sample["ode_trajectory.npy"] = _npy(ode_trajectory.detach().cpu().to(torch.float16).numpy())
    if ode_endpoint is not None:
        if ode_trajectory is None or ode_endpoint.shape != latents.shape:
            raise ValueError(
                f"ode_endpoint of {key!r} must come with ode_trajectory and have the latents' shape "
                f"{tuple(latents.shape)}, got {tuple(ode_endpoint.shape)}"
            )
        _check_float16(key, "ode_endpoint", ode_endpoint)
        sample["ode_endpoint.npy"] = _npy(ode_endpoint.detach().cpu().to(torch.float16).numpy())
    return sample


def _trajectory_fits(states_shape: tuple[int, ...], latents_shape: tuple[int, ...], sigmas: object) -> bool:
    """Whether ODE states ``[S, *latents_shape]`` come with their ``S`` sigmas (checked on write and on
    read)."""
    return (
        tuple(states_shape[1:]) == tuple(latents_shape)
        and isinstance(sigmas, list)
        and len(sigmas) == states_shape[0]
    )


def _check_float16(key: str, name: str, values: Tensor) -> None:
    """Arrays are stored as float16: an overflow would be stored as inf and poison training later."""
    if values.numel() and (
        not torch.isfinite(values).all() or values.abs().max() > torch.finfo(torch.float16).max
    ):
        raise ValueError(f"{name} of {key!r} are not finite in float16")


def open_shard_writer(output: str | Path, shard_size: int, prefix: str = "shard") -> wds.ShardWriter:
    """A webdataset ``ShardWriter`` writing ``OUTPUT/PREFIX-000000.tar`` ... with raw bytes members."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1 sample, got {shard_size}")
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    return wds.ShardWriter(str(folder / f"{prefix}-%06d.tar"), maxcount=shard_size, verbose=0, encoder=False)


def expand_shards(urls: str | Sequence[str], name: str = "urls") -> list[str]:
    """Expand brace patterns (``a-{000..009}.tar``) and folders (all ``*.tar`` inside) to a shard list.

    Local paths are checked here, before any training starts; remote URLs (``scheme://``, ``pipe:``)
    are passed through for webdataset's ``gopen``. ``name`` is the argument named in errors.
    """
    items = [urls] if isinstance(urls, str) else list(urls)
    shards: list[str] = []
    for item in items:
        shards.extend(url for url in wds.shardlists.expand_urls(item) if url.strip())
    if not shards:
        raise ValueError(
            f"{name}={urls!r} names no shards; give a .tar path, a folder, a brace pattern or a list"
        )
    local: list[str] = []
    for url in shards:
        if "://" in url or url.startswith("pipe:"):
            local.append(url)
            continue
        path = Path(url.removeprefix("file:"))
        if path.is_dir():
            found = sorted(str(p) for p in path.glob("*.tar"))
            if not found:
                raise FileNotFoundError(f"{name}: folder {url!r} (from {urls!r}) holds no .tar shards")
            local.extend(found)
        elif path.is_file():
            local.append(str(path))
        else:
            raise FileNotFoundError(f"{name}: shard {url!r} (from {urls!r}) does not exist")
    return local


def read_shards(source: Iterable[dict[str, str]], skips: SkipLog) -> Iterator[dict[str, Any]]:
    """Pipeline stage: ``{"url"}`` items -> raw samples ``{"__key__", "__url__", EXT: bytes}``.

    A read error (truncated or garbage tar, vanished file) drops the sample being assembled and the
    rest of that shard, reported with the shard and the key; the samples before it are kept.
    """
    for item in source:
        yield from _read_one_shard(item["url"], skips)


def _read_one_shard(url: str, skips: SkipLog) -> Iterator[dict[str, Any]]:
    sample: dict[str, Any] | None = None
    key: str | None = None
    try:
        with wds.gopen(url, "rb") as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                prefix, suffix = base_plus_ext(member.name)
                if not member.isreg() or prefix is None:
                    continue
                if sample is not None and prefix != sample["__key__"]:
                    yield sample
                    sample = None
                key = prefix
                if sample is None:
                    sample = {"__key__": prefix, "__url__": url}
                sample[suffix] = tar.extractfile(member).read()
        if sample is not None:
            yield sample
    except _READ_ERRORS as exc:
        skips.report(
            url,
            key,
            f"unreadable ({type(exc).__name__}: {exc}); skipped this sample and the rest of the shard",
        )


def _load_npy(raw: dict[str, Any], member: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(raw[member]), allow_pickle=False)
    except Exception as exc:  # corrupt bytes can fail in many ways inside numpy
        raise CorruptSampleError(f"{member} is not a valid .npy array ({type(exc).__name__}: {exc})") from exc


def decode_sample(raw: dict[str, Any]) -> dict[str, Any]:
    """Raw tar members -> tensors; raises :class:`CorruptSampleError` naming what is wrong."""
    missing = [m for m in ("latents.npy", "txt", "json") if m not in raw]
    if missing:
        raise CorruptSampleError(f"incomplete sample, missing {', '.join(missing)}")
    latents = _load_npy(raw, "latents.npy")
    if latents.ndim != 4 or latents.dtype.kind != "f":
        raise CorruptSampleError(
            f"latents must be a float [C, F, h, w] array, got {latents.dtype} {latents.shape}"
        )
    try:
        prompt = raw["txt"].decode("utf-8")
        meta = json.loads(raw["json"])
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptSampleError(f"bad txt/json member ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict):
        raise CorruptSampleError(f"json member must hold an object, got {type(meta).__name__}")
    sample: dict[str, Any] = {
        "key": raw["__key__"],
        "shard": raw["__url__"],
        "latents": torch.from_numpy(latents.astype(np.float32)),
        "prompt": prompt,
        "meta": meta,
    }
    frames = latents.shape[1]
    for name in _PER_FRAME:
        if f"{name}.npy" in raw:
            value = torch.from_numpy(_load_npy(raw, f"{name}.npy"))
            if value.shape[0] != frames:
                raise CorruptSampleError(f"{name}.npy has {value.shape[0]} frames, latents have {frames}")
            sample[name] = value.float() if name == "camera" else value.long()
    if "text_emb.npy" in raw:
        emb = _load_npy(raw, "text_emb.npy")
        text = meta.get("text_encoder") or {}
        if emb.ndim != 2 or "max_length" not in text or emb.shape[0] > text["max_length"]:
            raise CorruptSampleError(f"text_emb.npy {emb.shape} does not match json text_encoder {text}")
        sample["text_emb"] = torch.from_numpy(emb.astype(np.float32))
        sample["text_max_length"] = int(text["max_length"])
    if "ode_trajectory.npy" in raw:
        states = _load_npy(raw, "ode_trajectory.npy")
        sigmas = (meta.get("ode") or {}).get("sigmas")
        if not _trajectory_fits(states.shape, latents.shape, sigmas):
            raise CorruptSampleError(
                f"ode_trajectory.npy {states.shape} does not match latents {latents.shape} and json ode "
                f"sigmas {sigmas}"
            )
        sample["ode_trajectory"] = torch.from_numpy(states.astype(np.float32))
        sample["ode_sigmas"] = torch.tensor(sigmas, dtype=torch.float32)
    if "ode_endpoint.npy" in raw:
        endpoint = _load_npy(raw, "ode_endpoint.npy")
        if endpoint.shape != latents.shape or "ode_trajectory" not in sample:
            raise CorruptSampleError(
                f"ode_endpoint.npy {endpoint.shape} does not match latents {latents.shape} or comes "
                "without ode_trajectory.npy"
            )
        sample["ode_endpoint"] = torch.from_numpy(endpoint.astype(np.float32))
    return sample


def decode_samples(source: Iterable[dict[str, Any]], skips: SkipLog) -> Iterator[dict[str, Any]]:
    """Pipeline stage: raw samples -> decoded samples; corrupt ones are reported and skipped."""
    for raw in source:
        try:
            sample = decode_sample(raw)
        except CorruptSampleError as exc:
            skips.report(raw["__url__"], raw["__key__"], str(exc))
            continue
        yield sample


def crop_sample(sample: dict[str, Any], start: int, length: int) -> dict[str, Any]:
    """Latent frames ``[start, start + length)`` of a decoded sample (latents, ODE states, per-frame
    truth).

    Chunk-by-chunk trajectories (``ode_endpoint``) only crop from frame 0: each chunk's endpoint
    depends on the frames before it, which a later start would hide from the student.
    """
    if "ode_endpoint" in sample and start != 0:
        raise ValueError(
            f"sample {sample.get('key')!r} holds chunk-by-chunk teacher trajectories, which can only be "
            f"cropped from frame 0 (asked for start {start}); set data.random_crop: false or train "
            "on the whole clip"
        )
    out = dict(sample)
    out["latents"] = sample["latents"][:, start : start + length]
    if "ode_trajectory" in sample:
        out["ode_trajectory"] = sample["ode_trajectory"][:, :, start : start + length]
    if "ode_endpoint" in sample:
        out["ode_endpoint"] = sample["ode_endpoint"][:, start : start + length]
    for name in _PER_FRAME:
        if name in sample:
            out[name] = sample[name][start : start + length]
    return out


def collate_samples(samples: list[dict[str, Any]], text_encoder: TextEncoder | None = None) -> dict[str, Any]:
    """Decoded samples -> a batch dict (see ``docs/data.md``).

    ``latents [B, C, F, h, w]``, ``prompt`` and ``key`` always; ``camera [B, F, 2]``, ``view``,
    ``first_visit`` and ``place [B, F]`` when every sample has them (first visits are recomputed
    from the view ids, so they stay right after any crop); ``text_emb [B, L, D]`` + ``text_mask``
    from stored embeddings, else from ``text_encoder`` when one is given; ``ode_trajectory
    [B, S, C, F, h, w]`` + ``ode_sigmas [B, S]`` when every sample stores teacher ODE states. Clips of
    unequal length are cut to the shortest, with a warning naming the keys.
    """
    frames = [s["latents"].shape[1] for s in samples]
    if len(set(frames)) > 1:
        warnings.warn(
            f"batch mixes clip lengths {dict(zip((s['key'] for s in samples), frames, strict=True))}; "
            f"cutting all to {min(frames)} latent frames (set clip_frames to avoid this)",
            stacklevel=2,
        )
        samples = [crop_sample(s, 0, min(frames)) for s in samples]
    batch: dict[str, Any] = {
        "latents": torch.stack([s["latents"] for s in samples]),
        "prompt": [s["prompt"] for s in samples],
        "key": [s["key"] for s in samples],
    }
    for name in _PER_FRAME:
        if all(name in s for s in samples):
            batch[name] = torch.stack([s[name] for s in samples])
    if "view" in batch:
        batch["first_visit"] = first_visit_from_views(batch["view"])
    if all("ode_trajectory" in s for s in samples):
        if len({len(s["ode_sigmas"]) for s in samples}) > 1:
            levels = {s["key"]: s["ode_sigmas"].tolist() for s in samples}
            raise ValueError(
                f"batch mixes teacher trajectories stored at different numbers of sigmas: {levels}"
            )
        batch["ode_trajectory"] = torch.stack([s["ode_trajectory"] for s in samples])
        batch["ode_sigmas"] = torch.stack([s["ode_sigmas"] for s in samples])
    if any("ode_endpoint" in s for s in samples):
        if not all("ode_endpoint" in s for s in samples):
            raise ValueError("batch mixes chunk-by-chunk teacher trajectories (ode_endpoint) with others")
        batch["ode_endpoint"] = torch.stack([s["ode_endpoint"] for s in samples])
    if all("text_emb" in s for s in samples):
        length = max(s["text_max_length"] for s in samples)
        emb = torch.zeros(len(samples), length, samples[0]["text_emb"].shape[1])
        mask = torch.zeros(len(samples), length, dtype=torch.bool)
        for row, s in enumerate(samples):
            emb[row, : len(s["text_emb"])] = s["text_emb"]
            mask[row, : len(s["text_emb"])] = True
        batch["text_emb"], batch["text_mask"] = emb, mask
    elif text_encoder is not None:
        with torch.no_grad():
            batch["text_emb"], batch["text_mask"] = text_encoder.encode(batch["prompt"])
    return batch


def stable_seed(*parts: int | str) -> int:
    """A 31-bit seed from ints and strings that is the same in every process.

    Python's ``hash`` of a string changes from process to process (``PYTHONHASHSEED``), so a seed
    built on it (as webdataset's ``make_seed`` is) would give a resumed run, or another rank, other
    shuffles and crops than the run it continues.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def _stream_seed(seed: int, passes: Tensor, rank: int, tag: str) -> int:
    """Seed for one worker's random stream: differs per epoch pass, rank, worker and purpose."""
    info = get_worker_info()
    return stable_seed(seed, int(passes), rank, info.id if info else 0, tag)


def _ordered_shards(
    shards: list[str], shuffle: bool, seed: int, passes: Tensor, rank: int, world_size: int
) -> Iterator[dict[str, str]]:
    """This rank's share of the shard list; the shuffle is the same on every rank, so shares are disjoint."""
    order = list(shards)
    if shuffle:
        random.Random(stable_seed(seed, int(passes))).shuffle(order)
    for url in islice(order, rank, None, world_size):
        yield {"url": url}


def _shuffle_samples(source: Iterable[Any], size: int, seed: int, passes: Tensor, rank: int) -> Iterator[Any]:
    yield from wds.shuffle(size, seed=_stream_seed(seed, passes, rank, "samples"))(iter(source))


def _crop_clips(
    source: Iterable[dict[str, Any]],
    length: int,
    random_start: bool,
    seed: int,
    passes: Tensor,
    rank: int,
    skips: SkipLog,
) -> Iterator[dict[str, Any]]:
    rng = random.Random(_stream_seed(seed, passes, rank, "crop"))
    for sample in source:
        frames = sample["latents"].shape[1]
        if frames < length:
            skips.report(sample["shard"], sample["key"], f"only {frames} latent frames, clip_frames={length}")
            continue
        yield crop_sample(sample, rng.randint(0, frames - length) if random_start else 0, length)


def _resample_seed(seed: int, passes: Tensor, rank: int) -> int:
    return _stream_seed(seed, passes, rank, "shards")


def build_shard_pipeline(
    shards: list[str],
    *,
    batch_size: int,
    skips: SkipLog,
    passes: Tensor,
    train: bool = True,
    resampled: bool = False,
    shuffle_buffer: int = 0,
    clip_frames: int | None = None,
    random_crop: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    text_encoder: TextEncoder | None = None,
) -> wds.DataPipeline:
    """The per-worker webdataset pipeline: shards -> samples -> (shuffle, crop) -> batches.

    ``resampled`` draws shards with replacement from a stream seeded per rank, worker and pass
    (no rank split needed); otherwise shards are (for ``train``) shuffled identically on every rank,
    split by rank and then by DataLoader worker, so every sample is read once per pass by exactly
    one worker of one rank. ``passes`` is a shared counter the :class:`ShardLoader` increments, so
    every epoch draws a fresh order even though workers are re-created from the same pickled
    pipeline. Training drops the last partial batch, evaluation keeps it.
    """
    stages: list[Any] = []
    if resampled:
        stages.append(
            wds.ResampledShards(
                shards, seed=seed, worker_seed=partial(_resample_seed, seed, passes, rank), deterministic=True
            )
        )
    else:
        stages += [
            partial(_ordered_shards, shards, train, seed, passes, rank, world_size),
            wds.split_by_worker,
        ]
    stages += [partial(read_shards, skips=skips), partial(decode_samples, skips=skips)]
    if train and shuffle_buffer > 1:
        stages.append(partial(_shuffle_samples, size=shuffle_buffer, seed=seed, passes=passes, rank=rank))
    if clip_frames is not None:
        stages.append(
            partial(
                _crop_clips,
                length=clip_frames,
                random_start=train and random_crop,
                seed=seed,
                passes=passes,
                rank=rank,
                skips=skips,
            )
        )
    stages.append(
        wds.batched(
            batch_size, collation_fn=partial(collate_samples, text_encoder=text_encoder), partial=not train
        )
    )
    return wds.DataPipeline(*stages)


class ShardLoader:
    """Batches from a shard pipeline through a ``DataLoader``, ``num_batches`` per epoch if given.

    With ``num_batches`` the data is read pass after pass until that many batches are out (the
    ``with_epoch`` idea of webdataset), so every rank runs the same number of steps even when its
    shards hold fewer samples; ``len()`` then tells Lightning the epoch length. Without it, an
    epoch is one pass. Each pass bumps the shared ``passes`` counter (new shuffles and crops).

    Lightning checkpoints the loader's position (:meth:`state_dict`) and restores it before the
    resumed epoch (:meth:`load_state_dict`). A pass's batches are a pure function of its number
    (every shuffle and crop is seeded from (seed, pass, rank, worker)), so the restored loader
    re-creates the saved pass and skips the batches already trained on; those are re-read and
    decoded, not trained on again, because a webdataset stream cannot seek. The resume is exact
    only with ``num_batches``: Lightning fetches one batch ahead from a loader without a length,
    so the loader cannot tell a consumed batch from a prefetched one; it then restarts the saved
    pass from its start (same order as the killed run, its first batches trained on twice).
    """

    STATE_KEYS = frozenset({"pass", "pass_batches", "epoch_batches", "epoch_done"})
    """Keys of :meth:`state_dict`, checked on load so a foreign state fails with their names."""

    def __init__(
        self,
        pipeline: wds.DataPipeline,
        passes: Tensor,
        num_workers: int = 0,
        num_batches: int | None = None,
        skips: SkipLog | None = None,
        on_skips: Callable[[int], None] | None = None,
    ) -> None:
        if num_batches is not None and num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        self.loader = DataLoader(pipeline, batch_size=None, num_workers=num_workers)
        self.passes = passes
        self.num_batches = num_batches
        self.skips = skips
        self.on_skips = on_skips
        self._reported = 0
        self._pass_batches = 0
        self._epoch_batches = 0
        self._epoch_done = False
        self._skip = 0
        self._resume_batches = 0

    def _check_skips(self) -> None:
        """Hand a changed skip total to ``on_skips`` (runs in the main process, e.g. to log it)."""
        if self.skips is not None and self.on_skips is not None and self.skips.total != self._reported:
            self._reported = self.skips.total
            self.on_skips(self._reported)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("this ShardLoader reads one pass per epoch; its length is unknown")
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # Counted before each yield: with a length Lightning never asks for a batch past the
        # last one, so a count after the yield would miss the last batch of an epoch.
        skip, self._skip = self._skip, 0
        self._epoch_batches, self._resume_batches = self._resume_batches, 0
        self._epoch_done = False
        while True:
            self.passes += 1
            self._pass_batches = 0
            for batch in self.loader:
                self._check_skips()
                self._pass_batches += 1
                if self._pass_batches <= skip:
                    continue
                self._epoch_batches += 1
                self._epoch_done = self._epoch_batches == self.num_batches
                yield batch
                if self._epoch_done:
                    return
            self._check_skips()
            if self._pass_batches < skip:
                raise RuntimeError(
                    f"the restored pass {int(self.passes)} produced {self._pass_batches} batches, but the "
                    f"checkpoint had consumed {skip} of it: the shards or data settings changed since"
                )
            skip = 0
            if self.num_batches is None:
                self._epoch_done = True
                return
            if self._pass_batches == 0:
                raise RuntimeError(
                    "a full pass over the shards produced no complete batch (all samples skipped, "
                    "or fewer samples than batch_size); see the ShardSkipWarning messages"
                )

    def state_dict(self) -> dict[str, int | bool]:
        """Position of training: the current pass number, batches yielded in it and in this epoch."""
        return {
            "pass": int(self.passes),
            "pass_batches": self._pass_batches,
            "epoch_batches": self._epoch_batches,
            "epoch_done": self._epoch_done,
        }

    def load_state_dict(self, state: dict[str, int | bool]) -> None:
        """Continue the saved pass after its last yielded batch, or start the next pass if the epoch was done.

        Without ``num_batches`` the saved pass restarts from its first batch (see the class docstring).
        """
        missing = self.STATE_KEYS - set(state)
        if missing:
            raise KeyError(
                f"loader state {state} lacks {sorted(missing)}; it was not saved by a ShardLoader"
            )
        self._skip, self._resume_batches = 0, 0
        if state["epoch_done"] or state["pass"] == 0:  # the next epoch, or a state saved before any pass
            self.passes.fill_(state["pass"])
            return
        self.passes.fill_(state["pass"] - 1)  # __iter__ bumps it back to the saved pass
        if self.num_batches is not None:
            self._skip, self._resume_batches = state["pass_batches"], state["epoch_batches"]
