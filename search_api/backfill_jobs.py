"""Backfill jobs: run in a background thread of the API process, progress in a job store.

The embedded store (Qdrant Edge) is owned by the API process, so a backfill cannot run in a Celery
worker there; it runs here, one thread per job. Progress goes through the same job-store interface
(`workers.jobs.JobStore`: create, mark_planning, raise_counters, complete_batch, plan_done, fail,
get, recent) and comes back as the same `JobRecord` shape as ingest jobs. `LocalJobStore` keeps it
in memory (lost on restart, like the job itself); a Redis `JobStore` can be passed instead.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from core.catalog import Catalog
from core.config import Settings
from core.errors import RadsearchError
from ingest.backfill import plan_backfill, run_backfill
from ingest.pipeline import BatchReport
from workers.jobs import COUNTERS, JobKind, JobRecord, JobSpec, JobState

__all__ = ["BackfillRunner", "JobStoreLike", "LocalJobStore"]

logger = logging.getLogger(__name__)


class JobStoreLike(Protocol):
    """The part of `workers.jobs.JobStore` a backfill uses."""

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
        self._lock = threading.Lock()
        self._max_failed = max_failed_items

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


class BackfillRunner:
    """Starts backfill jobs in background threads and records their progress in ``store``."""

    def __init__(
        self, catalog: Catalog, settings: Settings, store: JobStoreLike, *, max_parallel: int = 1
    ) -> None:
        self.catalog = catalog
        self.settings = settings
        self.store = store
        # One backfill at a time by default: each one already uses every core for embedding.
        self._pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="backfill-job")

    def submit(self, target: str, origin: str, *, path_template: str | None = None) -> str:
        """Validate, create the job and start it; returns the job id."""
        entry = self.catalog.get(target)
        spec = JobSpec(
            source=origin,
            collections=(entry.name,),
            path_template=path_template,
            skip_unchanged=True,
            encoder=entry.encoder.name,
        )
        job_id = self.store.create(JobKind.INGEST, spec)
        self._pool.submit(self._run, job_id, entry.name, origin, path_template)
        return job_id

    def _run(self, job_id: str, target: str, origin: str, path_template: str | None) -> None:
        try:
            self.store.mark_planning(job_id)
            plan = plan_backfill(self.catalog, self.settings, origin, target=target)
            batch_size = self.settings.ingest.batch_size
            batches = sum(-(-len(refs) // batch_size) for refs in plan.sources.values())
            self.store.raise_counters(
                job_id, {"listed": plan.objects, "queued": plan.objects, "batches_total": batches}
            )
            self.store.plan_done(job_id)  # the plan is complete before the first batch runs
            seen = 0

            def on_batch(report: BatchReport) -> None:
                nonlocal seen
                seen += 1
                self.store.complete_batch(
                    job_id,
                    f"b{seen}",
                    {
                        "objects_done": report.objects,
                        "indexed_frames": report.frames_indexed,
                        "skipped_unchanged": report.skipped,
                        "failed": len(report.failed),
                        "quarantined": len(report.quarantined),
                    },
                    [(f.key, f.reason) for f in [*report.failed, *report.quarantined]],
                )

            run_backfill(
                self.catalog,
                self.settings,
                plan,
                target=target,
                on_batch=on_batch,
                path_template=path_template,
            )
        except RadsearchError as exc:
            logger.warning("backfill job %s failed: %s", job_id, exc)
            self.store.fail(job_id, str(exc))
        except Exception as exc:
            logger.exception("backfill job %s crashed", job_id)
            self.store.fail(job_id, f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Wait for running jobs (the store they write to closes next)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
