"""Text encoders: ``hash`` (deterministic, weight-free) and ``umt5`` (Wan's encoder via transformers)."""

from cf_lightning.text.base import TextEncoder, build_text_encoder
from cf_lightning.text.hash import HashTextEncoder
from cf_lightning.text.umt5 import UMT5TextEncoder

__all__ = [
    "HashTextEncoder",
    "TextEncoder",
    "UMT5TextEncoder",
    "build_text_encoder",
]
