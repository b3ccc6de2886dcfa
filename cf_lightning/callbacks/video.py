"""Generate a long video from the student at the end of fit (and optionally every validation)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from cf_lightning.callbacks.tensorboard import AblationDashboard, log_video
from cf_lightning.codecs import unit_to_uint8
from cf_lightning.data.video_write import write_mp4
from cf_lightning.memory_timeline import TimelineRecorder, render_timeline, write_timeline


class LongVideoWriter(pl.Callback):
    """Streams ``num_frames`` latent frames with the module's ``generate_for`` on the first
    validation batch's conditions, decodes them with the data module's codec and writes
    ``videos/step_<n>.mp4`` plus ``.npy`` latents into the run directory (and a GIF to TensorBoard), with
    the memory timeline of the first video (``videos/step_<n>_memory.png`` and TensorBoard's
    ``samples/memory_timeline`` image; see :mod:`cf_lightning.memory_timeline`).
    """

    def __init__(self, num_frames: int | None = None, every_validation: bool = False, fps: float = 8.0,
                 max_videos: int = 2) -> None:
        self.num_frames = num_frames
        self.every_validation = every_validation
        self.fps = fps
        self.max_videos = max_videos

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_validation and not trainer.sanity_checking:
            self.write(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer, pl_module)

    @torch.no_grad()
    def write(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path | None:
        datamodule = trainer.datamodule
        generate_for = getattr(pl_module, "generate_for", None)
        codec = getattr(datamodule, "codec", None)
        if generate_for is None or codec is None or trainer.log_dir is None:
            return None
        batch = next(iter(datamodule.val_dataloader()))
        batch = {
            k: (v[: self.max_videos] if isinstance(v, (torch.Tensor, list)) else v) for k, v in batch.items()
        }
        batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
        memory = getattr(pl_module, "memory", None)
        with TimelineRecorder(memory) if memory is not None else contextlib.nullcontext() as recorder:
            latents = generate_for(batch, seed=0, num_frames=self.num_frames)
        if not trainer.is_global_zero:
            return None
        pixels = codec.decode(latents.float().cpu())  # [B, 3, T, H, W] in [-1, 1]
        frames = unit_to_uint8(pixels[0]).permute(1, 0, 2, 3)  # [T, 3, H, W]
        folder = Path(trainer.log_dir) / "videos"
        path = write_mp4(folder / f"step_{trainer.global_step}.mp4", frames, self.fps)
        np.save(
            folder / f"step_{trainer.global_step}_latents.npy",
            latents.float().cpu().numpy().astype(np.float16),
        )
        logger = AblationDashboard._logger(trainer)
        if logger is not None:
            log_video(logger, "samples/long_video", frames.float() / 255.0, trainer.global_step, self.fps)
        if recorder is not None and recorder.timelines:
            timeline = render_timeline(
                recorder.timelines[0],
                pl_module.hparams.chunk_frames,
                batch["first_visit"][0].cpu() if "first_visit" in batch else None,
                title=f"{type(memory).__name__}: memory per chunk, step {trainer.global_step}",
            )
            write_timeline(str(folder / f"step_{trainer.global_step}_memory.png"), timeline)
            if logger is not None:
                logger.experiment.add_image(
                    "samples/memory_timeline", timeline, trainer.global_step, dataformats="HWC"
                )
        return path
