"""The exception tree of radsearch. Library code raises these; only the API edge maps them to HTTP.

    RadsearchError
    ├── ConfigError
    ├── EncoderError
    │   ├── EncoderNotFound
    │   ├── WeightsUnavailable
    │   └── NoTextTower
    ├── SourceError            (a source cannot be reached; transient, retried)
    ├── IndexStoreError
    │   ├── CollectionNotFound
    │   ├── CollectionExists
    │   ├── PointNotFound
    │   ├── InvalidVector
    │   └── InvalidFilter
    └── BadInput               (one input file/object cannot be used; the batch goes on)
        ├── DecodeError         (corrupt, truncated, not an image)
        │   └── DecodeTimeout   (decoding ran past the per-file time limit)
        ├── UnsupportedFormat   (unknown container or transfer syntax without a decoder)
        └── TooLarge            (declared size beyond the configured limits)

Messages name the file or field at fault and never carry patient-identifying values.
"""

from __future__ import annotations

__all__ = [
    "BadInput",
    "CollectionExists",
    "CollectionNotFound",
    "ConfigError",
    "DecodeError",
    "DecodeTimeout",
    "EncoderError",
    "EncoderNotFound",
    "IndexStoreError",
    "InvalidFilter",
    "InvalidVector",
    "NoTextTower",
    "PointNotFound",
    "RadsearchError",
    "SourceError",
    "TooLarge",
    "UnsupportedFormat",
    "WeightsUnavailable",
]


class RadsearchError(Exception):
    """Base of every error radsearch raises on purpose."""


class ConfigError(RadsearchError):
    """Settings or arguments that cannot work together."""


class EncoderError(RadsearchError):
    pass


class EncoderNotFound(EncoderError):
    pass


class WeightsUnavailable(EncoderError):
    """The encoder's weights cannot be found or fetched; the message says how to provide them."""


class NoTextTower(EncoderError):
    pass


class SourceError(RadsearchError):
    """A source (S3 endpoint, folder) cannot be listed or read right now; worth retrying."""


class IndexStoreError(RadsearchError):
    pass


class CollectionNotFound(IndexStoreError):
    pass


class CollectionExists(IndexStoreError):
    pass


class PointNotFound(IndexStoreError):
    pass


class InvalidVector(IndexStoreError):
    pass


class InvalidFilter(IndexStoreError):
    pass


class BadInput(RadsearchError):
    """One object cannot be decoded or used. ``key`` names it (an object key, never PHI)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class DecodeError(BadInput):
    pass


class DecodeTimeout(DecodeError):
    """Decoding one object took longer than ``DecodeLimits.timeout_s``."""


class UnsupportedFormat(BadInput):
    pass


class TooLarge(BadInput):
    pass
