"""The job store of the Celery workers (`RedisJobStore`): state, progress counters, failed items
and dead letters, kept in Redis.

Keys (prefix ``radsearch:``)::

    job:{id}             hash: kind, state, spec (JSON), times, counters (HINCRBY), drift, error
    job:{id}:batches     set of finished batch ids: a batch delivered twice is counted once
    job:{id}:failed      list of failed items (JSON ``{key, reason}``), capped
    jobs                 sorted set of job ids by creation time (recent jobs)
    job:{id}:pending     hash batch id → task and args of each sent batch not yet done (resent if lost)
    job:{id}:active      time of the job's last send, batch start or completion
    deliveries:{id}:{b}  how often batch ``b`` of job ``id`` was started (poison-message guard)
    deadletter           list of dead-lettered batches (JSON), replayed by ``radsearch jobs requeue``
    bad:{collection}     hash ``source\\x1fkey`` → ETag of objects that cannot be decoded, so
                         reconciliation does not re-enqueue a known-bad object at the same ETag
    epoch                8 hex digits, written once (SET NX) by the first job created in this Redis

A job id begins with the store's epoch (the first 8 hex digits of the UUID). A Redis restarted
without persistence has lost its epoch with everything else; the epochs are mirrored in
``<data_dir>/jobs/redis-epochs`` (and remembered by the process), so a missing job whose id
carries an earlier epoch is reported lost (`RedisJobStore.lost`), not unknown.

Batch completion and counting happen in one Lua script, so a batch that is redelivered after a
crash (``acks_late``) never counts twice. A job whose planned batches are all done is *complete*
but still ``running``: it becomes ``done`` (`RedisJobStore.finish`, again one script that re-checks
completeness) once its collections are indexed, so a ``done`` job's collections are searchable
at full speed.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import redis

from core.config import CelerySettings, Settings
from core.jobs.records import (
    COUNTERS,
    FINAL_STATES,
    DeadLetter,
    JobKind,
    JobRecord,
    JobSpec,
    JobState,
    check_counters,
)

__all__ = ["RedisJobStore", "broker_client", "job_store_for", "open_job_store"]

_PREFIX = "radsearch:"
_JOBS_INDEX = f"{_PREFIX}jobs"
_DEADLETTER = f"{_PREFIX}deadletter"
_EPOCH = f"{_PREFIX}epoch"
_EPOCHS_FILE = "redis-epochs"

# KEYS: job hash, batches set, failed list. ARGV: batch id, now, ttl, max failed items, n counter
# pairs, (field, increment)..., failed item JSONs...
_COMPLETE_BATCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
local ttl = tonumber(ARGV[3])
redis.call('EXPIRE', KEYS[2], ttl)
local maxf = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local i = 6
for _ = 1, n do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  if redis.call('LLEN', KEYS[3]) < maxf then redis.call('RPUSH', KEYS[3], ARGV[i]) end
  i = i + 1
end
redis.call('EXPIRE', KEYS[3], ttl)
redis.call('HINCRBY', KEYS[1], 'batches_done', 1)
if redis.call('HGET', KEYS[1], 'started_at') == false then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[2])
end
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'done' and state ~= 'failed' then
  redis.call('HSET', KEYS[1], 'state', 'running')
end
return 1
"""

# KEYS: job hash. ARGV: now, (field, value)... — raise each field to at least value.
_RAISE_COUNTERS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local i = 2
while i <= #ARGV do
  local current = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > current then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  i = i + 2
end
return 1
"""

# KEYS: job hash. ARGV: now. Planning finished (the job may be complete already: see _FINISH).
_PLAN_DONE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], 'planned', '1')
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' or state == 'failed' then return 0 end
if redis.call('HGET', KEYS[1], 'started_at') == false then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[1])
end
redis.call('HSET', KEYS[1], 'state', 'running')
return 1
"""

