"""Submitting work to the workers: jobs, reconciliation, dead-letter replay, bucket events.

Used by the API and the command line; everything here talks to Redis only (the job store and the
broker), never to the vector store, so it runs in processes that cannot open it.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote_plus

import redis
from celery import Celery

from core.config import Settings, Subscription
from core.errors import RadsearchError
from core.jobs import JobKind, JobRecord, JobSpec
from core.jobs.redis_store import RedisJobStore
from core.store_identity import store_id
from workers.names import (
    DELETE_TASK,
    EMBED_QUEUE,
    EMBED_TASK,
    FINISH_TASK,
    PLAN_QUEUE,
    PLAN_TASK,
    RECONCILE_TASK,
)

__all__ = [
    "BrokerUnavailable",
    "EventsReport",
    "S3Event",
    "WorkerGateway",
    "dispatch_events",
    "events_job_id",
    "follow_job",
    "parse_s3_event",
    "requeue_dead_letters",
    "submit_job",
]

_MAX_KEY_BYTES = 1024


class BrokerUnavailable(RadsearchError):
    """Redis (broker or job store) cannot be reached; nothing was enqueued."""


def _send(app: Celery, name: str, args: list[Any]) -> None:
    try:
        app.send_task(name, args=args)
    except Exception as exc:  # kombu raises OperationalError and redis errors alike
        raise BrokerUnavailable(f"cannot enqueue {name}: {type(exc).__name__}: {exc}") from exc


def submit_job(store: RedisJobStore, app: Celery, kind: JobKind, spec: JobSpec) -> str:
    """Create a job and enqueue its first task (plan, or reconcile); returns the job id."""
    if kind not in (JobKind.INGEST, JobKind.RECONCILE):
        raise ValueError(f"jobs of kind {kind} are not submitted directly")
    try:
        job_id = store.create(kind, spec)
    except redis.exceptions.RedisError as exc:
        raise BrokerUnavailable(f"cannot create the job: {type(exc).__name__}: {exc}") from exc
    try:
        _send(app, PLAN_TASK if kind == JobKind.INGEST else RECONCILE_TASK, [job_id])
    except BrokerUnavailable as exc:
        with contextlib.suppress(redis.exceptions.RedisError):
            store.fail(job_id, str(exc))
        raise
    return job_id


def requeue_dead_letters(
    store: RedisJobStore, app: Celery, *, job_id: str | None = None, for_store: str | None = None
) -> list[str]:
    """Replay dead-lettered batches (all, or one job's; with ``for_store``, of that store's jobs
    only) as new ``requeue`` jobs, one per spec.

    Objects are re-read (stat) by the workers, so a replay sees the bucket as it is now.
    """
    letters = store.take_dead_letters(job_id=job_id, for_store=for_store)
    groups: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    specs: dict[str, JobSpec] = {}
    for letter in letters:
        specs[letter.spec.to_json()] = letter.spec
        groups[letter.spec.to_json()].append((letter.task, letter.keys))
    new_ids: list[str] = []
    for spec_key, batches in groups.items():
        new_id = store.create(JobKind.REQUEUE, specs[spec_key])
        objects = sum(len(keys) for _, keys in batches)
        store.raise_counters(new_id, {"listed": objects, "queued": objects, "batches_total": len(batches)})
        for i, (task, keys) in enumerate(batches):
            name = DELETE_TASK if task == "delete" else EMBED_TASK
            _send(app, name, [new_id, f"q{i}", keys])
        store.plan_done(new_id)
        if store.is_complete(new_id):  # every batch finished before planning did
            _send(app, FINISH_TASK, [new_id])
        new_ids.append(new_id)
    return new_ids


def follow_job(
    store: RedisJobStore,
    job_id: str,
    *,
    on_update: Callable[[JobRecord], None] | None = None,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
) -> JobRecord | None:
    """Poll until the job finishes; None if it disappears (Redis restarted without persistence)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        record = store.get(job_id, with_items=False)
        if record is None:
            return None
        if on_update is not None:
            on_update(record)
        if record.finished:
            return store.get(job_id)
        if deadline is not None and time.monotonic() > deadline:
            return record
        time.sleep(poll_s)


# -- bucket events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Event:
    """One object-level notification: created, removed, or another (accessed, replicated, ...),
    which is counted as ignored."""

    action: Literal["created", "removed", "other"]
    bucket: str
    key: str


@dataclass
class EventsReport:
    """What one webhook call did."""

    received: int = 0
    enqueued: int = 0
    deletions: int = 0
    ignored: int = 0
    jobs: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "enqueued": self.enqueued,
            "deletions": self.deletions,
            "ignored": self.ignored,
            "jobs": list(self.jobs),
        }


