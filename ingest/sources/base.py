"""The source interface: list object references lazily, fetch one object's bytes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["ObjectRef", "Source"]


@dataclass(frozen=True)
class ObjectRef:
    """One object of a source. ``key`` is relative to the source URI (a POSIX path)."""

    key: str
    etag: str
    size: int
    metadata: dict[str, str] = field(default_factory=dict)


class Source(ABC):
    """A listable store of objects, addressed by ``uri`` (``s3://bucket/prefix``, a local folder)."""

    uri: str

    @abstractmethod
    def list(self) -> Iterator[ObjectRef]:
        """Every object under the source, streamed page by page (never the whole listing in memory)."""

    @abstractmethod
    def stat(self, key: str) -> ObjectRef:
        """One object's reference; `BadInput` if it does not exist."""

    @abstractmethod
    def fetch(self, key: str) -> bytes:
        """The object's bytes; `BadInput` if it does not exist or exceeds the size limit."""

    def fetch_with_metadata(self, key: str) -> tuple[bytes, dict[str, str]]:
        """The object's bytes and its user metadata (S3 ``x-amz-meta-*``), read in one request."""
        return self.fetch(key), {}

    def close(self) -> None:  # noqa: B027 - optional hook
        pass
