"""Load and save :class:`WanModel` weights in the three layouts the ecosystem publishes.

* ``wan``: the original Wan2.1 release (``Wan-AI/Wan2.1-T2V-*``): safetensors with our module names,
  one file or shards plus ``*.safetensors.index.json``, and Wan's ``config.json``;
* ``diffusers``: ``WanTransformer3DModel`` (``save_pretrained`` / ``from_pretrained`` directories);
* ``self_forcing``: Self-Forcing / LongLive / Context Forcing training checkpoints, a torch pickle
  holding ``generator`` and/or ``generator_ema`` state dicts whose keys carry wrapper prefixes.

Everything converts to the ``wan`` key names, which are :class:`WanModel`'s own, so one strict
check (missing keys, unexpected keys, shapes) guards every path. Writes go to a temporary file that
is renamed over the target, so an interrupted save never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch

from cf_lightning.models.attention import Backend
from cf_lightning.models.config import WanConfig
from cf_lightning.models.wan import WanModel

log = logging.getLogger(__name__)

Layout = Literal["auto", "wan", "diffusers", "self_forcing"]
SaveLayout = Literal["wan", "diffusers"]
LAYOUTS: tuple[str, ...] = ("auto", "wan", "diffusers", "self_forcing")
SAVE_LAYOUTS: tuple[str, ...] = ("wan", "diffusers")
PICKLE_SUFFIXES: tuple[str, ...] = (".pt", ".pth")
WEIGHTS_NAME = "diffusion_pytorch_model"  # both Wan and diffusers name their weight files this way
CONFIG_NAME = "config.json"
WRAPPER_COMPONENTS: frozenset[str] = frozenset(
    {"_fsdp_wrapped_module", "_orig_mod", "_checkpoint_wrapped_module"}
)
"""Module names that FSDP, ``torch.compile`` and activation checkpointing insert anywhere in a key."""
LEADING_PREFIXES: tuple[str, ...] = ("model.", "module.")
"""Self-Forcing's ``WanDiffusionWrapper.model`` and DDP's ``module`` in front of the backbone's keys."""
DIFFUSERS_CLASS = "WanTransformer3DModel"
WAN_CLASS = "WanModel"
WAN_HEAD_DIM = 128
"""Every released Wan2.1/2.2 size uses 128-channel heads: the only way to read ``num_heads`` off weights."""
_SHOWN = 10

# Wan module path -> diffusers module path; parameter names (weight/bias) follow unchanged.
_TOP_LEVEL: dict[str, str] = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "head.modulation": "scale_shift_table",
}
_ATTENTION: dict[str, str] = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "norm_q": "norm_q",
                              "norm_k": "norm_k"}
_PER_BLOCK: dict[str, str] = {
    **{f"self_attn.{ours}": f"attn1.{theirs}" for ours, theirs in _ATTENTION.items()},
    **{f"cross_attn.{ours}": f"attn2.{theirs}" for ours, theirs in _ATTENTION.items()},
    # Wan applies norm1 (self-attn), norm3 (cross-attn), norm2 (ffn); diffusers renumbers them in call
    # order. Only the cross-attention norm has parameters.
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    "modulation": "scale_shift_table",
}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class WanCheckpoint:
    """A state dict already renamed to :class:`WanModel`'s keys, with the config stored beside it.

    ``config`` is ``None`` when the checkpoint carries none (Self-Forcing ``.pt`` files, bare
    safetensors); ``layout`` is the layout that was actually read (never ``auto``).
    """

    state_dict: dict[str, torch.Tensor]
    config: WanConfig | None
    layout: str


# ---------------------------------------------------------------------------------------- key names
def _convert_key(key: str, table: Mapping[str, str]) -> str | None:
    """Rename by the longest matching module path; ``None`` when no rule covers the key."""
    for source in sorted(table, key=len, reverse=True):
        if key == source or key.startswith(source + "."):
            return table[source] + key[len(source):]
    return None


