"""Worker heartbeats: which workers are alive, on which queues, and whether a job waits for none.

Every worker (its main process, whatever the pool) writes a heartbeat to Redis every
``celery.worker_heartbeat_s`` from a thread of its own, so a long task does not silence it::

    worker:{hostname}   JSON `WorkerBeat`, expiring after ``celery.worker_dead_after_s``
    workers             sorted set hostname → last beat (the index; stale entries pruned on read)

A worker stopped cleanly removes its heartbeat at once; one killed outright drops off when its
key expires. A job that is not finished and whose queue (`job_queue`) has had no live worker for
``worker_dead_after_s`` gets a `waiting` reason, shown by the API and ``radsearch jobs show``.
Times are injected (``now``) so tests need not wait on the wall clock.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis
from celery import bootsteps, signals

from core.config import CelerySettings, Settings
from core.errors import RadsearchError
from core.jobs import JobRecord, JobState
from core.jobs.redis_store import RedisJobStore, broker_client
from core.store_identity import served_store_id
from workers.held_messages import forget_held, held_delivery_tags, instance_id, record_held
from workers.names import EMBED_QUEUE, PLAN_QUEUE, settings_of

__all__ = [
    "HeartbeatStep",
    "HeartbeatThread",
    "WorkerBeat",
    "job_queue",
    "job_waiting",
    "live_workers",
    "remove_beat",
    "waiting_reason",
    "write_beat",
]

log = logging.getLogger(__name__)

_PREFIX = "radsearch:"
_INDEX = f"{_PREFIX}workers"
# A worker's start waits this long at most for its owner to name the store (`_store_of`).
_STORE_ASK_TIMEOUT_S = 5.0


def _key(hostname: str) -> str:
    return f"{_PREFIX}worker:{hostname}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class WorkerBeat:
    """One worker as its last heartbeat described it."""

    hostname: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    active: int
    started_at: float
    last_seen: float
    #: The store it writes (`core.store_identity`); None where it could not tell at its start.
    store: str | None = None

    @property
    def instance(self) -> str:
        """This worker process's key among the held messages (`workers.held_messages`)."""
        return instance_id(self.hostname, self.pid, self.started_at)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> WorkerBeat:
        data = json.loads(text)
        return cls(
            hostname=str(data["hostname"]),
            pid=int(data["pid"]),
            queues=tuple(str(q) for q in data["queues"]),
            concurrency=int(data["concurrency"]),
            active=int(data["active"]),
            started_at=float(data["started_at"]),
            last_seen=float(data["last_seen"]),
            store=data.get("store"),
        )

    def to_dict(self) -> dict[str, Any]:
        """As the API and ``radsearch jobs workers --json`` show it (ISO times, UTC)."""
        return {
            "hostname": self.hostname,
            "pid": self.pid,
            "queues": list(self.queues),
            "concurrency": self.concurrency,
            "active": self.active,
            "started_at": _iso(self.started_at),
            "last_seen": _iso(self.last_seen),
            "store": self.store,
        }


def write_beat(
    client: redis.Redis, beat: WorkerBeat, *, ttl_s: float, held: tuple[str, ...] | None = None
) -> None:
    """Record ``beat``; its key expires after ``ttl_s`` unless the next beat comes first. With
    ``held``, the delivery tags of the messages the worker holds too (`workers.held_messages`)."""
    with client.pipeline() as pipe:
        pipe.set(_key(beat.hostname), beat.to_json(), px=max(int(ttl_s * 1000), 1))
        pipe.zadd(_INDEX, {beat.hostname: beat.last_seen})
        if held is not None:
            record_held(pipe, beat.instance, beat.hostname, beat.last_seen, held)
        pipe.execute()


def remove_beat(client: redis.Redis, beat: WorkerBeat) -> None:
    """Forget a worker at once (clean shutdown), with the messages it held."""
    with client.pipeline() as pipe:
        pipe.delete(_key(beat.hostname))
        pipe.zrem(_INDEX, beat.hostname)
        forget_held(pipe, beat.instance)
        pipe.execute()


def live_workers(client: redis.Redis, *, dead_after_s: float, now: float | None = None) -> list[WorkerBeat]:
    """Workers heard from within ``dead_after_s`` of ``now``, by hostname."""
    now = time.time() if now is None else now
    cutoff = now - dead_after_s
    # Index entries of workers gone for good (killed: their key expired) are pruned here.
    client.zremrangebyscore(_INDEX, "-inf", f"({cutoff - dead_after_s}")
    names = cast(list[Any], client.zrangebyscore(_INDEX, cutoff, "+inf"))
    if not names:
        return []
    raw = cast(list[Any], client.mget([_key(_text(n)) for n in names]))
    out: list[WorkerBeat] = []
    for value in raw:
        if value is None:
            continue
        try:
            beat = WorkerBeat.from_json(_text(value))
        except (ValueError, KeyError, TypeError):
            continue
        if beat.last_seen >= cutoff:
            out.append(beat)
    return sorted(out, key=lambda b: b.hostname)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def job_queue(record: JobRecord) -> str | None:
    """The queue whose workers the job needs next; None once it is finished.

    Queued and planning jobs wait for a planner (``plan``); a running job with batches left
    for the embedders (``embed``), and once every batch is done for the planner that finishes it.
    """
    if record.finished:
        return None
    if record.state in (JobState.QUEUED, JobState.PLANNING):
        return PLAN_QUEUE
    if record.counts["batches_done"] < record.counts["batches_total"]:
        return EMBED_QUEUE
    return PLAN_QUEUE


