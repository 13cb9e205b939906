"""`SqliteJobStore`: the owner's job store in a SQLite file under ``<data_dir>/jobs/``, written only
by the process holding that folder's lock (`core.ownership`), so a job outlives the process;
`open_owner_store` opens it (or a `core.jobs.memory_store.MemoryJobStore` where another process
holds the lock), `read_owner_jobs` reads it beside its owner."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from core.config import Settings
from core.jobs.memory_store import MemoryJobStore
from core.jobs.records import (
    FINAL_STATES,
    JobKind,
    JobMeta,
    JobRecord,
    JobSpec,
    JobState,
    check_counters,
    zero_counts,
)
from core.jobs.store import OwnerJobStore

__all__ = ["SqliteJobStore", "open_owner_store", "read_owner_jobs"]

logger = logging.getLogger(__name__)

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


class SqliteJobStore:
    """`core.jobs.store.OwnerJobStore` in a SQLite file (``<data_dir>/jobs/owner-jobs.sqlite3``):
    the owner's jobs outlive it. One writer, the process that holds the folder's lock
    (`open_owner_store`); others may read (`read_owner_jobs`). Every change is one transaction."""

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
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._max_failed = max_failed_items

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _row(self, job_id: str) -> sqlite3.Row | None:
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
                    json.dumps(zero_counts()),
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
        record = JobRecord(
            id=job_id,
            kind=JobKind(row["kind"]),
            state=JobState(row["state"]),
            spec=JobSpec.from_json(row["spec"]),
            created_at=float(row["created_at"]),
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            counts=json.loads(row["counts"]),
            planned=bool(row["planned"]),
            error=row["error"],
            failed_items=items,
        )
        return record if not row["meta"] else JobMeta.from_json(row["meta"]).apply(record)

    def recent(self, *, limit: int = 50) -> list[JobRecord]:
        with self._lock:
            ids = [
                r[0]
                for r in self._db.execute(
                    "SELECT id FROM jobs ORDER BY created_at DESC LIMIT ?", (max(limit, 1),)
                ).fetchall()
            ]
        return [r for r in (self.get(i, with_items=False) for i in ids) if r is not None]

    def unfinished(self, *, limit: int = 500) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, state FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [r[0] for r in reversed(rows) if JobState(r[1]) not in FINAL_STATES]

    def mark_planning(self, job_id: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET started_at = COALESCE(started_at, ?), state = ? WHERE id = ?",
                (time.time(), JobState.PLANNING.value, job_id),
            )

    def raise_counters(self, job_id: str, values: Mapping[str, int]) -> None:
        check_counters(values)
        with self._lock:
            row = self._row(job_id)
            if row is None:
                return
            counts = json.loads(row["counts"])
            for name, value in values.items():
                counts[name] = max(int(counts.get(name, 0)), int(value))
            self._update(job_id, counts=json.dumps(counts))

    def complete_batch(
        self, job_id: str, batch_id: str, counts: Mapping[str, int], failed: Sequence[tuple[str, str]] = ()
    ) -> bool:
        check_counters(counts)
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
                running = JobState(row["state"]) not in FINAL_STATES
                self._update(
                    job_id,
                    counts=json.dumps(totals),
                    state=JobState.RUNNING.value if running else row["state"],
                    started_at=row["started_at"] or time.time(),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return True

    def plan_done(self, job_id: str) -> None:
        with self._lock:
            row = self._row(job_id)
            if row is None:
                return
            if JobState(row["state"]) in FINAL_STATES:
                self._update(job_id, planned=1)
            else:
                self._update(
                    job_id,
                    planned=1,
                    state=JobState.RUNNING.value,
                    started_at=row["started_at"] or time.time(),
                )

    @staticmethod
    def _complete(row: sqlite3.Row) -> bool:
        counts = json.loads(row["counts"])
        return (
            JobState(row["state"]) not in FINAL_STATES
            and bool(row["planned"])
            and int(counts.get("batches_done", 0)) >= int(counts.get("batches_total", 0))
        )

    def is_complete(self, job_id: str) -> bool:
        with self._lock:
            row = self._row(job_id)
        return row is not None and self._complete(row)

    def finish(self, job_id: str) -> bool:
        with self._lock:
            row = self._row(job_id)
            if row is None or not self._complete(row):
                return False
            now = time.time()
            self._update(
                job_id, state=JobState.DONE.value, finished_at=now, started_at=row["started_at"] or now
            )
            return True

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

    # -- the owner's -----------------------------------------------------------------------------

    def save_meta(self, job_id: str, meta: JobMeta) -> None:
        with self._lock:
            self._update(job_id, meta=meta.to_json())

    def load_meta(self, job_id: str) -> JobMeta | None:
        with self._lock:
            row = self._row(job_id)
        return None if row is None or not row["meta"] else JobMeta.from_json(row["meta"])

    def restart(self, job_id: str) -> None:
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
                counts=json.dumps(zero_counts()),
            )
            self._db.execute("COMMIT")


def open_owner_store(settings: Settings) -> tuple[OwnerJobStore, Callable[[], None]]:
    """The owner's job store and how to close it: `SqliteJobStore` under ``<data_dir>/jobs/``
    while this process can take that folder's lock, else (another API process on the same data
    dir holds it) a `MemoryJobStore`, whose jobs end with this process."""
    from core.errors import StoreDamaged, StoreOwned
    from core.ownership import acquire_store

    folder = settings.data_dir / "jobs"
    try:
        lease = acquire_store(folder, "jobs")
    except StoreOwned as exc:
        logger.warning("owner-run jobs are kept in memory: %s", exc)
        return MemoryJobStore(), lambda: None
    try:
        store = SqliteJobStore(folder / _STORE_FILE)
    except sqlite3.Error as exc:
        lease.close()
        raise StoreDamaged(
            f"the owner's job store {folder / _STORE_FILE} is damaged ({exc}); move it aside to start "
            "with no job history"
        ) from None

    def close() -> None:
        store.close()
        lease.close()

    return store, close


def read_owner_jobs(settings: Settings) -> SqliteJobStore | None:
    """The owner's job store read-only (commands run beside the owner), None if it has none."""
    path = settings.data_dir / "jobs" / _STORE_FILE
    if not path.is_file():
        return None
    try:
        return SqliteJobStore(path, read_only=True)
    except sqlite3.Error:
        return None