def _rename(state_dict: Mapping[str, torch.Tensor], top: Mapping[str, str], block: Mapping[str, str]
            ) -> dict[str, torch.Tensor]:
    """Rename every key; a key no rule covers is an error, never silently dropped or kept."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        match = _BLOCK_KEY.match(key)
        if match:
            rest = _convert_key(match.group(2), block)
            renamed = None if rest is None else f"blocks.{match.group(1)}.{rest}"
        else:
            renamed = _convert_key(key, top)
        if renamed is None:
            unknown.append(key)
        else:
            out[renamed] = value
    if unknown:
        raise ValueError(
            f"cannot convert {_listing(unknown)}: no parameter of the Wan2.1 text-to-video backbone "
            "has these names (image-conditioning and adapter weights are not supported)"
        )
    return out


def wan_to_diffusers_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original Wan2.1 key names -> ``WanTransformer3DModel`` key names (same tensors, same shapes)."""
    frame_cond = sorted(k for k in state_dict if k.startswith("frame_cond_embedding."))
    if frame_cond:
        raise ValueError(
            f"{_listing(frame_cond)} belong to the frame_cond extension (WanConfig.frame_cond_dim > 0), "
            "which has no diffusers WanTransformer3DModel equivalent; save in the 'wan' layout"
        )
    return _rename(state_dict, _TOP_LEVEL, _PER_BLOCK)


def diffusers_to_wan_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``WanTransformer3DModel`` key names -> original Wan2.1 key names (same tensors, same shapes)."""
    return _rename(state_dict, {v: k for k, v in _TOP_LEVEL.items()}, {v: k for k, v in _PER_BLOCK.items()})


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove FSDP / compile / activation-checkpointing components and a leading ``model.``/``module.``.

    Training code saves whatever its wrappers named things (``model._fsdp_wrapped_module.blocks.0...``);
    the weights underneath are the plain backbone's.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = ".".join(part for part in key.split(".") if part not in WRAPPER_COMPONENTS)
        while name.startswith(LEADING_PREFIXES):
            name = name.split(".", 1)[1]
        if name in out:
            raise ValueError(f"two checkpoint keys both become {name!r} once wrapper prefixes are stripped")
        out[name] = value
    return out


def detect_key_layout(keys: Iterable[str], source: str = "state dict") -> Literal["wan", "diffusers"]:
    """Tell the two key namings apart by names only one of them uses."""
    keys = list(keys)
    diffusers = any(k.startswith(("condition_embedder.", "proj_out.")) or ".attn1." in k for k in keys)
    wan = any(
        k.startswith(("time_embedding.", "text_embedding.", "head.")) or ".self_attn." in k for k in keys
    )
    if diffusers != wan:
        return "diffusers" if diffusers else "wan"
    raise ValueError(
        f"cannot recognise the layout of {source}: found keys {_shown(sorted(keys))}; allowed layouts: "
        "'wan' (keys like 'blocks.0.self_attn.q.weight'), 'diffusers' ('blocks.0.attn1.to_q.weight'), "
        "'self_forcing' (a .pt/.pth pickle with 'generator'/'generator_ema')"
    )


# ---------------------------------------------------------------------------------------- configs
_WAN_DEFAULTS: dict[str, object] = {
    "model_type": "t2v",
    "patch_size": (1, 2, 2),
    "text_len": 512,
    "in_dim": 16,
    "dim": 2048,
    "ffn_dim": 8192,
    "freq_dim": 256,
    "text_dim": 4096,
    "out_dim": 16,
    "num_heads": 16,
    "num_layers": 32,
    "window_size": (-1, -1),
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-6,
}
"""``wan.modules.model.WanModel.__init__`` defaults: Wan's own config.json omits several of them."""
_WAN_WRITTEN = (
    "dim",
    "eps",
    "ffn_dim",
    "freq_dim",
    "in_dim",
    "model_type",
    "num_heads",
    "num_layers",
    "out_dim",
    "text_len",
)
"""The fields Wan itself writes to config.json; others are written only when they differ from its defaults."""


def _as_json(value: object) -> object:
    """Tuples and lists compare equal once both are lists, as they are after a JSON round trip."""
    return list(value) if isinstance(value, tuple) else value


