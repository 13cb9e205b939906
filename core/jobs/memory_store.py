"""`MemoryJobStore`: the job store in this process's memory (a second API process on a data dir
whose owner-run jobs another one records, and tests); its jobs end with the process."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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

__all__ = ["MemoryJobStore"]


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
    counts: dict[str, int] = field(default_factory=zero_counts)
    batches: set[str] = field(default_factory=set)
    failed: list[dict[str, str]] = field(default_factory=list)
    meta: JobMeta | None = None


class MemoryJobStore:
    """`core.jobs.store.OwnerJobStore` in memory."""

    def __init__(self, *, max_failed_items: int = 10_000) -> None:
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._max_failed = max_failed_items

    def close(self) -> None:
        """Nothing to release: the jobs end with the process."""

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
            record = JobRecord(
                id=job_id,
                kind=job.kind,
                state=job.state,
                spec=job.spec,
                created_at=job.created_at,
                started_at=job.started_at,
                finished_at=job.finished_at,
                counts=job.counts,
                planned=job.planned,
                error=job.error,
                failed_items=list(job.failed[:max_items]) if with_items else [],
            )
            meta = job.meta.model_copy(deep=True) if job.meta is not None else None
        return record if meta is None else meta.apply(record)

    def recent(self, *, limit: int = 50) -> list[JobRecord]:
        with self._lock:
            ids = sorted(self._jobs, key=lambda i: self._jobs[i].created_at, reverse=True)[: max(limit, 1)]
        return [r for r in (self.get(i, with_items=False) for i in ids) if r is not None]

    def unfinished(self, *, limit: int = 500) -> list[str]:
        with self._lock:
            newest = sorted(self._jobs, key=lambda i: self._jobs[i].created_at, reverse=True)[:limit]
            return [i for i in reversed(newest) if self._jobs[i].state not in FINAL_STATES]

    def mark_planning(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            job.started_at = job.started_at or time.time()
            job.state = JobState.PLANNING

    def raise_counters(self, job_id: str, values: Mapping[str, int]) -> None:
        check_counters(values)
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            for name, value in values.items():
                job.counts[name] = max(job.counts[name], int(value))

    def complete_batch(
        self, job_id: str, batch_id: str, counts: Mapping[str, int], failed: Sequence[tuple[str, str]] = ()
    ) -> bool:
        check_counters(counts)
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or batch_id in job.batches:
                return False
            job.batches.add(batch_id)
            for name, value in counts.items():
                job.counts[name] += int(value)
            room = max(self._max_failed - len(job.failed), 0)
            job.failed.extend({"key": k, "reason": r} for k, r in list(failed)[:room])
            job.counts["batches_done"] += 1
            job.started_at = job.started_at or time.time()
            if job.state not in FINAL_STATES:
                job.state = JobState.RUNNING
            return True

    def plan_done(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            job.planned = True
            if job.state not in FINAL_STATES:
                job.started_at = job.started_at or time.time()
                job.state = JobState.RUNNING

    def _complete(self, job: _Job) -> bool:
        return (
            job.state not in FINAL_STATES
            and job.planned
            and job.counts["batches_done"] >= job.counts["batches_total"]
        )

    def is_complete(self, job_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            return job is not None and self._complete(job)

    def finish(self, job_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not self._complete(job):
                return False
            now = time.time()
            job.started_at = job.started_at or now
            job.state, job.finished_at = JobState.DONE, now
            return True

    def fail(self, job_id: str, error: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            now = time.time()
            job.started_at = job.started_at or now
            job.state, job.error, job.finished_at = JobState.FAILED, error, now

    # -- the owner's -----------------------------------------------------------------------------

    def save_meta(self, job_id: str, meta: JobMeta) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                job.meta = meta.model_copy(deep=True)

    def load_meta(self, job_id: str) -> JobMeta | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None or job.meta is None else job.meta.model_copy(deep=True)

    def restart(self, job_id: str) -> None:
        with self._lock:
            old = self._jobs.get(job_id)
            if old is not None:
                self._jobs[job_id] = _Job(
                    kind=old.kind, spec=old.spec, created_at=old.created_at, meta=old.meta
                )
