"""Pieces every stage shares: building the backbone from the data's shapes, batch conditioning,
loading backbone weights from an earlier stage, the EMA update of automatically optimized stages,
the optimizer configuration with its learning-rate schedule, and typed setting groups (a frozen
teacher's weights and backbone) with the one recorded form a checkpoint keeps of them."""

from __future__ import annotations

import dataclasses
import math
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable

from cf_lightning.diffusion import null_text
from cf_lightning.distributed import is_sharded_checkpoint, read_sharded_checkpoint, shard_backbones
from cf_lightning.ema import EMA
from cf_lightning.lora import fold_lora_state_dict
from cf_lightning.models import WanConfig, WanModel
from cf_lightning.models.attention import Backend
from cf_lightning.stages.moved_settings import RefusesMovedSettings


@dataclass(frozen=True)
class TeacherWeights:
    """A frozen teacher backbone: where its weights come from and, when it differs from the student's,
    its config.

    Args:
        init_from: the teacher's weights (a ``.ckpt`` of an earlier stage or a Wan checkpoint).
        backbone: the teacher's named backbone when it differs from the student's; unset, it is the
            student's ``backbone`` with the student's ``backbone_overrides``.
        backbone_overrides: config fields changed on ``backbone`` (only read when ``backbone`` is set).
    """

    init_from: str | None = None
    backbone: str | None = None
    backbone_overrides: dict[str, Any] | None = None

    def build(self, student_backbone: str, student_overrides: dict[str, Any] | None, latent_channels: int,
              text_dim: int, frame_cond_dim: int, attention_backend: Backend,
              gradient_checkpointing: bool = False) -> WanModel:
        """The teacher's backbone (its own config, or the student's when ``backbone`` is unset), without
        weights."""
        name, overrides = ((self.backbone, self.backbone_overrides) if self.backbone
                           else (student_backbone, student_overrides))
        return build_backbone(name, latent_channels, text_dim, frame_cond_dim, overrides, attention_backend,
                              gradient_checkpointing)


Group = TypeVar("Group")


def as_group(kind: type[Group], value: Group | Mapping[str, Any] | None, name: str) -> Group:
    """``value`` as the dataclass ``kind``: the object itself, its defaults for ``None``, or built from a
    mapping (a checkpoint's hyper-parameters, or Python callers), refusing keys the group does not
    define."""
    if value is None:
        return kind()
    if isinstance(value, kind):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a {kind.__name__} or a mapping of its fields, got {value!r}")
    fields = [field.name for field in dataclasses.fields(kind)]  # type: ignore[arg-type]
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ValueError(f"{name} has no setting(s) {unknown}; allowed: {', '.join(fields)}")
    return kind(**value)


def record_groups(module: L.LightningModule, **groups: object) -> None:
    """Record each setting group given as a dataclass in ``module.hparams`` as a plain mapping of its
    fields, the form LightningCLI records it in (as config, which is kept), so a checkpoint reads the
    same however the module was built."""
    for name, group in groups.items():
        if dataclasses.is_dataclass(module.hparams.get(name)):
            module.hparams[name] = {field.name: getattr(group, field.name)
                                    for field in dataclasses.fields(group)}  # type: ignore[arg-type]


class EMAAfterStep(RefusesMovedSettings):
    """A stage trained by automatic optimization whose ``ema`` backbone follows ``model`` by ``ema_rule``.

    The EMA is updated right after each optimizer step, not in ``on_train_batch_end``: Lightning runs
    the checkpoint callbacks' batch-end hooks before the module's, so a checkpoint saved at batch end
    would otherwise hold an EMA one step behind its weights.
    """

    model: WanModel
    ema: WanModel
    ema_rule: EMA

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # the step count once this step is done
        self.ema_rule.update(self.ema, self.model, self.global_step + 1)

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy`` (FSDP2) both backbones are sharded block by block."""
        if self.device_mesh is not None:
            shard_backbones(self.device_mesh, [self.model, self.ema])


def optimizer_config(optimizer: torch.optim.Optimizer, lr_scheduler: LRSchedulerCallable | None
                     ) -> dict[str, Any]:
    """Lightning's configuration of one optimizer, its scheduler (if any) stepped per optimizer step."""
    config: dict[str, Any] = {"optimizer": optimizer}
    if lr_scheduler is not None:
        config["lr_scheduler"] = {"scheduler": lr_scheduler(optimizer), "interval": "step"}
    return config


