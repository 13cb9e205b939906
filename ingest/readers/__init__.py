"""Readers turn an object's bytes into 2-D frames plus label metadata."""

from ingest.readers.base import DecodedObject, DecodeLimits
from ingest.readers.dispatch import decode_object

__all__ = ["DecodeLimits", "DecodedObject", "decode_object"]
