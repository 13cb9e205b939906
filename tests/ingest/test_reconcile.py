"""Reconcile's plan (`ingest.reconcile.plan_reconcile`): a pure function of a listing, what each
collection holds and the known-bad objects; no source, store or Redis."""

from __future__ import annotations

from ingest.prune import IndexedObject
from ingest.reconcile import drift_counts, plan_reconcile
from ingest.sources.base import ObjectRef


def _listing(*refs: tuple[str, str]) -> dict[str, ObjectRef]:
    return {key: ObjectRef(key, etag, 10) for key, etag in refs}


def _held(etag: str | None, points: int = 1, expected: int = 1) -> IndexedObject:
    return IndexedObject(etag, points, expected)


def test_plan_sets_known_bad_aside_per_collection_and_embeds_each_key_once() -> None:
    listing = _listing(("a", "e1"), ("b", "e2"), ("c", "e3"), ("d", "e4"), ("n", "e5"))
    indexed = {
        # "a" held at its listed ETag; "b" at another; "c" short of points; "gone" not listed
        "one": {"a": _held("e1"), "b": _held("old"), "c": _held("e3", 1, 2), "gone": _held("x")},
        "two": {"a": _held("e1"), "b": _held("e2"), "c": _held("e3"), "d": _held("e4")},
    }
    # "d" failed at its listed ETag in "one": set aside; "n" failed at an older ETag: queued again
    bad = {"one": {"d": "e4", "n": "stale"}, "two": {"n": "e5"}}

    plan = plan_reconcile(listing, indexed, bad, max_fraction=0.5, force=False)

    assert plan.refusal is None
    one, two = plan.collections
    assert one.diff.collection == "one" and two.diff.collection == "two"
    assert (one.diff.added, one.diff.changed, one.diff.deleted, one.known_bad) == (
        ["n"],
        ["b", "c"],
        ["gone"],
        ["d"],
    )
    assert (two.diff.added, two.diff.changed, two.diff.deleted, two.known_bad) == ([], [], [], ["n"])
    assert one.counts() == {
        "bucket_objects": 5,
        "indexed_objects": 4,
        "missing": 1,
        "changed": 2,
        "gone": 1,
        "known_bad": 1,
    }
    assert two.counts() == drift_counts(two.diff, 1)
    assert [ref.key for ref in plan.to_embed(listing)] == ["b", "c", "n"]
    assert [ref.etag for ref in plan.to_embed(listing)] == ["e2", "e3", "e5"]


def test_guard_refuses_an_empty_listing_or_too_many_deletions_unless_forced() -> None:
    indexed = {"col": {f"k{i}": _held(f"e{i}") for i in range(10)}}
    some_gone = _listing(*[(f"k{i}", f"e{i}") for i in range(8)])

    refused = plan_reconcile(some_gone, indexed, {}, max_fraction=0.1, force=False)
    assert refused.refusal is not None and "2 of the 10 objects" in refused.refusal
    assert refused.collections[0].diff.deleted == ["k8", "k9"]
    assert plan_reconcile(some_gone, indexed, {}, max_fraction=0.2, force=False).refusal is None
    assert plan_reconcile(some_gone, indexed, {}, max_fraction=0.1, force=True).refusal is None

    empty = plan_reconcile({}, indexed, {}, max_fraction=1.0, force=False)
    assert empty.refusal is not None and "lists no objects" in empty.refusal
    assert empty.to_embed({}) == []


def test_refused_drift_counts_the_diff_as_the_guard_saw_it() -> None:
    listing = _listing(("new", "e1"), ("bad", "e2"))
    indexed = {"col": {"gone": _held("x")}}
    plan = plan_reconcile(listing, indexed, {"col": {"bad": "e2"}}, max_fraction=0.1, force=False)

    assert plan.refusal is not None
    assert plan.collections[0].known_bad == ["bad"]
    # known-bad objects still count as missing, none as known bad: the guard stopped before
    assert plan.refused_drift() == {
        "col": {
            "bucket_objects": 2,
            "indexed_objects": 1,
            "missing": 2,
            "changed": 0,
            "gone": 1,
            "known_bad": 0,
            "refused": True,
        }
    }
