"""Where the owner's jobs are recorded: `DurableJobStore` (SQLite under ``<data_dir>/jobs/``,
written only by the process holding that folder's lock, `core.ownership`, so a job outlives the
process) and `LocalJobStore` (in memory: a second API process on the same data dir, and tests).
Both speak the job-store interface of `workers.jobs.JobStore` and answer `JobRecord` shapes."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from core.config import Settings
from workers.jobs import COUNTERS, JobKind, JobRecord, JobSpec, JobState

__all__ = [
    "DurableJobStore",
    "JobMeta",
    "JobStoreLike",
    "LocalJobStore",
    "OwnerJobKind",
    "open_owner_store",
    "read_owner_jobs",
]

logger = logging.getLogger(__name__)

OwnerJobKind = Literal["ingest", "backfill"]


@dataclass
class JobMeta:
    """What only the owner knows of its job: what it is, the collections it writes, how to run it
    again (``resume``), its summary or error status, and how often a restart resumed it."""

    kind: OwnerJobKind
    targets: tuple[str, ...]
    summary: dict[str, Any] | None = None
    error_status: int | None = None
    resume: dict[str, Any] = field(default_factory=dict)
    resumed: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobMeta:
        data = json.loads(text)
        data["targets"] = tuple(data.get("targets") or ())
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


class JobStoreLike(Protocol):
    """The part of `workers.jobs.JobStore` an owner-run job uses, and the owner's own metadata."""

    def create(self, kind: JobKind, spec: JobSpec, *, job_id: str | None = None) -> str: ...

    def get(self, job_id: str, *, with_items: bool = True, max_items: int = 1000) -> JobRecord | None: ...

    def recent(self, *, limit: int = 50) -> list[JobRecord]: ...

    def mark_planning(self, job_id: str) -> None: ...

    def raise_counters(self, job_id: str, values: Mapping[str, int]) -> None: ...

    def plan_done(self, job_id: str) -> None: ...

    def fail(self, job_id: str, error: str) -> None: ...

    def complete_batch(
        self, job_id: str, batch_id: str, counts: Mapping[str, int], failed: Sequence[tuple[str, str]] = ()
    ) -> bool: ...

    def save_meta(self, job_id: str, meta: JobMeta) -> None: ...

    def load_meta(self, job_id: str) -> JobMeta | None: ...

    def unfinished(self) -> list[str]: ...

    def restart(self, job_id: str) -> None: ...


@dataclass
class _Job:
    kind: JobKind
    spec: JobSpec
    created_at: float
    state: JobState = JobState.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    planned: bool = False
    error: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    batches: set[str] = field(default_factory=set)
    failed: list[dict[str, str]] = field(default_factory=list)