def _require_default(values: Mapping[str, Any], name: str, expected: object, what: str) -> None:
    value = values.get(name, expected)
    if _as_json(value) != _as_json(expected):
        raise ValueError(
            f"unsupported {name}={value!r} ({what}); this backbone supports only {name}={expected!r}"
        )


def config_from_wan(values: Mapping[str, Any]) -> WanConfig:
    """A :class:`WanConfig` from Wan2.1's ``config.json`` (or our wan-layout one, which adds extension
    fields)."""
    _require_default(
        values, "model_type", "t2v", "image/first-last-frame conditioning adds inputs and weights"
    )
    _require_default(values, "qk_norm", True, "this backbone always normalises queries and keys")
    _require_default(values, "window_size", (-1, -1), "local attention windows are not implemented")
    merged = {**_WAN_DEFAULTS, **values}
    known = {f.name for f in fields(WanConfig)}
    return WanConfig(**{name: merged[name] for name in known if name in merged})


def config_to_wan(config: WanConfig) -> dict[str, Any]:
    """Wan2.1's ``config.json`` for ``config``: identical to Wan's own file for Wan-architecture configs."""
    values: dict[str, Any] = {
        "_class_name": WAN_CLASS,
        **{k: _WAN_DEFAULTS[k] for k in ("model_type", "text_len")},
    }
    for field in fields(WanConfig):
        value = _as_json(getattr(config, field.name))
        if field.name in _WAN_WRITTEN or value != _as_json(_WAN_DEFAULTS.get(field.name, field.default)):
            values[field.name] = value
    return dict(sorted(values.items()))


def config_from_diffusers(values: Mapping[str, Any]) -> WanConfig:
    """A :class:`WanConfig` from a ``WanTransformer3DModel`` ``config.json``.

    ``qk_norm`` and ``rope_max_seq_len`` need no field: diffusers always builds the across-heads RMSNorm
    Wan uses (whatever ``qk_norm`` says), and our RoPE is computed for any position.
    """
    name = values.get("_class_name", DIFFUSERS_CLASS)
    if name != DIFFUSERS_CLASS:
        raise ValueError(f"config is for {name!r}; only {DIFFUSERS_CLASS!r} converts to this backbone")
    for extra in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len"):
        _require_default(values, extra, None, "image conditioning adds inputs and weights")
    # defaults: WanTransformer3DModel.__init__'s, for fields a config.json leaves out
    heads = int(values.get("num_attention_heads", 40))
    in_dim = int(values.get("in_channels", 16))
    return WanConfig(
        dim=heads * int(values.get("attention_head_dim", 128)),
        ffn_dim=int(values.get("ffn_dim", 13824)),
        num_heads=heads,
        num_layers=int(values.get("num_layers", 40)),
        in_dim=in_dim,
        out_dim=int(values.get("out_channels") or in_dim),
        text_dim=int(values.get("text_dim", 4096)),
        freq_dim=int(values.get("freq_dim", 256)),
        patch_size=tuple(values.get("patch_size", (1, 2, 2))),
        eps=float(values.get("eps", 1e-6)),
        cross_attn_norm=bool(values.get("cross_attn_norm", True)),
    )


def config_to_diffusers(config: WanConfig) -> dict[str, Any]:
    """``WanTransformer3DModel`` ``config.json`` for ``config``; refuses what diffusers cannot express."""
    if config.frame_cond_dim:
        raise ValueError(f"frame_cond_dim={config.frame_cond_dim}: the frame_cond extension has no diffusers "
                         "WanTransformer3DModel equivalent; save this model in the 'wan' layout")
    if config.rope_theta != 10000.0:
        raise ValueError(
            f"rope_theta={config.rope_theta}: diffusers' WanTransformer3DModel fixes RoPE theta to "
            "10000; save this model in the 'wan' layout"
        )
    return {
        "_class_name": DIFFUSERS_CLASS,
        "added_kv_proj_dim": None,
        "attention_head_dim": config.head_dim,
        "cross_attn_norm": config.cross_attn_norm,
        "eps": config.eps,
        "ffn_dim": config.ffn_dim,
        "freq_dim": config.freq_dim,
        "image_dim": None,
        "in_channels": config.in_dim,
        "num_attention_heads": config.num_heads,
        "num_layers": config.num_layers,
        "out_channels": config.out_dim,
        "patch_size": list(config.patch_size),
        "pos_embed_seq_len": None,
        "qk_norm": "rms_norm_across_heads",
        "rope_max_seq_len": 1024,
        "text_dim": config.text_dim,
    }