def parse_s3_event(body: Any) -> list[S3Event]:
    """The records of a MinIO (or AWS S3) notification body; `ValueError` if it is malformed.

    Only the event name, bucket and key are used; sizes and ETags in the body are not trusted (the
    worker re-reads the object).
    """
    if not isinstance(body, Mapping):
        raise ValueError("event body must be a JSON object")
    records = body.get("Records")
    if records is None:
        return []  # MinIO's test notification and other non-object events
    if not isinstance(records, list):
        raise ValueError("'Records' must be a list")
    events: list[S3Event] = []
    for i, record in enumerate(records):
        try:
            name = record["eventName"]
            bucket = record["s3"]["bucket"]["name"]
            raw_key = record["s3"]["object"]["key"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"record {i}: missing eventName, s3.bucket.name or s3.object.key") from exc
        if not all(isinstance(v, str) for v in (name, bucket, raw_key)):
            raise ValueError(f"record {i}: eventName, bucket and key must be strings")
        key = unquote_plus(raw_key)  # keys arrive URL-encoded
        if not key or "\x00" in key or len(key.encode()) > _MAX_KEY_BYTES:
            raise ValueError(f"record {i}: invalid object key")
        name = name.removeprefix("s3:")
        if name.startswith("ObjectCreated:"):
            events.append(S3Event("created", bucket, key))
        elif name.startswith("ObjectRemoved:"):
            events.append(S3Event("removed", bucket, key))
        else:
            events.append(S3Event("other", bucket, key))
    return events


def events_job_id(sub: Subscription, day: str, store: str) -> str:
    """The deterministic id of a subscription's events job for one UTC day and store (two
    deployments sharing a Redis database and a subscription keep a job each)."""
    name = f"radsearch-events:{sub.source}|{','.join(sub.collections)}|{day}|{store}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def _matching(subscriptions: Iterable[Subscription], event: S3Event) -> list[Subscription]:
    return [s for s in subscriptions if s.bucket == event.bucket and event.key.startswith(s.prefix)]


def dispatch_events(
    settings: Settings, store: RedisJobStore, app: Celery, events: Sequence[S3Event]
) -> EventsReport:
    """Enqueue created objects for every subscribed collection; enqueue deletion of removed ones.

    Each subscription has one ``events`` job per UTC day that collects the counts.
    """
    report = EventsReport(received=len(events))
    created: dict[int, list[str]] = defaultdict(list)
    removed: dict[int, list[str]] = defaultdict(list)
    subs = list(settings.events.subscriptions)
    for event in events:
        matches = _matching(subs, event) if event.action != "other" else []
        if not matches:
            report.ignored += 1
        for sub in matches:
            target = created if event.action == "created" else removed
            if event.key not in target[subs.index(sub)]:
                target[subs.index(sub)].append(event.key)
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    store_of_jobs = store_id(settings)
    for pos in sorted(set(created) | set(removed)):
        sub = subs[pos]
        spec = JobSpec(
            source=sub.source,
            collections=tuple(sub.collections),
            manifest=sub.manifest,
            path_template=sub.path_template,
            skip_unchanged=True,
            store=store_of_jobs,
        )
        job_id = events_job_id(sub, day, store_of_jobs)
        store.ensure(JobKind.EVENTS, spec, job_id)
        report.jobs.append(job_id)
        if created.get(pos):
            keys = created[pos]
            store.add_batches(job_id, batches=1, objects=len(keys))
            args: list[Any] = [job_id, f"e{uuid.uuid4().hex}", keys]
            store.track_batch(job_id, args[1], EMBED_TASK, args)
            _send(app, EMBED_TASK, args)
            report.enqueued += len(keys)
        if removed.get(pos):
            keys = removed[pos]
            store.add_batches(job_id, batches=1, objects=len(keys))
            args = [job_id, f"d{uuid.uuid4().hex}", keys]
            store.track_batch(job_id, args[1], DELETE_TASK, args)
            _send(app, DELETE_TASK, args)
            report.deletions += len(keys)
    return report


class WorkerGateway:
    """Lazily connected job store + Celery app for a long-running process (the API)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: RedisJobStore | None = None
        self._app: Celery | None = None
        self._lock = threading.Lock()

    @property
    def store(self) -> RedisJobStore:
        with self._lock:
            if self._store is None:
                from core.jobs.redis_store import job_store_for

                self._store = job_store_for(self.settings)
            return self._store

    @property
    def app(self) -> Celery:
        with self._lock:
            if self._app is None:
                from workers.app import create_celery

                self._app = create_celery(self.settings)
            return self._app


def queue_depths(client: redis.Redis) -> dict[str, int]:
    """Messages waiting in each of our queues, every priority level summed (kombu's Redis transport
    keeps one list per queue and priority)."""
    from kombu.transport.redis import Channel

    steps = [""] + [f"{Channel.sep}{p}" for p in Channel.priority_steps if p]
    names = [(queue, f"{queue}{step}") for queue in (PLAN_QUEUE, EMBED_QUEUE) for step in steps]
    with client.pipeline() as pipe:
        for _, key in names:
            pipe.llen(key)
        lengths = pipe.execute()
    depths = dict.fromkeys((PLAN_QUEUE, EMBED_QUEUE), 0)
    for (queue, _), length in zip(names, lengths, strict=True):
        depths[queue] += int(length)
    return depths
