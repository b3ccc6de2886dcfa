"""Codecs and text encoders are chosen like every other part (class_path / init_args or a class name),
older checkpoints' and shard metadata's short names still resolve, and a wrong name lists what exists."""

import inspect

import pytest

from cf_lightning.codecs import LatentCodec, PixelCodec, PooledPixelCodec, build_codec
from cf_lightning.components import build_component, component_spec
from cf_lightning.data.datamodules import RevisitWorldDataModule
from cf_lightning.text import HashTextEncoder, TextEncoder, build_text_encoder


@pytest.mark.parametrize("spec", [
    {"class_path": "cf_lightning.codecs.PooledPixelCodec", "init_args": {"patch": 4}},
    {"class_path": "PooledPixelCodec", "init_args": {"patch": 4}},
])
def test_class_path_specs_build_their_classes(spec):
    codec = build_codec(spec)
    assert type(codec) is PooledPixelCodec and codec.patch == 4
    assert build_codec(spec, patch=2).patch == 2, "options override the spec's init_args"


def test_class_names_and_short_names_build_with_options():
    assert type(build_codec("PixelCodec", patch=4)) is PixelCodec
    codec = build_codec("pixel", patch=4)
    assert type(codec) is PixelCodec and codec.describe() == {"name": "pixel", "patch": 4}
    assert type(build_text_encoder("hash", dim=4)) is HashTextEncoder
    built = HashTextEncoder(dim=4)
    assert build_text_encoder(built) is built


def test_unknown_and_wrong_names_list_what_exists():
    with pytest.raises(ValueError, match=r"unknown LatentCodec 'pixels'; choose one of: "
                                         r".*PixelCodec \(pixel\), PooledPixelCodec \(pooled_pixel\)"):
        build_codec("pixels")
    with pytest.raises(ValueError, match=r"unknown TextEncoder 't5'; choose one of: "
                                         r"HashTextEncoder \(hash\), UMT5TextEncoder \(umt5\)"):
        build_text_encoder("t5")
    with pytest.raises(ValueError, match="'cf_lightning.text.HashTextEncoder' is not a LatentCodec subclass"):
        build_codec({"class_path": "cf_lightning.text.HashTextEncoder"})
    with pytest.raises(ValueError, match=r"needs 'class_path' and optionally 'init_args', "
                                         r"got keys \['patch'\]"):
        build_component(LatentCodec, {"patch": 4})
    with pytest.raises(ValueError, match=r"options \['dim'\] given with an already built HashTextEncoder"):
        build_component(TextEncoder, HashTextEncoder(), dim=3)


def test_a_built_component_records_the_spec_that_rebuilds_it():
    codec = PooledPixelCodec(patch=4)
    spec = component_spec(codec)
    assert spec == {"class_path": "cf_lightning.codecs.pixel.PooledPixelCodec", "init_args": {"patch": 4}}
    assert type(build_codec(spec)) is PooledPixelCodec and build_codec(spec).patch == 4
    text = component_spec(HashTextEncoder(dim=4, seed=3))
    assert build_text_encoder(text).describe() == HashTextEncoder(dim=4, seed=3).describe()
    default = inspect.signature(RevisitWorldDataModule).parameters["codec"].default  # a lazy instance
    assert component_spec(default) == component_spec(PixelCodec())
