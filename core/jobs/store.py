"""The job-store contract: what every backend (`core.jobs.redis_store.RedisJobStore`,
`core.jobs.sqlite_store.SqliteJobStore`, `core.jobs.memory_store.MemoryJobStore`) does the same
way, checked for each by one contract test (``tests/core/test_job_store_contract.py``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from core.jobs.records import JobKind, JobMeta, JobRecord, JobSpec

__all__ = ["JobStore", "OwnerJobStore"]


class JobStore(Protocol):
    """Jobs and their state machine (`core.jobs.records`). A batch counts once however often it
    is completed; counters only grow; a job of another id is never touched. Methods on a job that
    does not exist do nothing (``complete_batch`` and ``finish`` answer False)."""

    def create(self, kind: JobKind, spec: JobSpec, *, job_id: str | None = None) -> str:
        """A new job in state ``queued``; its id is new unless given."""
        ...

    def get(self, job_id: str, *, with_items: bool = True, max_items: int = 1000) -> JobRecord | None:
        """The job with up to ``max_items`` failed items, or None if there is none."""
        ...

    def recent(self, *, limit: int = 50) -> list[JobRecord]:
        """The newest jobs first, without their failed items."""
        ...

    def unfinished(self, *, limit: int = 500) -> list[str]:
        """Ids of the jobs (among the newest ``limit``) not done or failed, oldest first."""
        ...

    def mark_planning(self, job_id: str) -> None:
        """Planning started (the job's start time, unless it has one)."""
        ...

    def raise_counters(self, job_id: str, values: Mapping[str, int]) -> None:
        """Raise counters to at least these values (a re-run planner does not double count)."""
        ...

    def complete_batch(
        self, job_id: str, batch_id: str, counts: Mapping[str, int], failed: Sequence[tuple[str, str]] = ()
    ) -> bool:
        """Add one finished batch's counts and failed items (key, reason), once: False if it was
        counted before or the job is gone. The job is ``running`` after it (unless finished)."""
        ...

    def plan_done(self, job_id: str) -> None:
        """Every batch of the job is planned; it is ``running`` (unless finished) until `finish`."""
        ...

    def is_complete(self, job_id: str) -> bool:
        """Planned, every planned batch counted, and not yet done or failed."""
        ...

    def finish(self, job_id: str) -> bool:
        """Mark a complete job ``done``; False if it is not complete, already finished, or gone."""
        ...

    def fail(self, job_id: str, error: str) -> None:
        """The whole job failed, with this error."""
        ...


class OwnerJobStore(JobStore, Protocol):
    """A store of the jobs the store's owner runs itself: with each job's `JobMeta` (`get` and
    `recent` answer such a job as an owner-run record, `JobMeta.apply`), and a restart."""

    def save_meta(self, job_id: str, meta: JobMeta) -> None: ...

    def load_meta(self, job_id: str) -> JobMeta | None: ...

    def restart(self, job_id: str) -> None:
        """Back to ``queued`` with nothing counted: the job runs again from the start."""
        ...

    def close(self) -> None: ...