def config_from_json(values: Mapping[str, Any], source: str = "config") -> WanConfig:
    """Either ``config.json`` flavour, told apart by its class name or its field names."""
    name = values.get("_class_name")
    if name == DIFFUSERS_CLASS or (name is None and "num_attention_heads" in values):
        return config_from_diffusers(values)
    if name == WAN_CLASS or (name is None and "dim" in values and "num_heads" in values):
        return config_from_wan(values)
    raise ValueError(
        f"cannot read {source}: _class_name={name!r}, fields {sorted(values)}; expected a Wan2.1 "
        f"config ({WAN_CLASS!r}: dim, num_heads, ...) or a diffusers one ({DIFFUSERS_CLASS!r})"
    )


def infer_config(state_dict: Mapping[str, torch.Tensor], num_heads: int | None = None) -> WanConfig:
    """Read a config off wan-layout weight shapes (for ``.pt`` files that ship without one).

    Shapes fix everything but the head count and ``eps``; heads default to Wan's 128 channels each and
    ``eps`` to Wan's 1e-6, so pass an explicit config for anything that is not a released Wan size.
    A frame-condition embedding is read as a raw condition (``frame_cond_frequencies=0``): its input width
    ``frame_cond_dim * (1 + 2 K)`` cannot be split into the two from shapes alone.
    """
    needed = ("patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
              "blocks.0.ffn.0.weight", "head.head.weight")
    missing = [key for key in needed if key not in state_dict]
    if missing:
        raise ValueError(f"cannot infer a config: the checkpoint lacks {_listing(missing)}; pass config=...")
    dim, in_dim, *patch = state_dict["patch_embedding.weight"].shape
    if num_heads is None:
        if dim % WAN_HEAD_DIM:
            raise ValueError(
                f"cannot infer num_heads for dim={dim}: released Wan models use {WAN_HEAD_DIM}-channel "
                f"heads but {dim} is not a multiple of {WAN_HEAD_DIM}; pass config=..."
            )
        num_heads = dim // WAN_HEAD_DIM
    frame_cond = state_dict.get("frame_cond_embedding.0.weight")
    return WanConfig(
        dim=dim,
        ffn_dim=state_dict["blocks.0.ffn.0.weight"].shape[0],
        num_heads=num_heads,
        num_layers=1 + max(int(m.group(1)) for key in state_dict if (m := _BLOCK_KEY.match(key))),
        in_dim=in_dim,
        out_dim=state_dict["head.head.weight"].shape[0] // math.prod(patch),
        text_dim=state_dict["text_embedding.0.weight"].shape[1],
        freq_dim=state_dict["time_embedding.0.weight"].shape[1],
        patch_size=tuple(patch),
        cross_attn_norm="blocks.0.norm3.weight" in state_dict,
        frame_cond_dim=0 if frame_cond is None else frame_cond.shape[1],
    )


# ---------------------------------------------------------------------------------------- reading
def _safetensors() -> ModuleType:
    """safetensors ships with the ``wan`` extra; the core package must import without it."""
    try:
        import safetensors.torch
    except ImportError as error:
        raise ImportError(
            "safetensors checkpoints need the `safetensors` package: pip install 'cf-lightning[wan]'"
        ) from error
    return safetensors.torch


def _read_safetensors_file(
    path: Path, device: torch.device | str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    _safetensors()
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=str(device)) as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a Mapping
        return tensors, handle.metadata() or {}