@dataclass(frozen=True)
class Condition:
    """What the backbone is conditioned on, besides latents and timesteps."""

    context: torch.Tensor  # [B, L, text_dim]
    context_mask: torch.Tensor | None  # [B, L]
    frame_cond: torch.Tensor | None  # [B, F, k]

    def frames(self, part: slice) -> torch.Tensor | None:
        return None if self.frame_cond is None else self.frame_cond[:, part]


def build_backbone(backbone: str, latent_channels: int, text_dim: int, frame_cond_dim: int,
                   overrides: dict[str, Any] | None, attention_backend: Backend,
                   gradient_checkpointing: bool) -> WanModel:
    """A named Wan config whose input/output/text/condition sizes come from the data, not constants."""
    config = WanConfig.from_name(backbone, in_dim=latent_channels, out_dim=latent_channels, text_dim=text_dim,
                                 frame_cond_dim=frame_cond_dim, **(overrides or {}))
    model = WanModel(config, attention_backend=attention_backend)
    model.gradient_checkpointing = gradient_checkpointing
    return model


def batch_condition(batch: dict[str, Any], drop_text: float = 0.0,
                    generator: torch.Generator | list[torch.Generator] | None = None) -> Condition:
    """Condition from a data batch (``text_emb``, ``text_mask``, ``camera``); ``drop_text`` zeroes the
    text of that fraction of samples, so the model also learns the unconditional score for CFG. With a
    list of generators, video ``b`` draws its dropout from ``generator[b]``."""
    if "text_emb" not in batch:
        raise KeyError(f"batch has no 'text_emb' (keys: {sorted(batch)}); configure the data module with a "
                       "text encoder or shards that carry prompt embeddings")
    context = batch["text_emb"].float()
    if drop_text > 0:
        draws = (torch.cat([torch.rand(1, generator=g) for g in generator]) if isinstance(generator, list)
                 else torch.rand(context.shape[0], generator=generator))
        drop = draws < drop_text
        context = torch.where(drop.to(context.device)[:, None, None], null_text(context), context)
    camera = batch.get("camera")
    return Condition(context, batch.get("text_mask"), None if camera is None else camera.float())


def load_backbone_weights(model: WanModel, path: str, prefer_ema: bool = True) -> str:
    """Load backbone weights from a Lightning checkpoint of an earlier stage or a Wan checkpoint.

    From a ``.ckpt`` the EMA weights (``ema.*``) are preferred when present, else ``model.*``;
    returns which prefix was used. Any missing or unexpected key is an error naming the keys.
    """
    file = _existing(path)
    if file.suffix != ".ckpt":
        from cf_lightning.models.checkpoint import load_wan

        loaded = load_wan(path, config=model.config)
        model.load_state_dict(loaded.state_dict())
        return "wan"
    return _load_lightning_weights(model, read_lightning_checkpoint(file)["state_dict"], path,
                                   ["ema.", "model."] if prefer_ema else ["model.", "ema."])


def load_backbone(path: str, attention_backend: Backend = "sdpa") -> WanModel:
    """A trained backbone (EMA weights preferred) in eval mode, built from the config stored with it.

    A command that only runs a trained model (``cf-data trajectories``) then needs no size options: a
    Wan checkpoint carries its config, a ``.ckpt`` its module's ``backbone``, ``backbone_overrides`` and
    data shapes (``latent_channels``, ``text_dim``, ``frame_cond_dim``).
    """
    file = _existing(path)
    if file.suffix != ".ckpt":
        from cf_lightning.models.checkpoint import load_wan

        return load_wan(path, attention_backend=attention_backend)
    return backbone_from_run(read_lightning_checkpoint(file), path, attention_backend=attention_backend)


