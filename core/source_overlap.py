"""Sources of one collection that reach the same files under two names.

A PNG or JPEG has no identity of its own: its points' ids derive from its source's name and key
(`core.payload.image_point_id`). The same file ingested through ``s3://raw/chest/`` (source
``raw/chest``) and again through ``s3://raw/`` (source ``raw``), or through a folder and then its
parent, would be stored twice, and a reconcile or prune of one name never sees the other's
deletions. An `Overlap` maps a key of this run's source to the key another source of the collection
keeps the same file under, from where each name is read (the collection's ``sources``), so that the
ingest pipeline can refuse such a file instead of storing it again (`VectorIndex.source_overlaps`).

S3 sources are addressed by their bucket and keep full object keys, so two names of one bucket
share keys. Folders share the files of the inner one, whose keys lack the path between the two
roots. A folder that has since moved is no longer seen to overlap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

__all__ = ["Overlap", "overlaps"]


@dataclass(frozen=True)
class Overlap:
    """Another source name of a collection that reaches files this run's source reaches too."""

    name: str
    #: The key prefix this run's keys carry and the other source's lack ("" for none).
    strip: str = ""
    #: The key prefix the other source's keys carry and this run's lack ("" for none).
    add: str = ""

    @property
    def same_keys(self) -> bool:
        """Whether the other source keeps the same keys (the same bucket or folder): then this run
        under that name (``--source-name``) is the same source."""
        return not self.strip and not self.add

    def their_key(self, key: str) -> str | None:
        """The key the other source keeps this run's ``key`` under; None when it cannot reach it."""
        if self.strip:
            if not key.startswith(self.strip):
                return None
            key = key[len(self.strip) :]
        return self.add + key


def overlaps(source_name: str, source_uri: str, registered: Mapping[str, object]) -> tuple[Overlap, ...]:
    """The other names in ``registered`` (a collection's ``sources``: name → URI) whose objects
    this source (``source_name`` read from ``source_uri``) reaches too."""
    found = []
    for name, uri in sorted(registered.items()):
        if name == source_name or not isinstance(uri, str):
            continue
        overlap = _overlap(name, source_uri, uri)
        if overlap is not None:
            found.append(overlap)
    return tuple(found)


def _overlap(name: str, mine: str, theirs: str) -> Overlap | None:
    if mine == theirs:  # one bucket (full object keys), or one folder under two names
        return Overlap(name)
    if not (mine.startswith("/") and theirs.startswith("/")):
        return None  # different buckets, or a bucket and a folder
    my_root, their_root = PurePosixPath(mine), PurePosixPath(theirs)
    if their_root.is_relative_to(my_root):  # theirs is a folder inside this run's root
        return Overlap(name, strip=f"{their_root.relative_to(my_root).as_posix()}/")
    if my_root.is_relative_to(their_root):  # this run's root is a folder inside theirs
        return Overlap(name, add=f"{my_root.relative_to(their_root).as_posix()}/")
    return None
