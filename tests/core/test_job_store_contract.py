"""One contract for the job-store backends: Redis (a private redis-server), SQLite (a file) and
memory. Every test runs against each; the owner's stores (SQLite, memory) also keep each job's
`JobMeta` and restart jobs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.config import CelerySettings
from core.jobs import COUNTERS, JobKind, JobMeta, JobSpec, JobState, JobStore, OwnerJobStore
from core.jobs.memory_store import MemoryJobStore
from core.jobs.redis_store import open_job_store
from core.jobs.sqlite_store import SqliteJobStore
from tests.workers.conftest import RedisServer, _has_redis_server

SPEC = JobSpec(source="s3://bucket/ct/", collections=("chest", "chest-clip"))
OWNER_BACKENDS = ("sqlite", "memory")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not _has_redis_server():
        pytest.fail("redis-server is not installed: the Redis job store cannot be checked")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.kill()


def _open(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        store = open_job_store(url, CelerySettings(max_failed_items=5))
        store.client.flushdb()
        return store
    if kind == "sqlite":
        return SqliteJobStore(tmp_path / "jobs" / "owner-jobs.sqlite3", max_failed_items=5)
    return MemoryJobStore(max_failed_items=5)


def _close(store: Any) -> None:
    if hasattr(store, "client"):
        store.client.close()
    else:
        store.close()


@pytest.fixture(params=["redis", "sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    opened = _open(request.param, request, tmp_path)
    try:
        yield opened
    finally:
        _close(opened)


@pytest.fixture(params=OWNER_BACKENDS)
def owner_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OwnerJobStore]:
    opened = _open(request.param, request, tmp_path)
    try:
        yield opened
    finally:
        _close(opened)


def _state(store: JobStore, job_id: str) -> JobState:
    record = store.get(job_id)
    assert record is not None
    return record.state


def test_a_new_job_is_queued_with_every_counter_at_zero(store: JobStore) -> None:
    spec = JobSpec(
        source="s3://bucket/ct/",
        collections=("chest",),
        manifest="s3://bucket/labels.csv",
        path_template="{patient}/{study}",
        skip_unchanged=False,
        encoder="baseline",
        batch_size=7,
        accept_burned_in=True,
        source_name="ct",
    )
    before = time.time()
    job_id = store.create(JobKind.INGEST, spec)
    record = store.get(job_id)
    assert record is not None
    assert record.id == job_id and record.kind == JobKind.INGEST and record.state == JobState.QUEUED
    assert record.spec == spec
    assert record.counts == dict.fromkeys(COUNTERS, 0) and list(record.counts) == list(COUNTERS)
    assert not record.planned and not record.finished
    assert record.started_at is None and record.finished_at is None and record.seconds is None
    assert before - 1 <= record.created_at <= time.time() + 1
    assert record.error is None and record.failed_items == []
    assert record.executor == "celery" and record.summary is None
    assert store.get("0" * 32) is None


def test_a_given_id_is_kept(store: JobStore) -> None:
    job_id = "events-chest-20260101"
    assert store.create(JobKind.EVENTS, SPEC, job_id=job_id) == job_id
    record = store.get(job_id)
    assert record is not None and record.kind == JobKind.EVENTS


def test_a_batch_counts_once_and_counters_only_grow(store: JobStore) -> None:
    job_id = store.create(JobKind.INGEST, SPEC)
    store.raise_counters(job_id, {"listed": 20, "queued": 20, "batches_total": 2})
    store.raise_counters(job_id, {"listed": 10, "batches_total": 1})  # a re-run planner
    assert store.complete_batch(job_id, "b0", {"objects_done": 10, "indexed_frames": 12}, [("k1", "bad")])
    assert not store.complete_batch(job_id, "b0", {"objects_done": 10, "indexed_frames": 12}, [("k1", "bad")])
    assert store.complete_batch(job_id, "b1", {"objects_done": 10, "failed": 1}, [("k2", "gone")])
    record = store.get(job_id)
    assert record is not None
    assert record.counts["listed"] == 20 and record.counts["queued"] == 20
    assert record.counts["batches_total"] == 2 and record.counts["batches_done"] == 2
    assert record.counts["objects_done"] == 20 and record.counts["indexed_frames"] == 12
    assert record.counts["failed"] == 1
    assert record.failed_items == [{"key": "k1", "reason": "bad"}, {"key": "k2", "reason": "gone"}]
    # a batch of a job the store does not have is ignored, not resurrected as a half job
    assert not store.complete_batch("0" * 32, "b0", {"objects_done": 1})
    store.raise_counters("0" * 32, {"listed": 1})
    assert store.get("0" * 32) is None


def test_failed_items_are_capped_and_read_in_pages(store: JobStore) -> None:
    job_id = store.create(JobKind.INGEST, SPEC)
    store.complete_batch(job_id, "b0", {"failed": 4}, [(f"k{i}", "bad") for i in range(4)])
    store.complete_batch(job_id, "b1", {"failed": 4}, [(f"k{i}", "bad") for i in range(4, 8)])
    record = store.get(job_id)
    assert record is not None and record.counts["failed"] == 8
    assert [item["key"] for item in record.failed_items] == ["k0", "k1", "k2", "k3", "k4"]  # max 5 kept
    page = store.get(job_id, max_items=2)
    assert page is not None and [item["key"] for item in page.failed_items] == ["k0", "k1"]
    bare = store.get(job_id, with_items=False)
    assert bare is not None and bare.failed_items == []


def test_a_misspelt_counter_is_refused(store: JobStore) -> None:
    job_id = store.create(JobKind.INGEST, SPEC)
    with pytest.raises(ValueError, match="objects_dne"):
        store.raise_counters(job_id, {"objects_dne": 1})
    with pytest.raises(ValueError, match="frames"):
        store.complete_batch(job_id, "b0", {"frames": 1})
    assert store.complete_batch(job_id, "b0", {"objects_done": 1})  # the refused one left no trace
    record = store.get(job_id)
    assert record is not None and record.counts["batches_done"] == 1
    assert "objects_dne" not in record.counts and "frames" not in record.counts


def test_the_state_machine(store: JobStore) -> None:
    job_id = store.create(JobKind.INGEST, SPEC)
    store.mark_planning(job_id)
    record = store.get(job_id)
    assert record is not None and record.state == JobState.PLANNING and record.started_at is not None
    started = record.started_at
    store.raise_counters(job_id, {"batches_total": 2})
    assert store.complete_batch(job_id, "b0", {"objects_done": 1})
    assert _state(store, job_id) == JobState.RUNNING
    assert store.complete_batch(job_id, "b1", {"objects_done": 1})
    # every planned batch is counted, but planning may still add batches: not complete
    assert not store.is_complete(job_id) and not store.finish(job_id)
    assert _state(store, job_id) == JobState.RUNNING
    store.plan_done(job_id)
    record = store.get(job_id)
    assert record is not None and record.planned and record.state == JobState.RUNNING
    assert record.started_at == started
    # complete, and done only once the caller finishes it (its collections are indexed)
    assert store.is_complete(job_id)
    assert store.finish(job_id)
    assert not store.is_complete(job_id) and not store.finish(job_id)
    done = store.get(job_id)
    assert done is not None and done.state == JobState.DONE and done.finished
    assert done.finished_at is not None and done.seconds is not None and done.seconds >= 0
    # a batch counted after the end leaves the job done
    assert store.complete_batch(job_id, "b2", {"objects_done": 1})
    assert _state(store, job_id) == JobState.DONE


def test_a_planned_job_with_batches_left_is_not_complete(store: JobStore) -> None:
    job_id = store.create(JobKind.INGEST, SPEC)
    store.raise_counters(job_id, {"batches_total": 2})
    store.plan_done(job_id)
    assert store.complete_batch(job_id, "b0", {"objects_done": 1})
    assert not store.is_complete(job_id) and not store.finish(job_id)
    assert store.complete_batch(job_id, "b1", {"objects_done": 1})
    assert store.is_complete(job_id) and store.finish(job_id)


def test_a_failed_job_stays_failed(store: JobStore) -> None:
    job_id = store.create(JobKind.INGEST, SPEC)
    store.fail(job_id, "source unreachable")
    record = store.get(job_id)
    assert record is not None and record.state == JobState.FAILED and record.error == "source unreachable"
    assert record.started_at is not None and record.finished_at is not None and record.finished
    store.plan_done(job_id)
    assert not store.is_complete(job_id) and not store.finish(job_id)
    assert _state(store, job_id) == JobState.FAILED
    store.fail("0" * 32, "nothing")  # no job: nothing happens
    assert store.get("0" * 32) is None


def test_recent_and_unfinished(store: JobStore) -> None:
    ids = []
    for _ in range(4):
        ids.append(store.create(JobKind.INGEST, SPEC))
        time.sleep(0.01)  # distinct creation times
    store.complete_batch(ids[0], "b0", {"failed": 1}, [("k", "bad")])
    store.plan_done(ids[1])
    assert store.finish(ids[1])
    store.fail(ids[2], "broken")
    recent = store.recent(limit=3)
    assert [r.id for r in recent] == [ids[3], ids[2], ids[1]]
    assert all(r.failed_items == [] for r in store.recent())
    assert [r.id for r in store.recent()] == ids[::-1]
    assert store.unfinished() == [ids[0], ids[3]]
    assert store.unfinished(limit=1) == [ids[3]]


def test_an_owner_job_is_answered_with_its_meta(owner_store: OwnerJobStore) -> None:
    job_id = owner_store.create(JobKind.BACKFILL, SPEC)
    plain = owner_store.get(job_id)
    assert plain is not None and plain.executor == "celery" and owner_store.load_meta(job_id) is None
    meta = JobMeta(kind="backfill", targets=("chest",), resume={"target": "chest", "origin": "old"})
    owner_store.save_meta(job_id, meta)
    assert owner_store.load_meta(job_id) == meta
    meta.summary, meta.resumed = {"objects": 3, "frames_indexed": 3, "collection": "chest"}, 1
    assert owner_store.load_meta(job_id) != meta  # saved, not shared
    owner_store.save_meta(job_id, meta)
    record = owner_store.get(job_id)
    assert record is not None
    assert record.kind == JobKind.BACKFILL and record.executor == "owner"
    assert record.summary == meta.summary and record.resumed == 1 and record.error_status is None
    assert list(record.summary) == ["objects", "frames_indexed", "collection"]  # as the job wrote it
    data = record.to_dict()
    assert data["kind"] == "backfill" and data["executor"] == "owner" and data["resumed"] == 1
    assert [r.executor for r in owner_store.recent()] == ["owner"]


def test_a_restarted_job_runs_again_from_the_start(owner_store: OwnerJobStore) -> None:
    job_id = owner_store.create(JobKind.INGEST, SPEC)
    meta = JobMeta(kind="ingest", targets=SPEC.collections)
    owner_store.save_meta(job_id, meta)
    owner_store.mark_planning(job_id)
    owner_store.raise_counters(job_id, {"batches_total": 1})
    assert owner_store.complete_batch(job_id, "b1", {"objects_done": 2}, [("k", "bad")])
    owner_store.restart(job_id)
    record = owner_store.get(job_id)
    assert record is not None and record.state == JobState.QUEUED and not record.planned
    assert record.counts == dict.fromkeys(COUNTERS, 0) and record.failed_items == []
    assert record.started_at is None and owner_store.load_meta(job_id) == meta
    assert owner_store.complete_batch(job_id, "b1", {"objects_done": 2})  # counted again


def test_the_sqlite_store_outlives_its_connection(tmp_path: Path) -> None:
    """The owner's durable store keeps the rules in a file that a new process reads back whole."""
    path = tmp_path / "jobs" / "owner-jobs.sqlite3"
    store = SqliteJobStore(path)
    job_id = store.create(JobKind.INGEST, JobSpec(source="s3://b", collections=("c",)))
    store.mark_planning(job_id)
    store.raise_counters(job_id, {"listed": 4, "batches_total": 2})
    assert store.complete_batch(job_id, "b1", {"objects_done": 2}, [("k1", "bad pixels")])
    assert not store.complete_batch(job_id, "b1", {"objects_done": 2})
    store.plan_done(job_id)
    assert store.unfinished() == [job_id]
    store.close()

    reopened = SqliteJobStore(path, read_only=True)
    record = reopened.get(job_id)
    reopened.close()
    assert record is not None and record.state == JobState.RUNNING
    assert record.counts["objects_done"] == 2 and record.counts["batches_done"] == 1
    assert record.failed_items == [{"key": "k1", "reason": "bad pixels"}]

    store = SqliteJobStore(path)
    assert store.complete_batch(job_id, "b2", {"objects_done": 2})
    assert store.finish(job_id)
    done = store.get(job_id)
    assert done is not None and done.state == JobState.DONE and done.counts["objects_done"] == 4
    store.restart(job_id)
    again = store.get(job_id)
    store.close()
    assert again is not None and again.state == JobState.QUEUED and again.counts["objects_done"] == 0
