"""Load only the network that generates, from any checkpoint a user may hold.

* a ``cf-fit`` checkpoint (``.ckpt``) of any stage: the backbone is rebuilt from the run's saved
  hyper-parameters and its EMA weights; no teacher, critic or init file is read, so the file works
  wherever it is copied. The run's chunking, schedule and memory policy become the ``ours`` preset,
  and its data module settings (codec, text encoder, world) the defaults of ``cf-gen``;
* every layout :func:`cf_lightning.models.checkpoint.load_wan` reads: exported or original Wan2.1
  safetensors, diffusers ``WanTransformer3DModel`` folders and Self-Forcing / LongLive / Context
  Forcing ``.pt`` files. These carry no inference settings: a preset names them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cf_lightning.inference.conditions import parse_policy
from cf_lightning.inference.presets import OURS, InferencePreset
from cf_lightning.models import WanConfig, WanModel
from cf_lightning.models.checkpoint import load_wan
from memory_policies import MemoryPolicy, SlowFast

RUN_SUFFIX = ".ckpt"
EMA_FIRST = ("ema", "model", "student")
LIVE_FIRST = ("model", "student", "ema")
"""Where the stages keep their backbones in a ``.ckpt``: the EMA weights first, or the live ones."""


@dataclass
class LoadedGenerator:
    """A causal student ready to stream, with what its checkpoint says about running it."""

    model: WanModel
    source: Path
    preset: InferencePreset | None = None  # the run's own settings ("ours"); None when the file has none
    data_settings: dict[str, Any] = field(default_factory=dict)  # the run's data module hyper-parameters


def load_generator(path: str | Path, live: bool = False, use_ema: bool = False,
                   config: WanConfig | None = None) -> LoadedGenerator:
    """Load the generating backbone (eval mode, CPU, float32) from ``path`` (see the module docstring).

    ``live`` takes a run's live weights instead of its EMA; ``use_ema`` picks ``generator_ema`` in a
    Self-Forcing-style ``.pt`` (their EMA, which such files keep under another name). ``config`` is for
    Wan checkpoints that carry none and are not a released size (``.pt`` files ship without one).
    """
    from cf_lightning.stages.common import backbone_from_run, read_lightning_checkpoint

    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(f"no checkpoint at {source}")
    if source.suffix != RUN_SUFFIX:
        if live:
            raise ValueError(
                f"live=True picks a run's live weights over its EMA in a {RUN_SUFFIX} file; {source} "
                "is a Wan checkpoint"
            )
        return LoadedGenerator(load_wan(source, config=config, use_ema=use_ema), source)
    if config is not None:
        raise ValueError(f"{source} is a run checkpoint, which records its own config; leave config out")
    saved = read_lightning_checkpoint(source)
    model = backbone_from_run(saved, str(source), LIVE_FIRST if live else EMA_FIRST)
    hparams = saved.get("hyper_parameters") or {}
    return LoadedGenerator(model, source, run_preset(hparams, str(source)),
                           dict(saved.get("datamodule_hyper_parameters") or {}))


def run_preset(hparams: dict[str, Any], source: str) -> InferencePreset | None:
    """The ``ours`` preset from a run's hyper-parameters; ``None`` for stages that never stream (teachers)."""
    if not all(name in hparams for name in ("chunk_frames", "denoising_steps", "shift")):
        return None
    memory = hparams.get("memory")
    return InferencePreset(OURS, chunk_frames=int(hparams["chunk_frames"]),
                           denoising_steps=int(hparams["denoising_steps"]), shift=float(hparams["shift"]),
                           make_memory=lambda: saved_policy(memory), source=f"hyper-parameters of {source}")


def saved_policy(saved: object) -> MemoryPolicy:
    """A memory policy as a run saved it: the object itself, or its ``{class_path, init_args}`` config."""
    if saved is None:
        return SlowFast()  # the modules' default when no policy was configured
    if isinstance(saved, MemoryPolicy):
        return saved
    return parse_policy(json.dumps(saved))
