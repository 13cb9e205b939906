"""Readers turn an object's bytes into 2-D frames plus label metadata."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ingest.readers.base import DecodedObject, DecodeLimits

if TYPE_CHECKING:
    from ingest.readers.dispatch import decode_object

__all__ = ["DecodeLimits", "DecodedObject", "decode_object"]


def __getattr__(name: str) -> Any:
    # The decoders (pydicom, Pillow: ~0.3 s) load on first use, not with the package: commands that
    # only import the pipeline's types (the CLI's light commands) start without them.
    if name == "decode_object":
        from ingest.readers.dispatch import decode_object

        return decode_object
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
