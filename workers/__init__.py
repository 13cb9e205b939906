"""The scaled-out executor: Celery tasks around the batch pipeline, job state in Redis, bucket events.

Start a worker with ``radsearch worker``; submit work with ``radsearch ingest --executor celery``,
``POST /v1/ingest-jobs`` or bucket notifications (``POST /v1/events/s3``).
"""

from workers.app import create_celery
from workers.jobs import JobKind, JobRecord, JobSpec, JobState, JobStore, open_job_store

__all__ = ["JobKind", "JobRecord", "JobSpec", "JobState", "JobStore", "create_celery", "open_job_store"]
