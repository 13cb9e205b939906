"""Encoders: specs, the registry, and the runtime that turns frames into vectors."""

from core.encoders.base import Encoder
from core.encoders.registry import get_spec, list_specs, load_encoder, resolve_spec
from core.encoders.spec import EncoderFamily, EncoderSpec
from core.frame import Frame

__all__ = [
    "Encoder",
    "EncoderFamily",
    "EncoderSpec",
    "Frame",
    "get_spec",
    "list_specs",
    "load_encoder",
    "resolve_spec",
]