class LocalJobStore:
    """`JobStore`'s semantics in memory: a batch counts once, a job is done when planning is done
    and every planned batch is."""

    def __init__(self, *, max_failed_items: int = 10_000) -> None:
        self._jobs: dict[str, _Job] = {}
        self._meta: dict[str, str] = {}
        self._lock = threading.Lock()
        self._max_failed = max_failed_items

    def save_meta(self, job_id: str, meta: JobMeta) -> None:
        with self._lock:
            self._meta[job_id] = meta.to_json()

    def load_meta(self, job_id: str) -> JobMeta | None:
        with self._lock:
            raw = self._meta.get(job_id)
        return None if raw is None else JobMeta.from_json(raw)

    def unfinished(self) -> list[str]:
        with self._lock:
            return [i for i, j in self._jobs.items() if j.state not in (JobState.DONE, JobState.FAILED)]

    def restart(self, job_id: str) -> None:
        """Back to ``queued`` with nothing counted: the job runs again from the start."""
        with self._lock:
            old = self._jobs[job_id]
            self._jobs[job_id] = _Job(kind=old.kind, spec=old.spec, created_at=old.created_at)

    def create(self, kind: JobKind, spec: JobSpec, *, job_id: str | None = None) -> str:
        job_id = job_id or str(uuid.uuid4())
        with self._lock:
            self._jobs[job_id] = _Job(kind=kind, spec=spec, created_at=time.time())
        return job_id

    def get(self, job_id: str, *, with_items: bool = True, max_items: int = 1000) -> JobRecord | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            return JobRecord(
                id=job_id,
                kind=job.kind,
                state=job.state,
                spec=job.spec,
                created_at=job.created_at,
                started_at=job.started_at,
                finished_at=job.finished_at,
                counts=dict(job.counts),
                planned=job.planned,
                error=job.error,
                failed_items=list(job.failed[:max_items]) if with_items else [],
            )

    def recent(self, *, limit: int = 50) -> list[JobRecord]:
        with self._lock:
            ids = sorted(self._jobs, key=lambda i: self._jobs[i].created_at, reverse=True)[:limit]
        return [r for r in (self.get(i, with_items=False) for i in ids) if r is not None]

    def mark_planning(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs[job_id]
            job.started_at = job.started_at or time.time()
            job.state = JobState.PLANNING

    def raise_counters(self, job_id: str, values: Mapping[str, int]) -> None:
        with self._lock:
            job = self._jobs[job_id]
            for name, value in values.items():
                job.counts[name] = max(job.counts.get(name, 0), int(value))

    def _settle(self, job: _Job) -> None:
        if job.state in (JobState.DONE, JobState.FAILED):
            return
        if job.planned and job.counts["batches_done"] >= job.counts["batches_total"]:
            job.state, job.finished_at = JobState.DONE, time.time()
        else:
            job.state = JobState.RUNNING

    def plan_done(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs[job_id]
            job.planned = True
            job.started_at = job.started_at or time.time()
            self._settle(job)

    def fail(self, job_id: str, error: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            now = time.time()
            job.started_at = job.started_at or now
            job.state, job.error, job.finished_at = JobState.FAILED, error, now

    def complete_batch(
        self, job_id: str, batch_id: str, counts: Mapping[str, int], failed: Sequence[tuple[str, str]] = ()
    ) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or batch_id in job.batches:
                return False
            job.batches.add(batch_id)
            for name, value in counts.items():
                job.counts[name] = job.counts.get(name, 0) + int(value)
            room = max(self._max_failed - len(job.failed), 0)
            job.failed.extend({"key": k, "reason": r} for k, r in list(failed)[:room])
            job.counts["batches_done"] += 1
            job.started_at = job.started_at or time.time()
            self._settle(job)
            return True


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    planned INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    counts TEXT NOT NULL,
    meta TEXT
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at);
CREATE TABLE IF NOT EXISTS batches (
    job_id TEXT NOT NULL, batch_id TEXT NOT NULL, PRIMARY KEY (job_id, batch_id)
);
CREATE TABLE IF NOT EXISTS failed (job_id TEXT NOT NULL, key TEXT NOT NULL, reason TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS failed_job ON failed (job_id);
"""

_STORE_FILE = "owner-jobs.sqlite3"


class DurableJobStore:
    """`LocalJobStore`'s semantics in a SQLite file (``<data_dir>/jobs/owner-jobs.sqlite3``): the
    owner's jobs outlive it. One writer, the process that holds the folder's lock (`open_owner_store`);
    others may read (`read_owner_jobs`). Every change is one transaction."""

    def __init__(self, path: Path, *, max_failed_items: int = 10_000, read_only: bool = False) -> None:
        self.path = path
        if read_only:
            self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=5)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, timeout=5, isolation_level=None)
            path.chmod(0o600)  # object keys are paths, and paths can carry names
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._max_failed = max_failed_items

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _row(self, job_id: str) -> sqlite3.Row | None:
        self._db.row_factory = sqlite3.Row
        row: sqlite3.Row | None = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row

    def _update(self, job_id: str, **values: Any) -> None:
        names = ", ".join(f"{name} = ?" for name in values)
        self._db.execute(f"UPDATE jobs SET {names} WHERE id = ?", (*values.values(), job_id))  # noqa: S608

    def create(self, kind: JobKind, spec: JobSpec, *, job_id: str | None = None) -> str:
        job_id = job_id or str(uuid.uuid4())
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, kind, state, spec, created_at, counts) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    kind.value,
                    JobState.QUEUED.value,
                    spec.to_json(),
                    time.time(),
                    json.dumps(dict.fromkeys(COUNTERS, 0)),
                ),
            )
        return job_id

    def get(self, job_id: str, *, with_items: bool = True, max_items: int = 1000) -> JobRecord | None:
        with self._lock:
            row = self._row(job_id)
            if row is None:
                return None
            items: list[dict[str, str]] = []
            if with_items:
                rows = self._db.execute(
                    "SELECT key, reason FROM failed WHERE job_id = ? ORDER BY rowid LIMIT ?",
                    (job_id, max_items),
                ).fetchall()
                items = [{"key": r[0], "reason": r[1]} for r in rows]
        return JobRecord(
            id=job_id,
            kind=JobKind(row["kind"]),
            state=JobState(row["state"]),
            spec=JobSpec.from_json(row["spec"]),
            created_at=float(row["created_at"]),
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            counts={**dict.fromkeys(COUNTERS, 0), **json.loads(row["counts"])},
            planned=bool(row["planned"]),
            error=row["error"],
            failed_items=items,
        )

    def recent(self, *, limit: int = 50) -> list[JobRecord]:
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute(
                    "SELECT id FROM jobs ORDER BY created_at DESC LIMIT ?", (max(limit, 1),)
                ).fetchall()
            ]
        return [r for r in (self.get(i, with_items=False) for i in ids) if r is not None]

    def mark_planning(self, job_id: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET started_at = COALESCE(started_at, ?), state = ? WHERE id = ?",
                (time.time(), JobState.PLANNING.value, job_id),
            )

    def raise_counters(self, job_id: str, values: Mapping[str, int]) -> None:
        with self._lock:
            row = self._row(job_id)
            if row is None:
                return
            counts = json.loads(row["counts"])
            for name, value in values.items():
                counts[name] = max(int(counts.get(name, 0)), int(value))
            self._update(job_id, counts=json.dumps(counts))

    def _settled(
        self, row: sqlite3.Row, counts: Mapping[str, int], planned: bool
    ) -> tuple[str, float | None]:
        state = JobState(row["state"])
        if state in (JobState.DONE, JobState.FAILED):
            return state.value, row["finished_at"]
        if planned and counts.get("batches_done", 0) >= counts.get("batches_total", 0):
            return JobState.DONE.value, time.time()
        return JobState.RUNNING.value, None

    def plan_done(self, job_id: str) -> None:
        with self._lock:
            row = self._row(job_id)
            if row is None:
                return
            state, finished = self._settled(row, json.loads(row["counts"]), True)
            self._update(
                job_id,
                planned=1,
                state=state,
                finished_at=finished,
                started_at=row["started_at"] or time.time(),
            )

    def fail(self, job_id: str, error: str) -> None:
        with self._lock:
            row = self._row(job_id)
            if row is None:
                return
            now = time.time()
            self._update(
                job_id,
                state=JobState.FAILED.value,
                error=error,
                finished_at=now,
                started_at=row["started_at"] or now,
            )

    def complete_batch(
        self, job_id: str, batch_id: str, counts: Mapping[str, int], failed: Sequence[tuple[str, str]] = ()
    ) -> bool:
        with self._lock:
            row = self._row(job_id)
            if row is None:
                return False
            self._db.execute("BEGIN IMMEDIATE")
            try:
                inserted = self._db.execute(
                    "INSERT OR IGNORE INTO batches (job_id, batch_id) VALUES (?, ?)", (job_id, batch_id)
                ).rowcount
                if not inserted:
                    self._db.execute("ROLLBACK")
                    return False
                totals = json.loads(row["counts"])
                for name, value in counts.items():
                    totals[name] = int(totals.get(name, 0)) + int(value)
                totals["batches_done"] = int(totals.get("batches_done", 0)) + 1
                (stored,) = self._db.execute(
                    "SELECT COUNT(*) FROM failed WHERE job_id = ?", (job_id,)
                ).fetchone()
                room = max(self._max_failed - int(stored), 0)
                self._db.executemany(
                    "INSERT INTO failed (job_id, key, reason) VALUES (?, ?, ?)",
                    [(job_id, k, r) for k, r in list(failed)[:room]],
                )
                state, finished = self._settled(row, totals, bool(row["planned"]))
                self._update(
                    job_id,
                    counts=json.dumps(totals),
                    state=state,
                    finished_at=finished,
                    started_at=row["started_at"] or time.time(),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return True

    def save_meta(self, job_id: str, meta: JobMeta) -> None:
        with self._lock:
            self._update(job_id, meta=meta.to_json())

    def load_meta(self, job_id: str) -> JobMeta | None:
        with self._lock:
            row = self._row(job_id)
        return None if row is None or not row["meta"] else JobMeta.from_json(row["meta"])

    def unfinished(self) -> list[str]:
        """The jobs not yet done or failed, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE state NOT IN (?, ?) ORDER BY created_at",
                (JobState.DONE.value, JobState.FAILED.value),
            ).fetchall()
        return [r[0] for r in rows]

    def restart(self, job_id: str) -> None:
        """Back to ``queued`` with nothing counted: the job runs again from the start."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM batches WHERE job_id = ?", (job_id,))
            self._db.execute("DELETE FROM failed WHERE job_id = ?", (job_id,))
            self._update(
                job_id,
                state=JobState.QUEUED.value,
                started_at=None,
                finished_at=None,
                planned=0,
                error=None,
                counts=json.dumps(dict.fromkeys(COUNTERS, 0)),
            )
            self._db.execute("COMMIT")


def open_owner_store(settings: Settings) -> tuple[JobStoreLike, Callable[[], None]]:
    """The owner's job store and how to close it: `DurableJobStore` under ``<data_dir>/jobs/``
    while this process can take that folder's lock, else (another API process on the same data
    dir holds it) a `LocalJobStore`, whose jobs end with this process."""
    from core.errors import StoreOwned
    from core.ownership import acquire_store

    folder = settings.data_dir / "jobs"
    try:
        lease = acquire_store(folder, "jobs")
    except StoreOwned as exc:
        logger.warning("owner-run jobs are kept in memory: %s", exc)
        return LocalJobStore(), lambda: None
    store = DurableJobStore(folder / _STORE_FILE)

    def close() -> None:
        store.close()
        lease.close()

    return store, close


def read_owner_jobs(settings: Settings) -> DurableJobStore | None:
    """The owner's job store read-only (commands run beside the owner), None if it has none."""
    path = settings.data_dir / "jobs" / _STORE_FILE
    if not path.is_file():
        return None
    try:
        return DurableJobStore(path, read_only=True)
    except sqlite3.Error:
        return None