# KEYS: job hash. ARGV: now. The job is done if it is still complete (every planned batch done):
# a batch added meanwhile (events) keeps it running.
_FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' or state == 'failed' then return 0 end
local planned = redis.call('HGET', KEYS[1], 'planned')
local done = tonumber(redis.call('HGET', KEYS[1], 'batches_done') or '0')
local total = tonumber(redis.call('HGET', KEYS[1], 'batches_total') or '0')
if planned ~= '1' or done < total then return 0 end
if redis.call('HGET', KEYS[1], 'started_at') == false then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[1])
end
redis.call('HSET', KEYS[1], 'state', 'done', 'finished_at', ARGV[1])
return 1
"""

# KEYS: job hash. ARGV: now, ttl, batches, objects. More work for a long-lived (events) job.
_ADD_BATCHES = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HINCRBY', KEYS[1], 'batches_total', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'listed', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'queued', ARGV[4])
redis.call('HSET', KEYS[1], 'state', 'running')
redis.call('HDEL', KEYS[1], 'finished_at')
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


def _job_key(job_id: str) -> str:
    return f"{_PREFIX}job:{job_id}"


def _pending_key(job_id: str) -> str:
    return f"{_job_key(job_id)}:pending"


def _active_key(job_id: str) -> str:
    return f"{_job_key(job_id)}:active"


def _float(raw: str | None) -> float | None:
    return None if raw is None or raw == "" else float(raw)


class RedisJobStore:
    """`core.jobs.store.JobStore` over one Redis database (with what the Celery workers need
    besides: sent batches, the delivery guard, dead letters, known-bad objects, the epoch); every
    method is a few round trips at most."""

    def __init__(
        self, client: redis.Redis, settings: CelerySettings, *, epoch_dir: Path | None = None
    ) -> None:
        self.client = client
        self.settings = settings
        self.epoch_dir = epoch_dir
        self._epochs_seen: set[str] = set()
        self._complete = client.register_script(_COMPLETE_BATCH)
        self._raise = client.register_script(_RAISE_COUNTERS)
        self._plan_done = client.register_script(_PLAN_DONE)
        self._add_batches = client.register_script(_ADD_BATCHES)
        self._finish = client.register_script(_FINISH)

    # -- epoch ---------------------------------------------------------------------------------

    def epoch(self, *, create: bool = False) -> str | None:
        """This Redis's job-store epoch; with ``create``, set first if it has none."""
        if not create:
            return cast(str | None, self.client.get(_EPOCH))
        with self.client.pipeline() as pipe:
            pipe.set(_EPOCH, uuid.uuid4().hex[:8], nx=True)
            pipe.get(_EPOCH)
            _, value = pipe.execute()
        epoch = str(value)
        self._remember(epoch)
        return epoch

    def _remember(self, epoch: str) -> None:
        if epoch in self._epochs_seen:
            return
        mirrored = epoch in self.known_epochs()
        self._epochs_seen.add(epoch)
        if self.epoch_dir is None or mirrored:
            return
        with contextlib.suppress(OSError):  # a read-only data dir: the process remembers it still
            self.epoch_dir.mkdir(parents=True, exist_ok=True)
            with (self.epoch_dir / _EPOCHS_FILE).open("a", encoding="utf-8") as handle:
                handle.write(f"{epoch} {time.time():.0f}\n")

    def known_epochs(self) -> list[str]:
        """The epochs jobs were created under, oldest first (mirrored in the data dir)."""
        seen: list[str] = []
        if self.epoch_dir is not None:
            with contextlib.suppress(OSError):
                for line in (self.epoch_dir / _EPOCHS_FILE).read_text(encoding="utf-8").splitlines():
                    epoch = line.split(" ", 1)[0].strip()
                    if epoch and epoch not in seen:
                        seen.append(epoch)
        seen += sorted(self._epochs_seen - set(seen))
        return seen

    def lost(self, job_id: str) -> bool:
        """Whether a job that `get` does not find was created under an earlier epoch of the store
        (which has been reset since), rather than never existing here."""
        prefix = job_id.replace("-", "")[:8].lower()
        if prefix not in self.known_epochs():
            return False
        return prefix != self.epoch()

    def was_reset(self) -> bool:
        """Whether the store lost its state since the latest job created through this data dir."""
        known = self.known_epochs()
        return bool(known) and self.epoch() != known[-1]

    # -- jobs ------------------------------------------------------------------------------------

    def create(self, kind: JobKind, spec: JobSpec, *, job_id: str | None = None) -> str:
        """A new job in state ``queued``; ids are uuid4 beginning with the store's epoch, unless
        given (events jobs)."""
        if job_id is None:
            epoch = self.epoch(create=True) or ""
            job_id = str(uuid.UUID(hex=epoch + uuid.uuid4().hex[len(epoch) :]))
        now = time.time()
        # Any: redis-py's mapping type is invariant in a union of key types.
        fields: dict[Any, Any] = {
            "id": job_id,
            "kind": kind.value,
            "state": JobState.QUEUED.value,
            "spec": spec.to_json(),
            "created_at": repr(now),
            "planned": "0",
            **dict.fromkeys(COUNTERS, "0"),
        }
        with self.client.pipeline() as pipe:
            pipe.hset(_job_key(job_id), mapping=fields)
            pipe.expire(_job_key(job_id), self.settings.job_ttl_s)
            pipe.zadd(_JOBS_INDEX, {job_id: now})
            pipe.execute()
        return job_id

    def ensure(self, kind: JobKind, spec: JobSpec, job_id: str) -> None:
        """Create the job if it does not exist (a long-lived job with a deterministic id)."""
        if not self.client.exists(_job_key(job_id)):
            self.create(kind, spec, job_id=job_id)
            self.client.hset(_job_key(job_id), mapping={"planned": "1", "state": JobState.DONE.value})

    def get(self, job_id: str, *, with_items: bool = True, max_items: int = 1000) -> JobRecord | None:
        """The job, or None if it does not exist (never created, expired, or Redis lost it)."""
        raw = cast(dict[str, str], self.client.hgetall(_job_key(job_id)))
        if not raw or "spec" not in raw:
            return None
        items: list[dict[str, str]] = []
        if with_items:
            rows = cast(list[str], self.client.lrange(f"{_job_key(job_id)}:failed", 0, max_items - 1))
            items = [json.loads(row) for row in rows]
        return JobRecord(
            id=job_id,
            kind=JobKind(raw.get("kind", JobKind.INGEST.value)),
            state=JobState(raw.get("state", JobState.QUEUED.value)),
            spec=JobSpec.from_json(raw["spec"]),
            created_at=float(raw.get("created_at", "0")),
            started_at=_float(raw.get("started_at")),
            finished_at=_float(raw.get("finished_at")),
            counts={name: int(raw.get(name, "0")) for name in COUNTERS},
            planned=raw.get("planned") == "1",
            error=raw.get("error") or None,
            drift=json.loads(raw["drift"]) if raw.get("drift") else None,
            failed_items=items,
        )

    def spec(self, job_id: str) -> JobSpec | None:
        raw = cast(str | None, self.client.hget(_job_key(job_id), "spec"))
        return None if raw is None else JobSpec.from_json(raw)

    def state(self, job_id: str) -> JobState | None:
        raw = cast(str | None, self.client.hget(_job_key(job_id), "state"))
        return None if raw is None else JobState(raw)

    def recent(self, *, limit: int = 50, for_store: str | None = None) -> list[JobRecord]:
        """The most recent jobs first; ids whose job expired are dropped from the index. With
        ``for_store``, that store's jobs only (and those of an earlier version, which name none):
        another deployment sharing this Redis database keeps jobs here too."""
        limit = max(limit, 1)
        out: list[JobRecord] = []
        start = 0
        while len(out) < limit:
            ids = cast(list[str], self.client.zrevrange(_JOBS_INDEX, start, start + limit - 1))
            if not ids:
                break
            start += len(ids)
            gone: list[str] = []
            for job_id in ids:
                record = self.get(job_id, with_items=False)
                if record is None:
                    gone.append(job_id)
                elif _of_store(record.spec, for_store):
                    out.append(record)
            if gone:
                self.client.zrem(_JOBS_INDEX, *gone)
                start -= len(gone)
            if for_store is None:
                break
        return out[:limit]

    def mark_planning(self, job_id: str) -> None:
        now = repr(time.time())
        key = _job_key(job_id)
        if not self.client.exists(key):
            return
        with self.client.pipeline() as pipe:
            pipe.hsetnx(key, "started_at", now)
            pipe.hset(key, "state", JobState.PLANNING.value)
            pipe.execute()

    def raise_counters(self, job_id: str, values: Mapping[str, int]) -> None:
        """Raise counters to at least these values (a re-run planner does not double count)."""
        check_counters(values)
        args: list[str] = [repr(time.time())]
        for name, value in values.items():
            args += [name, str(int(value))]
        self._raise(keys=[_job_key(job_id)], args=args)

    def plan_done(self, job_id: str) -> None:
        """Every batch of the job is enqueued; it may be complete already (`is_complete`)."""
        self._plan_done(keys=[_job_key(job_id)], args=[repr(time.time())])

    def is_complete(self, job_id: str) -> bool:
        """Planned, every planned batch done, and not yet done or failed: ready to `finish` once
        its collections are indexed."""
        raw = cast(
            list[str | None],
            self.client.hmget(_job_key(job_id), ["state", "planned", "batches_done", "batches_total"]),
        )
        state, planned, done, total = raw
        if state is None or state in FINAL_STATES or planned != "1":
            return False
        return int(done or 0) >= int(total or 0)

    def finish(self, job_id: str) -> bool:
        """Mark a complete job done (its collections are indexed); False if it is not complete
        any more (a batch was added meanwhile), already finished, or gone."""
        return int(self._finish(keys=[_job_key(job_id)], args=[repr(time.time())])) == 1

    def add_batches(self, job_id: str, *, batches: int, objects: int) -> None:
        self._add_batches(
            keys=[_job_key(job_id)],
            args=[repr(time.time()), str(self.settings.job_ttl_s), str(batches), str(objects)],
        )

    def set_drift(self, job_id: str, drift: Mapping[str, Any]) -> None:
        self.client.hset(_job_key(job_id), "drift", json.dumps(drift, sort_keys=True))

    def fail(self, job_id: str, error: str) -> None:
        """The whole job failed (unknown collection, source unreachable after retries)."""
        key = _job_key(job_id)
        if not self.client.exists(key):
            return
        now = repr(time.time())
        with self.client.pipeline() as pipe:
            pipe.hsetnx(key, "started_at", now)
            pipe.hset(key, mapping={"state": JobState.FAILED.value, "error": error, "finished_at": now})
            pipe.execute()

    def complete_batch(
        self,
        job_id: str,
        batch_id: str,
        counts: Mapping[str, int],
        failed: Sequence[tuple[str, str]] = (),
    ) -> bool:
        """Count one finished batch once; False if it was counted before or the job is gone.

        The last batch leaves the job complete (`is_complete`), not done: `finish` makes it done."""
        check_counters(counts)
        args: list[str] = [
            batch_id,
            repr(time.time()),
            str(self.settings.job_ttl_s),
            str(self.settings.max_failed_items),
        ]
        pairs = [(name, int(value)) for name, value in counts.items() if value]
        args.append(str(len(pairs)))
        for name, value in pairs:
            args += [name, str(value)]
        args += [json.dumps({"key": key, "reason": reason}) for key, reason in failed]
        result = self._complete(
            keys=[_job_key(job_id), f"{_job_key(job_id)}:batches", f"{_job_key(job_id)}:failed"], args=args
        )
        with self.client.pipeline() as pipe:
            pipe.hdel(_pending_key(job_id), batch_id)
            pipe.set(_active_key(job_id), repr(time.time()), ex=self.settings.job_ttl_s)
            pipe.execute()
        return int(result) == 1

    # -- sent batches: a message the broker lost is sent again -----------------------------------

    def track_batch(self, job_id: str, batch_id: str, task: str, args: Sequence[Any]) -> None:
        """Remember a batch as sent and not yet done, with what it takes to send it again.

        kombu's Redis transport pops a message (BRPOP) before it records it as unacknowledged, so a
        worker killed in between loses it for good: no visibility timeout brings it back and the
        job would wait forever for its last batch (`resend_lost_batches` in workers.tasks).
        """
        with self.client.pipeline() as pipe:
            pipe.hset(_pending_key(job_id), batch_id, json.dumps({"task": task, "args": list(args)}))
            pipe.expire(_pending_key(job_id), self.settings.job_ttl_s)
            pipe.set(_active_key(job_id), repr(time.time()), ex=self.settings.job_ttl_s)
            pipe.execute()

    def is_batch_done(self, job_id: str, batch_id: str) -> bool:
        """Whether the batch was counted (done or dead-lettered): a second copy has nothing to do."""
        return bool(self.client.sismember(f"{_job_key(job_id)}:batches", batch_id))

    def done_batches(self, job_id: str) -> set[str]:
        """The ids of the job's counted batches."""
        return set(cast(Iterable[str], self.client.smembers(f"{_job_key(job_id)}:batches")))

    def lost_batches(self, job_id: str, idle_s: float) -> dict[str, tuple[str, list[Any]]]:
        """batch id → (task, args) of the sent batches not done, if the job is unfinished and
        nothing (a send, a start, a completion) happened to it for ``idle_s``; else empty."""
        state, active = cast(
            list[str | None],
            [self.client.hget(_job_key(job_id), "state"), self.client.get(_active_key(job_id))],
        )
        if state is None or state in FINAL_STATES or active is None:
            return {}
        if time.time() - float(active) < idle_s:
            return {}
        pending = cast(dict[str, str], self.client.hgetall(_pending_key(job_id)))
        done = self.done_batches(job_id)
        out: dict[str, tuple[str, list[Any]]] = {}
        for batch_id, raw in pending.items():
            if batch_id not in done:
                item = json.loads(raw)
                out[batch_id] = (str(item["task"]), list(item["args"]))
        return out

    def touch(self, job_id: str) -> None:
        """Record activity on the job now (restarts its idle clock)."""
        self.client.set(_active_key(job_id), repr(time.time()), ex=self.settings.job_ttl_s)

    def claim_resend(self, job_id: str, hold_s: float) -> bool:
        """One worker at a time resends a job's lost batches: True for the one that may."""
        return bool(self.client.set(f"{_job_key(job_id)}:resend", "1", nx=True, ex=max(1, int(hold_s))))

    def unfinished(self, *, limit: int = 500) -> list[str]:
        """Ids of the jobs among the newest ``limit`` that are not done or failed, oldest first."""
        ids = cast(list[str], self.client.zrevrange(_JOBS_INDEX, 0, limit - 1))
        if not ids:
            return []
        with self.client.pipeline() as pipe:
            for job_id in ids:
                pipe.hget(_job_key(job_id), "state")
            states = cast(list[str | None], pipe.execute())
        unfinished = [
            j for j, st in zip(ids, states, strict=True) if st is not None and st not in FINAL_STATES
        ]
        return unfinished[::-1]

    # -- delivery guard and dead letters ---------------------------------------------------------

    def count_delivery(self, job_id: str, batch_id: str) -> int:
        """How many times this batch has been started, this start included."""
        key = f"{_PREFIX}deliveries:{job_id}:{batch_id}"
        with self.client.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, self.settings.job_ttl_s)
            pipe.set(_active_key(job_id), repr(time.time()), ex=self.settings.job_ttl_s)
            count, _, _ = pipe.execute()
        return int(count)

    def deliveries(self, job_id: str) -> dict[str, int]:
        """Per batch id, how many times it was started (for tests and ``jobs show``)."""
        prefix = f"{_PREFIX}deliveries:{job_id}:"
        keys = list(cast(Iterable[str], self.client.scan_iter(match=f"{prefix}*", count=1000)))
        if not keys:
            return {}
        values = cast(list[str | None], self.client.mget(keys))
        return {k[len(prefix) :]: int(v or 0) for k, v in zip(keys, values, strict=True)}

    def dead_letter(self, letter: DeadLetter) -> None:
        self.client.rpush(_DEADLETTER, letter.to_json())

    def dead_letters(self, *, job_id: str | None = None, for_store: str | None = None) -> list[DeadLetter]:
        """Dead letters (all, or one job's; with ``for_store``, of that store's jobs only)."""
        rows = cast(list[str], self.client.lrange(_DEADLETTER, 0, -1))
        letters = [DeadLetter.from_json(row) for row in rows]
        return [d for d in letters if (job_id is None or d.job_id == job_id) and _of_store(d.spec, for_store)]

    def take_dead_letters(
        self, *, job_id: str | None = None, for_store: str | None = None
    ) -> list[DeadLetter]:
        """Remove and return dead letters (as `dead_letters` selects them) for replay."""
        taken: list[DeadLetter] = []
        for row in cast(list[str], self.client.lrange(_DEADLETTER, 0, -1)):
            letter = DeadLetter.from_json(row)
            if (job_id is not None and letter.job_id != job_id) or not _of_store(letter.spec, for_store):
                continue
            # LREM of the exact row: concurrent takers cannot both get it.
            if int(self.client.lrem(_DEADLETTER, 1, row)) == 1:
                taken.append(letter)
        return taken

    # -- known-bad objects -----------------------------------------------------------------------

    def mark_bad(self, collections: Iterable[str], source_uri: str, items: Mapping[str, str]) -> None:
        """Remember objects (key → ETag) that cannot be decoded, per collection."""
        if not items:
            return
        with self.client.pipeline() as pipe:
            for collection in collections:
                pipe.hset(
                    f"{_PREFIX}bad:{collection}",
                    mapping={f"{source_uri}\x1f{key}": etag for key, etag in items.items()},
                )
            pipe.execute()

    def bad_objects(self, collection: str, source_uri: str) -> dict[str, str]:
        """key → ETag of the known-bad objects of one source in one collection."""
        prefix = f"{source_uri}\x1f"
        raw = cast(dict[str, str], self.client.hgetall(f"{_PREFIX}bad:{collection}"))
        return {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}


