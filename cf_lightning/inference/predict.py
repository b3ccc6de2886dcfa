"""``cf-fit predict``: text-to-video through LightningCLI, on the same streaming path as ``cf-gen``.

:class:`PromptVideos` is the data module of a prediction run: one video per seed, conditioned on a
prompt-switch JSONL, with the codec and text encoder that size the model (``latent_channels`` and
``text_dim`` are linked into the model as for training). A module's ``predict_step`` streams the
latents with :func:`predict_latents` (the chunk loop of ``cf-gen``), and :class:`VideoWriter` decodes
them chunk by chunk into ``<output_dir>/<name>/video.mp4`` and ``latents.npy``, as ``cf-gen`` writes.

    cf-fit predict --config recipes/predict.yaml --ckpt_path student.ckpt \\
        --data.prompts switches.jsonl --trainer.callbacks.init_args.output_dir videos/
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader

from cf_lightning.codecs import LatentCodec
from cf_lightning.components import component_spec
from cf_lightning.inference.conditions import read_prompt_switches, text_conditions
from cf_lightning.inference.loading import run_preset
from cf_lightning.inference.outputs import VideoOutput
from cf_lightning.inference.pipeline import stream_chunks
from cf_lightning.models import WanModel
from cf_lightning.text import TextEncoder
from memory_policies import MemoryPolicy


class PromptVideos(L.LightningDataModule):
    """Prediction inputs: ``len(seeds)`` videos of ``num_frames`` latent frames from one prompt JSONL.

    Args:
        prompts: JSONL of ``{"prompt", "start_frame"}`` switches (one line for a single prompt).
        codec, text_encoder: chosen as in the data modules, by ``class_path`` / ``init_args`` or class
            name (e.g. ``WanVAECodec`` and ``UMT5TextEncoder`` with ``init_args: {path: ...}``).
        height, width: frame size in pixels.
    """

    def __init__(self, prompts: str, num_frames: int, codec: LatentCodec, text_encoder: TextEncoder,
                 height: int = 480, width: int = 832, seeds: list[int] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["codec", "text_encoder"])
        self.hparams["codec"] = component_spec(codec)  # plain records, not modules
        self.hparams["text_encoder"] = component_spec(text_encoder)
        self.switches = read_prompt_switches(prompts)
        self.codec = codec
        self.text = text_encoder
        self.latent_hw = self.codec.latent_size(height, width)
        self.num_frames = num_frames
        self.seeds = seeds if seeds is not None else [0]

    @property
    def latent_channels(self) -> int:
        return self.codec.latent_channels

    @property
    def text_dim(self) -> int:
        return self.text.dim

    @property
    def frame_cond_dim(self) -> int:
        return 0

    def predict_dataloader(self) -> DataLoader:
        conditions = text_conditions(self.text, self.switches, self.text.dim)
        items = [{"name": f"seed_{seed}", "conditions": conditions, "num_frames": self.num_frames,
                  "latent_hw": self.latent_hw, "seed": seed} for seed in self.seeds]
        return DataLoader(items, batch_size=None, collate_fn=lambda item: item)


@torch.no_grad()
def predict_latents(model: WanModel, hparams: dict[str, Any], memory: MemoryPolicy, item: dict[str, Any]
                    ) -> dict[str, Any]:
    """One :class:`PromptVideos` item streamed by a run's backbone with the run's own settings."""
    preset = run_preset(dict(hparams), "this run")
    if preset is None:
        raise ValueError("this module records no chunk_frames/denoising_steps/shift: it is not a causal student")
    chunks = [chunk.cpu() for _, chunk, _ in stream_chunks(model, preset, item["conditions"], item["num_frames"],
                                                           item["latent_hw"], memory, item["seed"])]
    return {"name": item["name"], "latents": torch.cat(chunks, dim=2), "chunk_frames": preset.chunk_frames}


class VideoWriter(BasePredictionWriter):
    """Write each predicted video as ``cf-gen`` does, decoding with the data module's codec."""

    def __init__(self, output_dir: str, fps: float = 16.0) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.fps = fps

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: dict[str, Any],
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        codec = getattr(trainer.datamodule, "codec", None)
        if codec is None:
            raise ValueError(f"{type(self).__name__} decodes with the data module's codec; "
                             f"{type(trainer.datamodule).__name__} has none (use PromptVideos)")
        latents = prediction["latents"]
        output = VideoOutput(self.output_dir / prediction["name"], codec, (latents.shape[1], *latents.shape[3:]),
                             latents.shape[2], self.fps)
        try:
            for chunk in latents.split(prediction["chunk_frames"], dim=2):
                output.write(chunk)
        finally:
            output.close()
