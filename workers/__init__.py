"""The scaled-out executor: Celery tasks around the batch pipeline, job state in Redis, bucket events.

Start a worker with ``radsearch worker``; submit work with ``radsearch ingest --executor celery``,
``POST /v1/ingest-jobs`` or bucket notifications (``POST /v1/events/s3``). The package imports
nothing itself (import its modules): the command line loads Celery and Redis only where it uses them.
"""
