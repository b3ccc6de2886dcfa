"""Codecs and text encoders are picked by name; a wrong name lists the registered ones."""

import pytest

from cf_lightning.codecs import CODECS, PixelCodec, build_codec, register_codec
from cf_lightning.text import TEXT_ENCODERS, HashTextEncoder, build_text_encoder, register_text_encoder


def test_names_build_their_classes_with_options():
    codec = build_codec("pixel", patch=4)
    assert isinstance(codec, PixelCodec) and codec.name == "pixel" and CODECS["pixel"] is PixelCodec
    assert isinstance(build_text_encoder("hash"), HashTextEncoder) and TEXT_ENCODERS["hash"].name == "hash"


def test_unknown_names_list_what_is_registered():
    with pytest.raises(ValueError, match=r"unknown codec 'pixels'; choose one of: .*pixel, pooled_pixel"):
        build_codec("pixels")
    with pytest.raises(ValueError, match=r"unknown text encoder 't5'; choose one of: hash, umt5"):
        build_text_encoder("t5")


def test_a_taken_name_is_refused_and_the_original_kept():
    with pytest.raises(ValueError, match="codec name 'pixel' is already taken by PixelCodec"):
        register_codec("pixel")(type("Other", (PixelCodec,), {}))
    with pytest.raises(ValueError, match="text encoder name 'hash' is already taken by HashTextEncoder"):
        register_text_encoder("hash")(type("Other", (HashTextEncoder,), {}))
    assert CODECS["pixel"] is PixelCodec and TEXT_ENCODERS["hash"] is HashTextEncoder
    register_codec("pixel")(PixelCodec)  # registering the same class again is harmless
