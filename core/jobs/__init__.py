"""Jobs, whichever store keeps them: one record (`JobRecord`, with one state machine and one list
of counters, `JobCounts`), one store contract (`JobStore`; `OwnerJobStore` for the jobs the
store's owner runs itself), and its backends side by side:

- `core.jobs.redis_store.RedisJobStore`: the Celery workers' jobs, in Redis;
- `core.jobs.sqlite_store.SqliteJobStore`: the owner's jobs (backfills, owner-executor ingests),
  durable in ``<data_dir>/jobs/``;
- `core.jobs.memory_store.MemoryJobStore`: the same in memory.

Here in ``core`` because both the workers (``workers``) and the API process's own runner
(``search_api.backfill_jobs``) keep jobs, and the stores need nothing above ``core``. The
backends are imported from their modules (Redis is loaded only where it is used).
"""

from core.jobs.records import (
    COUNTERS,
    FINAL_STATES,
    JOB_STATE_LOST,
    DeadLetter,
    JobCounts,
    JobKind,
    JobMeta,
    JobRecord,
    JobSpec,
    JobState,
    OwnerJobKind,
)
from core.jobs.store import JobStore, OwnerJobStore

__all__ = [
    "COUNTERS",
    "FINAL_STATES",
    "JOB_STATE_LOST",
    "DeadLetter",
    "JobCounts",
    "JobKind",
    "JobMeta",
    "JobRecord",
    "JobSpec",
    "JobState",
    "JobStore",
    "OwnerJobKind",
    "OwnerJobStore",
]