def _read_safetensors_dir(directory: Path, device: torch.device | str) -> dict[str, torch.Tensor]:
    indexes = sorted(directory.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise ValueError(
            f"{directory} holds several shard indexes {[p.name for p in indexes]}; pass one file's path"
        )
    if indexes:
        weight_map: dict[str, str] = json.loads(indexes[0].read_text())["weight_map"]
        state_dict: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (directory / shard).is_file():
                raise FileNotFoundError(
                    f"{indexes[0].name} lists shard {shard!r}, which is not in {directory}"
                )
            state_dict.update(_read_safetensors_file(directory / shard, device)[0])
        absent = sorted(set(weight_map) - set(state_dict))
        if absent:
            raise ValueError(f"{indexes[0].name} maps {_listing(absent)} to shards that do not contain them")
        return state_dict
    files = sorted(directory.glob("*.safetensors"))
    if len(files) != 1:
        found = [p.name for p in sorted(directory.iterdir())]
        raise ValueError(
            f"{directory} needs one *.safetensors file or a *.safetensors.index.json with shards; found "
            f"{_shown(found)}"
        )
    return _read_safetensors_file(files[0], device)[0]


def _pick_generator(obj: object, path: Path, use_ema: bool) -> Mapping[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise TypeError(f"{path} holds a {type(obj).__name__}, not a dict of state dicts")
    wanted = "generator_ema" if use_ema else "generator"
    if wanted in obj:
        return obj[wanted]
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()) and not use_ema:
        return obj  # a bare state dict
    hint = "; pass use_ema=True to load it" if "generator_ema" in obj else ""
    raise ValueError(
        f"{path} has no {wanted!r} state dict; its top-level keys are {_shown(sorted(map(str, obj)))}{hint}"
    )


def _read_safetensors_path(path: Path, device: torch.device | str
                           ) -> tuple[dict[str, torch.Tensor], Mapping[str, Any] | None, str]:
    """Weights plus the stored config and where it came from (``config.json`` or the file's metadata)."""
    if path.is_dir():
        state_dict = _read_safetensors_dir(path, device)
        config_file = path / CONFIG_NAME
    else:
        state_dict, metadata = _read_safetensors_file(path, device)
        if "config" in metadata:
            return state_dict, json.loads(metadata["config"]), f"{path} metadata"
        config_file = path.parent / CONFIG_NAME
    if config_file.is_file():
        return state_dict, json.loads(config_file.read_text()), str(config_file)
    return state_dict, None, str(path)


def read_checkpoint(path: str | os.PathLike[str], layout: Layout = "auto", use_ema: bool = False,
                    device: torch.device | str = "cpu") -> WanCheckpoint:
    """Read weights (renamed to :class:`WanModel`'s keys) and any stored config, without building a model.

    ``path``: a ``.safetensors`` file, a directory (``config.json`` + one weights file or shards with an
    index; a diffusers pipeline root is followed into its ``transformer/``), or a ``.pt``/``.pth``
    training checkpoint, which is memory-mapped on the CPU whatever ``device`` says. ``use_ema`` picks
    ``generator_ema`` over ``generator`` there. An explicit ``wan``/``diffusers`` layout is checked
    against the key names, so a mislabelled checkpoint fails here rather than as a list of missing keys.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir() and not list(path.glob("*.safetensors")) and (path / "model_index.json").is_file():
        path = path / "transformer"
    pickled = path.is_file() and path.suffix in PICKLE_SUFFIXES
    if not (pickled or path.is_dir() or path.suffix == ".safetensors"):
        raise ValueError(f"unrecognised checkpoint {path}: expected a .safetensors file, a directory with "
                         f"*.safetensors, or a {'/'.join(PICKLE_SUFFIXES)} training checkpoint")
    if layout != "auto" and pickled != (layout == "self_forcing"):
        stored = (
            "a .pt/.pth torch pickle" if layout == "self_forcing" else "safetensors (a file or a directory)"
        )
        raise ValueError(f"layout {layout!r} is stored as {stored}, but {path} is "
                         f"{'a torch pickle' if pickled else 'not one'}")
    if use_ema and not pickled:
        raise ValueError(
            f"use_ema=True selects 'generator_ema' in a training .pt checkpoint; {path} is not one"
        )
    if pickled:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        raw, config_values, config_source = (
            strip_wrapper_prefixes(_pick_generator(obj, path, use_ema)),
            None,
            "",
        )
    else:
        raw, config_values, config_source = _read_safetensors_path(path, device)
    key_layout = detect_key_layout(raw, str(path))
    if layout in ("wan", "diffusers") and key_layout != layout:
        raise ValueError(f"layout {layout!r} was requested but {path} has {key_layout!r} key names "
                         f"(e.g. {min(raw)!r}); pass layout={key_layout!r} or 'auto'")
    state_dict = diffusers_to_wan_state_dict(raw) if key_layout == "diffusers" else raw
    config = None if config_values is None else config_from_json(config_values, config_source)
    return WanCheckpoint(
        state_dict=state_dict, config=config, layout="self_forcing" if pickled else key_layout
    )


# ---------------------------------------------------------------------------------------- building
def check_state_dict(config: WanConfig, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> None:
    """Raise a ValueError naming the missing/unexpected keys and shape mismatches against ``config``.

    Keys are listed in the model's own order (embeddings first), so the first line names the most
    telling difference, such as ``patch_embedding.weight`` for a checkpoint of another size.

    With ``strict=False`` missing and unexpected keys are only logged; a wrong shape is always an error,
    since it means the checkpoint is another architecture size.
    """
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in WanModel(config).state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {shape}"
                  for k, shape in expected.items() if k in state_dict and tuple(state_dict[k].shape) != shape]
    problems = [f"shape mismatches ({len(mismatched)}): {_shown(mismatched)}"] if mismatched else []
    key_problems = ([f"missing keys ({len(missing)}): {_shown(missing)}"] if missing else []) + (
        [f"unexpected keys ({len(unexpected)}): {_shown(unexpected)}"] if unexpected else [])
    if strict:
        problems += key_problems
    elif key_problems:
        log.warning("loading with strict=False: %s", "; ".join(key_problems))
    if problems:
        raise ValueError(f"checkpoint does not fit {config}:\n  " + "\n  ".join(problems))


def wan_from_state_dict(state_dict: Mapping[str, torch.Tensor], config: WanConfig, *, strict: bool = True,
                        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                        attention_backend: Backend = "sdpa") -> WanModel:
    """Build a :class:`WanModel` from wan-layout weights, checked first (see :func:`check_state_dict`).

    The tensors are copied, so the new model never shares storage with the caller's (say, a student
    whose weights seed an EMA copy).
    """
    return _build(state_dict, config, strict, dtype, device, attention_backend, copy=True)


def _build(state_dict: Mapping[str, torch.Tensor], config: WanConfig, strict: bool, dtype: torch.dtype,
           device: torch.device | str, attention_backend: Backend, copy: bool) -> WanModel:
    """A complete state dict is assigned into a model built on the meta device, so loading a 14B
    checkpoint never holds a second, randomly initialised copy in memory."""
    check_state_dict(config, state_dict, strict)
    tensors = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype, copy=copy)
               for k, v in state_dict.items()}
    with torch.device("meta"):
        model = WanModel(config, attention_backend=attention_backend)
    names = list(model.state_dict())
    if set(names) <= set(tensors):
        model.load_state_dict({k: tensors[k] for k in names}, assign=True)
    else:
        model = WanModel(config, attention_backend=attention_backend).to(device=device, dtype=dtype)
        model.load_state_dict(tensors, strict=False)
    return model.eval()


def load_wan(path: str | os.PathLike[str], config: WanConfig | None = None, layout: Layout = "auto",
             use_ema: bool = False, strict: bool = True, *, dtype: torch.dtype = torch.float32,
             device: torch.device | str = "cpu", attention_backend: Backend = "sdpa") -> WanModel:
    """Load a :class:`WanModel` (in ``eval()`` mode) from any supported layout (see :func:`read_checkpoint`).

    The config is, in order: ``config`` if given, the one stored with the checkpoint, or one inferred
    from the weight shapes (:func:`infer_config`). ``dtype`` applies to every floating tensor: the
    backbone computes its modulation in float32 regardless, so one dtype keeps its matmuls consistent.
    """
    checkpoint = read_checkpoint(path, layout=layout, use_ema=use_ema, device=device)
    if config is None:
        config = checkpoint.config if checkpoint.config is not None else infer_config(checkpoint.state_dict)
    # freshly read tensors: assigning them without a copy halves peak memory
    return _build(checkpoint.state_dict, config, strict, dtype, device, attention_backend, copy=False)


# ---------------------------------------------------------------------------------------- writing
@contextmanager
def _atomic_path(target: Path) -> Iterator[Path]:
    """A temporary sibling of ``target`` renamed over it only once fully written."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _write_json(values: Mapping[str, Any], target: Path) -> None:
    with _atomic_path(target) as temporary:
        temporary.write_text(json.dumps(values, indent=2) + "\n")


