"""Checkpoint layouts round-trip exactly, and every malformed checkpoint fails with a message naming the
problem."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch

safetensors_torch = pytest.importorskip("safetensors.torch")

from cf_lightning.models import WanConfig, WanModel
from cf_lightning.models.checkpoint import (
    config_from_diffusers,
    config_from_wan,
    config_to_diffusers,
    config_to_wan,
    diffusers_to_wan_state_dict,
    infer_config,
    load_wan,
    read_checkpoint,
    save_wan,
    strip_wrapper_prefixes,
    wan_from_state_dict,
    wan_to_diffusers_state_dict,
)

TINY = WanConfig.from_name("tiny")
# Wan-AI/Wan2.1-T2V-1.3B config.json, minus the informational "_diffusers_version".
WAN_13B_CONFIG = {
    "_class_name": "WanModel",
    "dim": 1536,
    "eps": 1e-06,
    "ffn_dim": 8960,
    "freq_dim": 256,
    "in_dim": 16,
    "model_type": "t2v",
    "num_heads": 12,
    "num_layers": 30,
    "out_dim": 16,
    "text_len": 512,
}
# Wan-AI/Wan2.1-T2V-14B-Diffusers transformer/config.json, minus "_diffusers_version".
DIFFUSERS_14B_CONFIG = {
    "_class_name": "WanTransformer3DModel",
    "added_kv_proj_dim": None,
    "attention_head_dim": 128,
    "cross_attn_norm": True,
    "eps": 1e-06,
    "ffn_dim": 13824,
    "freq_dim": 256,
    "image_dim": None,
    "in_channels": 16,
    "num_attention_heads": 40,
    "num_layers": 40,
    "out_channels": 16,
    "patch_size": [1, 2, 2],
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 1024,
    "text_dim": 4096,
}


def _model(seed: int = 0, config: WanConfig = TINY) -> WanModel:
    torch.manual_seed(seed)
    model = WanModel(config)
    with torch.no_grad():  # move norms off 1 and biases off 0, so a mix-up changes the output
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def _output(model: WanModel) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 4, 6, generator=generator)
    context = torch.randn(2, 5, 16, generator=generator)
    kwargs = {}
    if model.config.frame_cond_dim:
        kwargs["frame_cond"] = torch.randn(2, 3, model.config.frame_cond_dim, generator=generator)
    with torch.no_grad():
        return model(x, torch.tensor([999.0, 250.0]), context, **kwargs)


@pytest.fixture(scope="module")
def model() -> WanModel:
    return _model()


def _wrapped(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys as Self-Forcing saves them under FSDP with compile and activation checkpointing."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("blocks."):
            index, rest = key[len("blocks."):].split(".", 1)
            key = f"blocks.{index}._fsdp_wrapped_module._checkpoint_wrapped_module.{rest}"
        out[f"model._fsdp_wrapped_module._orig_mod.{key}"] = value.clone()
    return out


# ------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize(("target", "layout", "max_shard_size"), [
    ("model.safetensors", "wan", None),
    ("wan", "wan", None),
    ("wan_sharded", "wan", 4_000),
    ("diffusers", "diffusers", None),
    ("diffusers_sharded", "diffusers", 4_000),
    ("diffusers.safetensors", "diffusers", None),
])
def test_save_load_round_trip_is_exact(model, tmp_path, target, layout, max_shard_size):
    path = save_wan(model, tmp_path / target, layout=layout, max_shard_size=max_shard_size)
    if max_shard_size is not None:
        index = json.loads((path / "diffusion_pytorch_model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1
        assert sorted(p.name for p in path.glob("*.safetensors")) == sorted(set(index["weight_map"].values()))
    checkpoint = read_checkpoint(path)
    assert checkpoint.layout == layout
    assert checkpoint.config == TINY
    loaded = load_wan(path)
    assert loaded.config == TINY
    assert torch.equal(_output(loaded), _output(model))


def test_self_forcing_pt_with_wrapper_prefixes_picks_generator_or_ema(model, tmp_path):
    ema = _model(seed=1)
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator": _wrapped(model.state_dict()), "generator_ema": _wrapped(ema.state_dict()),
                "critic": {"model.blocks.0.self_attn.q.weight": torch.zeros(1)}, "step": 7}, path)
    assert torch.equal(_output(load_wan(path, TINY)), _output(model))
    assert torch.equal(_output(load_wan(path, TINY, layout="self_forcing", use_ema=True)), _output(ema))
    assert read_checkpoint(path).layout == "self_forcing"


def test_pt_without_config_infers_it_from_shapes_given_the_head_count(model, tmp_path):
    path = tmp_path / "generator.pt"
    torch.save({"generator": _wrapped(model.state_dict())}, path)
    with pytest.raises(ValueError, match="cannot infer num_heads for dim=24.*pass config="):
        load_wan(path)
    state_dict = read_checkpoint(path).state_dict
    assert infer_config(state_dict, num_heads=2) == TINY
    with torch.device("meta"):
        released = WanModel(WanConfig.from_name("wan2.1-1.3b")).state_dict()
    assert infer_config(released) == WanConfig.from_name("wan2.1-1.3b")


def test_frame_cond_extension_round_trips_in_wan_layout_and_is_refused_for_diffusers(tmp_path):
    extended = _model(config=WanConfig.from_name("tiny", frame_cond_dim=3))
    assert torch.equal(_output(load_wan(save_wan(extended, tmp_path / "wan"))), _output(extended))
    with pytest.raises(ValueError, match="frame_cond.*no diffusers WanTransformer3DModel equivalent"):
        save_wan(extended, tmp_path / "diffusers", layout="diffusers")
    with pytest.raises(ValueError, match="frame_cond_embedding.0.weight.*no diffusers"):
        wan_to_diffusers_state_dict(extended.state_dict())
    assert not (tmp_path / "diffusers" / "diffusion_pytorch_model.safetensors").exists()


def test_loads_in_requested_dtype(model, tmp_path):
    loaded = load_wan(save_wan(model, tmp_path / "m.safetensors"), dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


def test_diffusers_pipeline_root_is_followed_into_transformer(model, tmp_path):
    save_wan(model, tmp_path / "transformer", layout="diffusers")
    (tmp_path / "model_index.json").write_text("{}")
    assert torch.equal(_output(load_wan(tmp_path)), _output(model))


# ------------------------------------------------------------------------------------------ names and configs
def test_key_mapping_follows_the_diffusers_conversion_script(model):
    state_dict = model.state_dict()
    converted = wan_to_diffusers_state_dict(state_dict)
    for ours, theirs in [
        ("blocks.1.self_attn.o.weight", "blocks.1.attn1.to_out.0.weight"),
        ("blocks.0.cross_attn.norm_k.weight", "blocks.0.attn2.norm_k.weight"),
        ("blocks.0.norm3.bias", "blocks.0.norm2.bias"),
        ("blocks.0.ffn.0.weight", "blocks.0.ffn.net.0.proj.weight"),
        ("blocks.1.modulation", "blocks.1.scale_shift_table"),
        ("head.modulation", "scale_shift_table"),
        ("head.head.bias", "proj_out.bias"),
        ("time_projection.1.weight", "condition_embedder.time_proj.weight"),
        ("text_embedding.2.weight", "condition_embedder.text_embedder.linear_2.weight"),
    ]:
        assert converted[theirs] is state_dict[ours]
    assert diffusers_to_wan_state_dict(converted).keys() == state_dict.keys()


def test_strip_wrapper_prefixes():
    value = torch.zeros(1)
    assert strip_wrapper_prefixes({
        "model._fsdp_wrapped_module.blocks.3._checkpoint_wrapped_module.ffn.0.weight": value,
        "module._orig_mod.head.modulation": value,
    }) == {"blocks.3.ffn.0.weight": value, "head.modulation": value}


def test_configs_match_the_released_files():
    assert config_from_wan(WAN_13B_CONFIG) == WanConfig.from_name("wan2.1-1.3b")
    assert config_to_wan(WanConfig.from_name("wan2.1-1.3b")) == WAN_13B_CONFIG
    assert config_from_diffusers(DIFFUSERS_14B_CONFIG) == WanConfig.from_name("wan2.1-14b")
    assert config_to_diffusers(WanConfig.from_name("wan2.1-14b")) == {
        **DIFFUSERS_14B_CONFIG,
        "pos_embed_seq_len": None,
    }
    extended = WanConfig.from_name("tiny", frame_cond_dim=3, rope_theta=500.0)
    assert config_from_wan(config_to_wan(extended)) == extended
    assert config_from_diffusers(config_to_diffusers(TINY)) == TINY


@pytest.mark.parametrize(("convert", "values", "message"), [
    (config_from_wan, {**WAN_13B_CONFIG, "model_type": "i2v"}, "unsupported model_type='i2v'"),
    (config_from_wan, {**WAN_13B_CONFIG, "window_size": [8, 8]}, "unsupported window_size=[8, 8]"),
    (config_from_diffusers, {**DIFFUSERS_14B_CONFIG, "image_dim": 1280}, "unsupported image_dim=1280"),
    (config_from_diffusers, {"_class_name": "WanVACETransformer3DModel"}, "'WanVACETransformer3DModel'"),
])
def test_unsupported_configs_are_refused(convert, values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        convert(values)


# ------------------------------------------------------------------------------------------ errors
def _save_raw(state_dict: dict[str, torch.Tensor], path) -> None:
    safetensors_torch.save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))


def test_missing_key_is_named(model, tmp_path):
    state_dict = dict(model.state_dict())
    del state_dict["blocks.1.ffn.2.bias"]
    _save_raw(state_dict, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=re.escape("missing keys (1): blocks.1.ffn.2.bias")):
        load_wan(tmp_path / "m.safetensors", TINY)


def test_unexpected_keys_are_named_and_counted(model, tmp_path):
    extra = {f"blocks.0.lora_{i:02d}.weight": torch.zeros(1) for i in range(12)}
    _save_raw({**model.state_dict(), **extra}, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=re.escape(
            "unexpected keys (12): blocks.0.lora_00.weight, blocks.0.lora_01.weight")) as error:
        load_wan(tmp_path / "m.safetensors", TINY)
    assert "... and 2 more" in str(error.value)


def test_shape_mismatch_names_parameter_and_both_shapes(model, tmp_path):
    path = save_wan(model, tmp_path / "m.safetensors")
    with pytest.raises(
        ValueError, match=re.escape("blocks.0.ffn.0.weight: checkpoint (48, 24) vs model (64, 24)")
    ):
        load_wan(path, WanConfig.from_name("tiny", ffn_dim=64))


def test_checkpoint_of_another_size_fails_naming_the_parameters(model, tmp_path):
    path = save_wan(model, tmp_path / "wan")
    with pytest.raises(ValueError) as error:
        load_wan(path, WanConfig.from_name("small"))
    message = str(error.value)
    assert "patch_embedding.weight: checkpoint (24, 4, 1, 2, 2) vs model (96, 16, 1, 2, 2)" in message
    assert message.index("shape mismatches (69): patch_embedding.weight") < message.index(
        "missing keys (27): blocks.2.modulation, blocks.2.self_attn.q.weight")


def test_strict_false_tolerates_key_differences_but_never_shapes(model, tmp_path, caplog):
    state_dict = {k: v for k, v in model.state_dict().items() if k != "head.modulation"}
    _save_raw({**state_dict, "unused.weight": torch.zeros(1)}, tmp_path / "m.safetensors")
    with caplog.at_level(logging.WARNING):
        loaded = load_wan(tmp_path / "m.safetensors", TINY, strict=False)
    assert (
        "missing keys (1): head.modulation" in caplog.text
        and "unexpected keys (1): unused.weight" in caplog.text
    )
    assert torch.equal(loaded.blocks[0].ffn[0].weight, model.blocks[0].ffn[0].weight)
    with pytest.raises(ValueError, match="shape mismatches"):
        load_wan(tmp_path / "m.safetensors", WanConfig.from_name("tiny", ffn_dim=64), strict=False)


def test_unknown_layout_names_the_allowed_ones(model, tmp_path):
    path = save_wan(model, tmp_path / "m.safetensors")
    with pytest.raises(
        ValueError, match=re.escape("unknown layout 'comfy'; allowed: auto, wan, diffusers, self_forcing")
    ):
        load_wan(path, layout="comfy")
    with pytest.raises(
        ValueError, match=re.escape("unknown layout 'self_forcing' for saving; allowed: wan, diffusers")
    ):
        save_wan(model, tmp_path / "x", layout="self_forcing")


def test_unrecognised_keys_name_what_was_found_and_what_is_allowed(tmp_path):
    _save_raw({"encoder.conv1.weight": torch.zeros(2)}, tmp_path / "vae.safetensors")
    with pytest.raises(
        ValueError, match=r"found keys encoder\.conv1\.weight; allowed layouts: 'wan'.*'diffusers'"
    ):
        load_wan(tmp_path / "vae.safetensors", TINY)
    (tmp_path / "model.gguf").write_bytes(b"")
    with pytest.raises(
        ValueError, match=r"unrecognised checkpoint .*model\.gguf: expected a \.safetensors file"
    ):
        load_wan(tmp_path / "model.gguf")


def test_mislabelled_layout_is_reported(model, tmp_path):
    path = save_wan(model, tmp_path / "wan")
    with pytest.raises(ValueError, match="layout 'diffusers' was requested but .* has 'wan' key names"):
        load_wan(path, layout="diffusers")
    with pytest.raises(ValueError, match="layout 'self_forcing' is stored as a .pt/.pth torch pickle"):
        load_wan(path, layout="self_forcing")


def test_pt_without_the_requested_generator(model, tmp_path):
    path = tmp_path / "ema_only.pt"
    torch.save({"generator_ema": _wrapped(model.state_dict()), "critic": {}}, path)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "has no 'generator' state dict; its top-level keys are critic, generator_ema; pass use_ema=True"
        ),
    ):
        load_wan(path, TINY)
    torch.save({"generator": model.state_dict()}, path)
    with pytest.raises(ValueError, match="has no 'generator_ema' state dict"):
        load_wan(path, TINY, use_ema=True)


def test_unconvertible_diffusers_keys_are_named():
    with pytest.raises(
        ValueError, match=re.escape("cannot convert 1 key(s): blocks.0.attn2.add_k_proj.weight")
    ):
        diffusers_to_wan_state_dict({"blocks.0.attn2.add_k_proj.weight": torch.zeros(1),
                                     "blocks.0.attn2.to_k.weight": torch.zeros(1)})


# ------------------------------------------------------------------------------------------ safe writes
def test_failed_save_keeps_the_previous_checkpoint(model, tmp_path, monkeypatch):
    path = save_wan(model, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors_torch, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_wan(_model(seed=3), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_resaving_a_directory_removes_stale_shards(model, tmp_path):
    save_wan(model, tmp_path, max_shard_size=4_000)
    other = _model(seed=2)
    save_wan(other, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    assert torch.equal(_output(load_wan(tmp_path)), _output(other))


def test_wan_from_state_dict_copies_the_tensors(model):
    copy = wan_from_state_dict(model.state_dict(), TINY)
    assert torch.equal(_output(copy), _output(model))
    assert copy.head.head.weight.data_ptr() != model.head.head.weight.data_ptr()
