"""Teacher ODE trajectories written as shards: the data of ODE-regression student init (no Lightning here).

Integrating the teacher costs ``2 * ode_steps`` forwards per sample. Doing it once here, instead of in
every training step, makes ODE regression as cheap to train as teacher forcing, lets student runs share
the pairs, and frees the training job from holding the teacher. Each written sample keeps its source's
prompt, text embeddings and per-frame truth (so existing readers and conditions work unchanged),
replaces ``latents`` by the teacher's endpoint, and adds the teacher's states at the student's
denoising levels (``ode_trajectory``) with the levels, settings and noise seed in ``json["ode"]``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from cf_lightning.data.prompts import load_negative_prompt
from cf_lightning.data.shards import collate_samples, encode_sample, open_shard_writer, per_frame_truth
from cf_lightning.diffusion import denoising_sigmas, guided_velocity, ode_trajectory, sampling_sigmas
from cf_lightning.models import WanModel
from cf_lightning.text import TextEncoder

__all__ = ["OdeSettings", "sample_noise", "write_trajectories"]


@dataclass(frozen=True)
class OdeSettings:
    """How the teacher is integrated and where its states are kept (recorded in every sample)."""

    denoising_steps: int
    shift: float
    ode_steps: int
    guidance_scale: float
    noise_seed: int
    teacher: str
    negative_prompt: str | None = None  # embedding file (cf-data prompts) for the unconditional branch

    def __post_init__(self) -> None:
        """Bad steps or shift fail here, before the teacher loads (the schedules name the bad value)."""
        denoising_sigmas(self.denoising_steps, self.shift)
        sampling_sigmas(self.ode_steps, self.shift)

    @property
    def levels(self) -> Tensor:
        """The student's denoising sigmas: the states a StudentModule with these settings regresses from."""
        return denoising_sigmas(self.denoising_steps, self.shift)

    def describe(self, sample_seed: int) -> dict[str, Any]:
        return {
            "sigmas": self.levels.tolist(),
            "denoising_steps": self.denoising_steps,
            "shift": self.shift,
            "ode_steps": self.ode_steps,
            "guidance_scale": self.guidance_scale,
            "noise_seed": sample_seed,
            "teacher": self.teacher,
            "negative_prompt": self.negative_prompt,
        }


def sample_noise(shape: torch.Size | tuple[int, ...], seed: int) -> Tensor:
    """The starting noise of one sample: its own CPU generator, so it does not depend on batching or device."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _batches(
    samples: Iterable[dict[str, Any]], batch_size: int, text: TextEncoder | None, teacher: WanModel
) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """Consecutive samples of equal latent shape, with their collated conditions checked against the teacher."""
    group: list[dict[str, Any]] = []
    for sample in chain(samples, [None]):
        full = len(group) == batch_size
        if group and (sample is None or full or sample["latents"].shape != group[0]["latents"].shape):
            conditions = collate_samples(group, text_encoder=text)
            if "text_emb" not in conditions:
                raise ValueError(
                    f"samples {conditions['key']} carry no prompt embeddings and no --text_encoder "
                    "is set; give one (e.g. hash) that matches the teacher's text_dim"
                )
            _check_fit(teacher, conditions)
            yield group, conditions
            group = []
        if sample is not None:
            group.append(sample)


def _check_fit(teacher: WanModel, conditions: dict[str, Any]) -> None:
    """Fail before integrating when the conditions do not have the input sizes the teacher was trained on."""
    config = teacher.config
    have = {
        "latent channels": conditions["latents"].shape[1],
        "text_dim": conditions["text_emb"].shape[-1],
        "frame_cond_dim (camera)": conditions["camera"].shape[-1] if "camera" in conditions else 0,
    }
    want = {
        "latent channels": config.in_dim,
        "text_dim": config.text_dim,
        "frame_cond_dim (camera)": config.frame_cond_dim,
    }
    wrong = [f"{name} {have[name]} (teacher: {want[name]})" for name in want if have[name] != want[name]]
    if wrong:
        raise ValueError(
            f"samples {conditions['key']} do not fit the teacher: {', '.join(wrong)}; use the "
            "codec, text encoder and world (camera) the teacher was trained with"
        )


def write_trajectories(
    samples: Iterable[dict[str, Any]],
    teacher: WanModel,
    settings: OdeSettings,
    *,
    output: str,
    shard_size: int,
    batch_size: int,
    text: TextEncoder | None,
    device: str,
    total: int | None = None,
) -> int:
    """Integrate ``teacher`` for every condition sample (decoded-shard form) and write trajectory shards.

    Sample ``i`` (in input order) starts from ``sample_noise(shape, settings.noise_seed + i)``: the same
    seed gives the same shards, and another ``batch_size`` the same noise (the teacher's arithmetic may
    then differ in the last bits). Prints progress to stderr; returns the count.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    levels = settings.levels
    negative = None
    if settings.negative_prompt:
        negative = load_negative_prompt(settings.negative_prompt, teacher.config.text_dim).to(device)
    batches = _batches(samples, batch_size, text, teacher)
    first = next(batches, None)  # inputs are checked before any shard is opened
    if first is None:
        raise ValueError("no condition samples to integrate (the input shards hold no readable sample)")
    count, start = 0, time.monotonic()
    with open_shard_writer(output, shard_size) as sink, torch.no_grad():
        for group, conditions in chain([first], batches):
            seeds = [settings.noise_seed + count + row for row in range(len(group))]
            noise = torch.stack([sample_noise(s["latents"].shape, seed) for s, seed in zip(group, seeds)])
            camera = conditions.get("camera")
            velocity = guided_velocity(
                teacher,
                conditions["text_emb"].to(device),
                conditions["text_mask"].to(device),
                None if camera is None else camera.to(device),
                settings.guidance_scale,
                negative,
            )
            endpoint, states = ode_trajectory(
                velocity, noise.to(device), levels, settings.ode_steps, settings.shift
            )
            stored_text = all("text_emb" in s for s in group)
            for row, (sample, seed) in enumerate(zip(group, seeds)):
                meta = {**sample["meta"], "ode": settings.describe(seed)}
                if not stored_text and text is not None:
                    meta["text_encoder"] = text.describe()
                sink.write(
                    encode_sample(
                        sample["key"],
                        endpoint[row].cpu(),
                        sample["prompt"],
                        meta,
                        text_emb=conditions["text_emb"][row, conditions["text_mask"][row]],
                        ode_trajectory=states[row].cpu(),
                        **per_frame_truth(sample),
                    )
                )
            count += len(group)
            print(
                f"trajectories: {count}{'' if total is None else f'/{total}'} samples, "
                f"{time.monotonic() - start:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    return count