def _write_safetensors(tensors: Mapping[str, torch.Tensor], target: Path, metadata: dict[str, str]) -> None:
    st = _safetensors()
    with _atomic_path(target) as temporary:
        st.save_file(
            {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(temporary), metadata
        )


def _shards(
    state_dict: Mapping[str, torch.Tensor], max_shard_size: int | None
) -> list[dict[str, torch.Tensor]]:
    """Greedy split in key order; a tensor larger than the limit gets a shard of its own."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state_dict.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_shard_size is not None and shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


def save_wan_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: WanConfig,
    path: str | os.PathLike[str],
    layout: SaveLayout = "wan",
    max_shard_size: int | None = None,
) -> Path:
    """Write wan-layout weights in ``layout``; the lower level of :func:`save_wan` for gathered state dicts.

    ``path`` ending in ``.safetensors`` writes one file with the config in its metadata; any other path
    is a directory with ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or shards of at
    most ``max_shard_size`` bytes plus ``diffusion_pytorch_model.safetensors.index.json``), which is what
    Wan's and diffusers' ``from_pretrained`` read. Stale weight files of an earlier save are removed only
    after the new ones are in place.
    """
    if layout not in SAVE_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} for saving; allowed: {', '.join(SAVE_LAYOUTS)}")
    check_state_dict(config, state_dict)
    if layout == "diffusers":
        config_values = config_to_diffusers(config)
        tensors = wan_to_diffusers_state_dict(state_dict)
    else:
        config_values, tensors = config_to_wan(config), dict(state_dict)
    path = Path(path)
    if path.suffix == ".safetensors":
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_safetensors(tensors, path, {"format": "pt", "config": json.dumps(config_values)})
        return path
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file; save to a directory or a path ending in .safetensors")
    path.mkdir(parents=True, exist_ok=True)
    shards = _shards(tensors, max_shard_size)
    index_name = f"{WEIGHTS_NAME}.safetensors.index.json"
    if len(shards) == 1:
        written = {f"{WEIGHTS_NAME}.safetensors"}
        _write_safetensors(tensors, path / f"{WEIGHTS_NAME}.safetensors", {"format": "pt"})
    else:
        names = [
            f"{WEIGHTS_NAME}-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)
        ]
        for name, shard in zip(names, shards):
            _write_safetensors(shard, path / name, {"format": "pt"})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map = {key: name for name, shard in zip(names, shards) for key in shard}
        _write_json({"metadata": {"total_size": total}, "weight_map": weight_map}, path / index_name)
        written = {*names, index_name}
    _write_json(config_values, path / CONFIG_NAME)
    for stale in [*path.glob(f"{WEIGHTS_NAME}*.safetensors"), *path.glob(index_name)]:
        if stale.name not in written:
            stale.unlink()
    return path


def save_wan(model: WanModel, path: str | os.PathLike[str], layout: SaveLayout = "wan",
             max_shard_size: int | None = None) -> Path:
    """Save ``model`` in the original Wan2.1 or the diffusers layout (see :func:`save_wan_state_dict`)."""
    return save_wan_state_dict(
        model.state_dict(), model.config, path, layout=layout, max_shard_size=max_shard_size
    )


# ---------------------------------------------------------------------------------------- messages
def _shown(items: list[str]) -> str:
    head = ", ".join(items[:_SHOWN])
    return head + (f", ... and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _listing(keys: list[str]) -> str:
    return f"{len(keys)} key(s): {_shown(sorted(keys))}"