def waiting_reason(
    record: JobRecord, workers: list[WorkerBeat], *, now: float, dead_after_s: float
) -> str | None:
    """``"no live worker on queue plan"`` when the job needs a queue no live worker of its store
    serves and has existed for ``dead_after_s`` (a worker that is just starting gets that long);
    else None. A worker of another store (a deployment sharing this Redis) leaves the job alone."""
    queue = job_queue(record)
    if queue is None or now - record.created_at < dead_after_s:
        return None
    # a job of an earlier version names no store: any worker runs it; a worker that could not
    # tell its store may be one of the job's
    ours = [beat for beat in workers if record.spec.store is None or beat.store in (record.spec.store, None)]
    if any(queue in beat.queues for beat in ours):
        return None
    if any(queue in beat.queues for beat in workers):
        return f"no live worker of its store on queue {queue} (the live ones write another store)"
    return f"no live worker on queue {queue}"


def job_waiting(
    store: RedisJobStore, record: JobRecord, settings: CelerySettings, *, now: float | None = None
) -> str | None:
    """`waiting_reason` with the live workers read from the job store's Redis."""
    if record.finished:
        return None
    now = time.time() if now is None else now
    workers = live_workers(store.client, dead_after_s=settings.worker_dead_after_s, now=now)
    return waiting_reason(record, workers, now=now, dead_after_s=settings.worker_dead_after_s)


class HeartbeatThread:
    """Writes ``describe()`` (and ``held()``, the messages the worker holds) every ``interval_s``
    (the first at once) until `stop`; a Redis error is logged and the next beat tried as usual."""

    def __init__(
        self,
        client: redis.Redis,
        describe: Callable[[], WorkerBeat],
        *,
        interval_s: float,
        ttl_s: float,
        held: Callable[[], tuple[str, ...]] | None = None,
    ) -> None:
        self.client = client
        self.describe = describe
        self.held = held
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: WorkerBeat | None = None
        self._failing = False

    def beat(self, *, also_held: tuple[str, ...] = ()) -> None:
        """Write a beat now; ``also_held``: tags of messages taken that the worker's state does
        not list yet (a task just received)."""
        beat = self.describe()
        self._last = beat
        held = tuple(sorted({*self.held(), *also_held})) if self.held else None
        try:
            write_beat(self.client, beat, ttl_s=self.ttl_s, held=held)
        except redis.exceptions.RedisError as exc:
            if not self._failing:
                log.warning("worker heartbeat not written (%s); retrying", type(exc).__name__)
            self._failing = True
        else:
            self._failing = False

    def _run(self) -> None:
        while True:
            self.beat()
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="radsearch-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and remove the heartbeat (the worker is gone from the list at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
            self._thread = None
        if self._last is not None:
            try:
                remove_beat(self.client, self._last)
            except redis.exceptions.RedisError:
                pass  # the key expires by itself


def _store_of(settings: Settings) -> str | None:
    """The store the worker writes, for its beats; None where its owner does not answer now (a
    worker may start before the server: it then counts as a worker of every store)."""
    try:
        return served_store_id(settings, timeout_s=_STORE_ASK_TIMEOUT_S)
    except RadsearchError as exc:
        log.warning("heartbeat: the worker's store is unknown (%s)", exc)
        return None


class HeartbeatStep(bootsteps.StartStopStep):  # type: ignore[misc]  # celery is untyped
    """A worker blueprint step: the heartbeat of the worker's main process.

    With the prefork pool the beats run on the worker's timer, not in a thread: the main process
    forks pool children (again after a child dies), and a fork while another thread runs can hand
    the child a lock held forever. With ``solo``/``threads`` the main thread runs the tasks, so a
    thread keeps beating through a long batch."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.thread: HeartbeatThread | None = None
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        from celery.worker import state  # the worker's own machinery: loaded in workers only

        settings = settings_of(parent.app)
        cfg = settings.celery
        client = broker_client(settings)
        hostname = str(parent.hostname)
        queues = tuple(sorted(parent.app.amqp.queues.consume_from or ()))
        concurrency = int(parent.concurrency or 1)
        pid = os.getpid()
        started_at = time.time()
        store = _store_of(settings)

        def describe() -> WorkerBeat:
            return WorkerBeat(
                hostname=hostname,
                pid=pid,
                queues=queues,
                concurrency=concurrency,
                active=len(state.active_requests),
                started_at=started_at,
                last_seen=time.time(),
                store=store,
            )

        self.thread = HeartbeatThread(
            client,
            describe,
            interval_s=cfg.worker_heartbeat_s,
            ttl_s=cfg.worker_dead_after_s,
            held=held_delivery_tags,
        )
        if _is_prefork(parent):
            self.thread.beat()
            self.tref = parent.timer.call_repeatedly(cfg.worker_heartbeat_s, self.thread.beat, priority=10)
        else:
            self.thread.start()
        # A task taken is recorded at once, not at the next beat: a worker killed in between
        # would otherwise leave its message to the visibility timeout (`workers.held_messages`).
        signals.task_received.connect(self._received, weak=False)

    def _received(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        tag = getattr(getattr(request, "message", None), "delivery_tag", None)
        if self.thread is not None and tag:
            self.thread.beat(also_held=(str(tag),))

    def stop(self, parent: Any) -> None:
        signals.task_received.disconnect(self._received)
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        if self.thread is not None:
            self.thread.stop()
            self.thread.client.close()
            self.thread = None

    terminate = stop


def _is_prefork(parent: Any) -> bool:
    """Whether the worker runs its tasks in forked pool children (celery's prefork pool)."""
    pool_cls = getattr(parent, "pool_cls", None)
    return "prefork" in f"{getattr(pool_cls, '__module__', '')}.{pool_cls}".lower()
