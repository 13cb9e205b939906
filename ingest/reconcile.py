"""Reconcile's plan: a pure function of what a source lists, what each collection holds of it and
which objects are known to be bad.

Per collection it gives the diff (`ingest.prune.diff_source`) with the known-bad objects set
aside: listed, not indexed, and failed before at the ETag the source lists now, so they are not
queued again until they change. Across collections it gives the deletion guard's verdict
(`ingest.prune.guard_message`), the objects to embed, and the drift counts a reconcile job
reports. The I/O around it (listing, scrolling, re-checking that deleted objects are still gone,
deleting, enqueueing) is the caller's: `workers.tasks.reconcile_job`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ingest.prune import IndexedObject, SourceDiff, diff_source, guard_message
from ingest.sources.base import ObjectRef

__all__ = ["CollectionPlan", "ReconcilePlan", "drift_counts", "plan_reconcile"]


def drift_counts(diff: SourceDiff, known_bad: int) -> dict[str, Any]:
    """The drift of one collection as a reconcile job reports it (``missing``: objects to add)."""
    return {
        "bucket_objects": diff.listed,
        "indexed_objects": diff.indexed,
        "missing": len(diff.added),
        "changed": len(diff.changed),
        "gone": len(diff.deleted),
        "known_bad": known_bad,
    }


@dataclass
class CollectionPlan:
    """One collection's part: its diff (``added`` without the known-bad objects) and the
    known-bad objects set aside (keys sorted)."""

    diff: SourceDiff
    known_bad: list[str]

    def counts(self) -> dict[str, Any]:
        """`drift_counts` of this collection."""
        return drift_counts(self.diff, len(self.known_bad))


@dataclass
class ReconcilePlan:
    """Every collection's part, in the order given, and why the guard refuses the deletions
    (None: they are allowed)."""

    collections: list[CollectionPlan]
    refusal: str | None

    def refused_drift(self) -> dict[str, dict[str, Any]]:
        """The drift recorded on a job the guard stops: the counts of the diffs as the guard saw
        them (before known-bad objects were set aside), marked ``refused``."""
        return {
            part.diff.collection: {
                **drift_counts(part.diff, 0),
                "missing": len(part.diff.added) + len(part.known_bad),
                "refused": True,
            }
            for part in self.collections
        }

    def to_embed(self, listing: Mapping[str, ObjectRef]) -> list[ObjectRef]:
        """The listed references of every collection's added and changed objects, once each,
        sorted by key."""
        keys = {key for part in self.collections for key in (*part.diff.added, *part.diff.changed)}
        return [listing[key] for key in sorted(keys)]


def plan_reconcile(
    listing: Mapping[str, ObjectRef],
    indexed: Mapping[str, Mapping[str, IndexedObject]],
    bad: Mapping[str, Mapping[str, str]],
    *,
    max_fraction: float,
    force: bool,
) -> ReconcilePlan:
    """The plan for ``listing`` (key → reference) against each collection's ``indexed`` objects
    (collection → key → what it holds, `ingest.prune.indexed_objects`), with ``bad`` (collection
    → key → the ETag it failed at) set aside; the guard as `ingest.prune.check_deletions` with
    ``max_fraction`` and ``force``."""
    diffs = [diff_source(collection, listing, held) for collection, held in indexed.items()]
    refusal = guard_message(diffs, max_fraction=max_fraction, force=force)
    parts: list[CollectionPlan] = []
    for diff in diffs:
        failed_at = bad.get(diff.collection, {})
        known_bad = [key for key in diff.added if failed_at.get(key) == listing[key].etag]
        diff.added = [key for key in diff.added if failed_at.get(key) != listing[key].etag]
        parts.append(CollectionPlan(diff, known_bad))
    return ReconcilePlan(parts, refusal)
