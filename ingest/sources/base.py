"""The source interface: list object references lazily, fetch one object's bytes."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

from core.errors import ConfigError

__all__ = ["MAX_SOURCE_NAME", "ObjectRef", "Source", "check_source_name"]

MAX_SOURCE_NAME = 128
_NAME_CHARS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*$")


def check_source_name(name: str, *, field: str = "source_name") -> str:
    """A valid stable source name (``bucket`` or ``bucket/prefix``, a folder's name), returned as
    is; `ConfigError` naming ``field`` (never echoing the value) otherwise."""
    if not name or len(name) > MAX_SOURCE_NAME:
        raise ConfigError(f"{field} must be 1 to {MAX_SOURCE_NAME} characters")
    if not _NAME_CHARS.match(name) or any(part in (".", "..") for part in name.split("/")):
        raise ConfigError(
            f"{field} may hold letters, digits, '.', '_', '-' and '/' between parts (bucket/prefix), "
            "starting with a letter or digit; no control characters, spaces, backslashes or empty parts"
        )
    return name


@dataclass(frozen=True)
class ObjectRef:
    """One object of a source. ``key`` is relative to the source URI (a POSIX path)."""

    key: str
    etag: str
    size: int
    metadata: dict[str, str] = field(default_factory=dict)


class Source(ABC):
    """A listable store of objects, addressed by ``uri`` (``s3://bucket/prefix``, a local folder).

    ``name`` is its stable name: what payloads record as ``source`` and what point ids of
    non-DICOM files derive from, so that moving the archive changes nothing (``--source-name``;
    default the folder's name or ``bucket/prefix``). Never an absolute path."""

    uri: str
    name: str

    @abstractmethod
    def list(self) -> Iterator[ObjectRef]:
        """Every object under the source, streamed page by page (never the whole listing in memory)."""

    @abstractmethod
    def stat(self, key: str) -> ObjectRef:
        """One object's reference; `ObjectNotFound` if it does not exist."""

    @abstractmethod
    def fetch(self, key: str) -> bytes:
        """The object's bytes; `ObjectNotFound` if it does not exist, another `BadInput` if it
        cannot be used (beyond the size limit)."""

    def fetch_with_metadata(self, key: str) -> tuple[bytes, dict[str, str]]:
        """The object's bytes and its user metadata (S3 ``x-amz-meta-*``), read in one request."""
        return self.fetch(key), {}

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
