"""Pick the reader from the bytes themselves (never the file name) and keep every failure typed."""

from __future__ import annotations

from typing import Literal

from core.errors import BadInput, DecodeError, UnsupportedFormat
from ingest.readers.base import DecodedObject, DecodeLimits
from ingest.readers.dicom import decode_dicom
from ingest.readers.raster import decode_raster

__all__ = ["decode_object", "sniff_format"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def sniff_format(data: bytes) -> Literal["dicom", "png", "jpeg"] | None:
    """``dicom`` (``DICM`` at offset 128), ``png``, ``jpeg`` (magic numbers) or None."""
    if data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    return None


def decode_object(data: bytes, key: str, *, limits: DecodeLimits, hash_key: bytes) -> DecodedObject:
    """Decode one object's bytes into frames + labels + meta with the reader its content calls for.

    Every failure is a `BadInput` subclass naming ``key``: `UnsupportedFormat` for content that is
    neither DICOM Part 10 nor PNG/JPEG (including empty objects), and whatever the reader raises;
    any other exception, ``MemoryError`` included, becomes `DecodeError`.
    """
    kind = sniff_format(data)
    if kind is None:
        raise UnsupportedFormat(key, "unrecognised file format")
    try:
        if kind == "dicom":
            return decode_dicom(data, key, limits=limits, hash_key=hash_key)
        return decode_raster(data, key, limits=limits)
    except BadInput:
        raise
    except MemoryError:
        raise DecodeError(key, "out of memory while decoding") from None
    # Not chained: messages of third-party exceptions may quote header values.
    except Exception as exc:
        raise DecodeError(key, f"{kind} reader failed ({type(exc).__name__})") from None