def backbone_from_run(
    checkpoint: dict[str, Any],
    path: str,
    prefixes: tuple[str, ...] = ("ema", "model", "student"),
    attention_backend: Backend = "sdpa",
) -> WanModel:
    """The backbone saved in a module checkpoint, rebuilt from its hyper-parameters alone.

    Only the config recorded with the run and the weights under the first of ``prefixes`` present are
    read: no init file named in the hyper-parameters (teacher, critic, student init) is opened, so a
    checkpoint copied anywhere loads. LoRA adapters (``lora_rank > 0``) are folded into the weights.
    """
    hparams = checkpoint.get("hyper_parameters", {})
    needed = ("backbone", "latent_channels", "text_dim", "frame_cond_dim")
    missing = [name for name in needed if name not in hparams]
    if missing:
        raise ValueError(f"checkpoint {path!r} records no {missing} in its hyper-parameters, so its backbone "
                         "cannot be rebuilt; export it with `cf-export` and pass the .safetensors file")
    model = build_backbone(
        hparams["backbone"],
        hparams["latent_channels"],
        hparams["text_dim"],
        hparams["frame_cond_dim"],
        hparams.get("backbone_overrides"),
        attention_backend,
        False,
    )
    state = checkpoint["state_dict"]
    if hparams.get("lora_rank", 0) > 0:
        state = fold_lora_state_dict(state, float(hparams.get("lora_alpha", 1.0)))
    _load_lightning_weights(model, state, path, [f"{prefix}." for prefix in prefixes])
    return model.eval()


def _existing(path: str) -> Path:
    file = Path(path)
    if not file.exists():
        hint = ""
        if path == "None":  # what jsonargparse makes of a dotted `--model.<group>.init_from null`
            hint = ("; to unset a group's init_from on the command line, give the group as a mapping: "
                    "--model.teacher '{init_from: null}'")
        raise FileNotFoundError(f"backbone checkpoint {path!r} does not exist{hint}")
    return file


def read_lightning_checkpoint(file: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint, memory-mapped (weights nobody reads, such as the teacher's and the
    critic's, are never loaded), or a sharded checkpoint directory gathered whole (FSDP2 runs)."""
    if is_sharded_checkpoint(file):
        return read_sharded_checkpoint(file, read_lightning_checkpoint)
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        # Checkpoints of modules built in Python (not through cf-fit) pickle their config objects.
        warnings.warn(
            f"{file} stores Python objects in its hyper-parameters; loading it with full unpickling, "
            "which runs code from the file: only do this for checkpoints you made",
            stacklevel=3,
        )
        return torch.load(file, map_location="cpu", weights_only=False, mmap=True)


def _load_lightning_weights(
    model: WanModel, state: dict[str, torch.Tensor], path: str, prefixes: list[str]
) -> str:
    """Copy the backbone under the first of ``prefixes`` found in a module's state dict into ``model``;
    returns the prefix."""
    for prefix in prefixes:
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if weights:
            missing, unexpected = model.load_state_dict(weights, strict=False)
            if missing or unexpected:
                raise ValueError(f"checkpoint {path!r} ({prefix}*) does not fit this backbone: missing keys "
                                 f"{missing[:10]} ({len(missing)}), unexpected keys {unexpected[:10]} "
                                 f"({len(unexpected)})")
            return prefix.rstrip(".")
    raise ValueError(
        f"checkpoint {path!r} holds no backbone weights (no {', '.join(p + '*' for p in prefixes)} keys)"
    )


def check_finite(step: int, **terms: torch.Tensor) -> None:
    """Stop the run before an optimizer step would write NaN/inf into the weights.

    Raising here leaves the last checkpoint as the last good one; the message names the step and
    the offending loss term. Costs one host sync per training step.
    """
    values = torch.stack([t.detach().float().reshape(()) for t in terms.values()])
    if not bool(torch.isfinite(values).all()):
        bad = {name: float(value) for name, value in zip(terms, values.tolist()) if not math.isfinite(value)}
        raise FloatingPointError(
            f"non-finite loss at step {step}: {bad}; stopping before the optimizer step, "
            "the last saved checkpoint is the last good one"
        )