def _of_store(spec: JobSpec, store: str | None) -> bool:
    """Whether a job of ``spec`` is one of ``store``'s (any store: None), or names no store (a job
    of an earlier version)."""
    return store is None or spec.store in (store, None)


def open_job_store(
    redis_url: str, settings: CelerySettings, *, epoch_dir: Path | None = None
) -> RedisJobStore:
    """A job store on ``redis_url`` with bounded socket timeouts (a dead Redis fails fast);
    ``epoch_dir`` (``<data_dir>/jobs``) mirrors its epochs, to tell a lost job from an unknown one."""
    client = redis.Redis.from_url(
        redis_url,
        decode_responses=True,
        socket_timeout=settings.publish_timeout_s,
        socket_connect_timeout=min(settings.publish_timeout_s, 5.0),
        health_check_interval=30,
    )
    return RedisJobStore(client, settings, epoch_dir=epoch_dir)


def broker_client(settings: Settings) -> redis.Redis:
    """A client of the broker's Redis answering text, with bounded socket timeouts (a dead Redis
    fails fast): for the records kept beside the jobs, such as heartbeats and store id claims."""
    timeout_s = min(settings.celery.publish_timeout_s, 5.0)
    return redis.Redis.from_url(
        settings.broker_url, decode_responses=True, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )


def job_store_for(settings: Settings) -> RedisJobStore:
    """The job store of ``settings``: on the broker, its epochs mirrored under ``<data_dir>/jobs``."""
    return open_job_store(settings.broker_url, settings.celery, epoch_dir=settings.data_dir / "jobs")
