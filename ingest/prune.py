"""The diff between a source's listing and what a collection holds of it, the deletion guard, and
the deletions themselves: shared by ``radsearch ingest --prune`` (inline and owner executors) and
reconcile (workers).

An object is *added* when the listing has it and the collection does not, *changed* when its ETag
differs or fewer points are stored than frames were embedded (``frames_sampled``: long series are
sampled, so the file's frame count is not what to compare with), *deleted* when the collection has
it and the source does not any more. Deleting is refused (`DeletionRefused`) when the listing is
empty or more than a fraction of the collection's objects would go, unless forced: an unmounted
share or a fresh bucket of the same name must not empty a collection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.errors import BadInput, DeletionRefused
from core.index.base import VectorIndex
from core.payload import SearchFilter
from ingest.sources.base import ObjectRef, Source

__all__ = [
    "DEFAULT_MAX_DELETE_FRACTION",
    "IndexedObject",
    "SourceDiff",
    "check_deletions",
    "delete_keys",
    "diff_lines",
    "diff_source",
    "guard_message",
    "indexed_objects",
    "prune_gone",
    "source_diffs",
    "still_gone",
]

DEFAULT_MAX_DELETE_FRACTION = 0.1
_DELETE_CHUNK = 500


@dataclass
class IndexedObject:
    """What a collection holds of one object: its ETag, how many points, how many it should have."""

    etag: str | None
    points: int
    expected: int


def _expected_points(payload: Mapping[str, Any], max_frames: int) -> int:
    sampled = payload.get("frames_sampled")
    if isinstance(sampled, int) and sampled > 0:
        return sampled
    # Points written before ``frames_sampled`` existed: the reader samples down to ``max_frames``.
    return max(1, min(int(payload.get("n_frames") or 1), max_frames))


def indexed_objects(
    index: VectorIndex, collection: str, source: Source, *, max_frames: int
) -> dict[str, IndexedObject]:
    """Per object key of ``source``, what ``collection`` holds of it."""
    prefix = str(getattr(source, "prefix", "") or "")
    out: dict[str, IndexedObject] = {}
    for point in index.scroll(collection, filter=SearchFilter(source=[source.name])):
        key = point.payload.get("key")
        if not isinstance(key, str) or not key.startswith(prefix):
            continue
        etag = point.payload.get("etag")
        known = out.get(key)
        if known is None:
            out[key] = IndexedObject(etag, 1, _expected_points(point.payload, max_frames))
        else:
            known.points += 1
            if etag != known.etag:
                known.etag = None  # points of two versions: changed whatever the listing says
    return out


@dataclass
class SourceDiff:
    """What would make a collection hold exactly what the source lists (keys sorted)."""

    collection: str
    listed: int
    indexed: int
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Counts and the keys per kind of change."""
        return {
            "collection": self.collection,
            "listed": self.listed,
            "indexed_objects": self.indexed,
            "added": len(self.added),
            "changed": len(self.changed),
            "deleted": len(self.deleted),
            "added_items": list(self.added),
            "changed_items": list(self.changed),
            "deleted_items": list(self.deleted),
        }


def diff_source(
    collection: str, listing: Mapping[str, ObjectRef], indexed: Mapping[str, IndexedObject]
) -> SourceDiff:
    """The diff of one collection against a source's listing (key → reference)."""
    return SourceDiff(
        collection=collection,
        listed=len(listing),
        indexed=len(indexed),
        added=sorted(k for k in listing if k not in indexed),
        changed=sorted(
            k
            for k, held in indexed.items()
            if k in listing and (held.etag != listing[k].etag or held.points < held.expected)
        ),
        deleted=sorted(k for k in indexed if k not in listing),
    )


def check_deletions(diffs: Iterable[SourceDiff], *, max_fraction: float, force: bool) -> None:
    """`DeletionRefused` unless every collection's deletions are safe (or ``force``): none from an
    empty listing, and at most ``max_fraction`` of the collection's objects."""
    if force:
        return
    for diff in diffs:
        if not diff.deleted:
            continue
        if diff.listed == 0:
            raise DeletionRefused(
                f"the source lists no objects, so all {len(diff.deleted)} objects of collection "
                f"{diff.collection!r} would be deleted (an unmounted share or an empty bucket?); "
                "nothing was deleted: check the source, or use --force"
            )
        if len(diff.deleted) > max_fraction * diff.indexed:
            raise DeletionRefused(
                f"{len(diff.deleted)} of the {diff.indexed} objects of collection {diff.collection!r} "
                f"are gone from the source, more than the allowed fraction {max_fraction:g}; nothing "
                "was deleted: check the source, raise --max-delete-fraction, or use --force"
            )


def guard_message(diffs: Iterable[SourceDiff], *, max_fraction: float, force: bool) -> str | None:
    """Why `check_deletions` would refuse these diffs (for a dry run to say), or None."""
    try:
        check_deletions(diffs, max_fraction=max_fraction, force=force)
    except DeletionRefused as exc:
        return str(exc)
    return None


def still_gone(source: Source, keys: Sequence[str]) -> list[str]:
    """Those of ``keys`` that the source still does not have (one may be uploaded after the
    listing was taken: its points stay)."""
    gone: list[str] = []
    for key in keys:
        try:
            source.stat(key)
        except BadInput:
            gone.append(key)
    return gone


def delete_keys(index: VectorIndex, collection: str, source: Source, keys: Sequence[str]) -> None:
    """Delete every point of these objects of ``source`` from ``collection``, in chunks."""
    for i in range(0, len(keys), _DELETE_CHUNK):
        chunk = list(keys[i : i + _DELETE_CHUNK])
        index.delete_by_filter(collection, SearchFilter(source=[source.name], key=chunk))


def source_diffs(
    index: VectorIndex,
    collections: Sequence[str],
    source: Source,
    listing: Mapping[str, ObjectRef],
    *,
    max_frames: int,
    prune: bool,
) -> list[SourceDiff]:
    """The diff of each collection against ``listing``; without ``prune`` nothing is deleted, so
    no key is listed as deleted."""
    diffs = [
        diff_source(name, listing, indexed_objects(index, name, source, max_frames=max_frames))
        for name in collections
    ]
    if not prune:
        for diff in diffs:
            diff.deleted = []
    return diffs


def prune_gone(index: VectorIndex, source: Source, diffs: Sequence[SourceDiff]) -> list[str]:
    """Delete the points of each diff's deleted objects that are still gone; returns those keys
    (each diff's ``deleted`` keeps only them)."""
    deleted: set[str] = set()
    for diff in diffs:
        diff.deleted = still_gone(source, diff.deleted)
        delete_keys(index, diff.collection, source, diff.deleted)
        deleted.update(diff.deleted)
    return sorted(deleted)


def diff_lines(diff: Mapping[str, Any], *, max_items: int = 1000) -> list[str]:
    """A diff (`SourceDiff.to_dict`) as text: a count line, then ``+``/``~``/``-`` key lines for
    added, changed and deleted objects."""
    lines = [
        f"{diff['collection']}: {diff['listed']} listed, {diff['indexed_objects']} indexed; would add "
        f"{diff['added']}, re-embed {diff['changed']} changed, delete {diff['deleted']}"
    ]
    if diff.get("would_refuse"):
        lines.append(f"  the deletions would be refused: {diff['would_refuse']}")
    shown = 0
    for mark, name in (("+", "added_items"), ("~", "changed_items"), ("-", "deleted_items")):
        for key in diff.get(name, []):
            if shown >= max_items:
                lines.append("  ... (--json lists every key)")
                return lines
            lines.append(f"  {mark} {key}")
            shown += 1
    return lines
