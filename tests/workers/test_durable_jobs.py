"""Jobs that survive (issue 14, items 9 and 10): a collection dropped under a running job, and a
Redis that lost its data. Real parts: a private redis-server, ``radsearch serve`` owning the
embedded store, a ``radsearch worker`` subprocess, moto's S3 server."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from minio import Minio

from core.config import Settings
from core.index.edge import EdgeIndex
from core.jobs import DeadLetter, JobKind, JobSpec, JobState
from core.jobs.redis_store import RedisJobStore
from search_api.app import create_app
from tests.workers.conftest import RedisServer, Server, Worker, cli, upload_images, wait_job
from workers.app import create_celery
from workers.names import EMBED_TASK


def test_a_collection_dropped_under_a_job_fails_it_and_requeue_does_not_recreate_it(
    worker_settings: Settings,
    minio_client: Minio,
    bucket: str,
    job_store: RedisJobStore,
    redis_server: RedisServer,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
) -> None:
    """Before: a collection dropped while a job wrote to it (here: dropped while Redis did not
    answer, so the drop could not see the job) left the job to end ``done`` — its batches merely
    dead-lettered — and ``radsearch jobs requeue`` replayed them into the dropped collection (a
    Qdrant server re-created it half-filled). Now the job ends ``failed`` with "collection 'c' was
    dropped while the job wrote to it", and a replayed dead letter fails the same way without
    creating anything."""
    keys = [f"raw/{i:02d}.png" for i in range(20)]
    upload_images(minio_client, bucket, keys)
    server = start_server(worker_settings)
    server.create_collection("c")
    spec = JobSpec(source=f"s3://{bucket}", collections=("c",))
    # The job as its planner leaves it: planned, two embed batches queued (no worker runs yet).
    job_id = job_store.create(JobKind.INGEST, spec)
    refs = [(key, f"etag-{key}", 1) for key in keys]
    app = create_celery(worker_settings)
    for i in range(2):
        batch = refs[i * 10 : (i + 1) * 10]
        app.send_task(
            EMBED_TASK, args=[job_id, f"p{i}", [k for k, _, _ in batch], [e for _, e, _ in batch], [1] * 10]
        )
    job_store.raise_counters(job_id, {"listed": 20, "queued": 20, "batches_total": 2})
    job_store.plan_done(job_id)

    with server.client() as client:
        busy = client.delete("/v1/collections/c")
        assert busy.status_code == 409, busy.text  # Redis answers: the drop sees the job
        assert redis_server.proc is not None
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            dropped = client.delete("/v1/collections/c")
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        assert dropped.status_code == 200 and dropped.json()["trashed"], dropped.text

    start_worker(worker_settings, "--pool", "solo")
    record = wait_job(job_store, job_id, timeout_s=90)
    assert record.state == JobState.FAILED, record
    assert record.error == "collection 'c' was dropped while the job wrote to it"
    assert job_store.dead_letters(job_id=job_id) == []  # nothing for a requeue to replay into it

    job_store.dead_letter(DeadLetter(job_id, "p9", spec, keys[:3], "TimeoutError: s3", 6, time.time()))
    requeued = cli(worker_settings, "jobs", "requeue", "--json")
    assert requeued.returncode == 0, requeued.stderr
    (new_id,) = json.loads(requeued.stdout)["jobs"]
    replay = wait_job(job_store, new_id, timeout_s=60)
    assert replay.state == JobState.FAILED, replay
    assert replay.error == "collection 'c' was dropped while the job wrote to it"
    with server.client() as client:
        assert client.get("/v1/collections/c").status_code == 404


@pytest.fixture
def api(worker_settings: Settings, tmp_path: Path) -> Iterator[TestClient]:
    index = EdgeIndex(tmp_path / "api-index", worker_settings.store)
    with TestClient(create_app(worker_settings, index=index)) as client:
        yield client
    index.close()


def test_a_job_lost_with_redis_is_told_apart_from_an_unknown_id(
    worker_settings: Settings, api: TestClient, redis_server: RedisServer
) -> None:
    """Before: Redis restarted without persistence took every job record with it, and
    ``GET /v1/ingest-jobs/{id}`` answered a lost job exactly like an id that never existed (404).
    Now the job-store epoch (in Redis, mirrored in the data dir) tells them apart: 410
    ``job_state_lost`` saying to reconcile; ``radsearch jobs show`` prints the same and ``jobs list``
    warns."""
    created = api.post("/v1/ingest-jobs", json={"source": "s3://bucket/ct/", "collections": ["a"]})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert api.get(f"/v1/ingest-jobs/{job_id}").status_code == 200

    redis_server.restart()

    lost = api.get(f"/v1/ingest-jobs/{job_id}")
    assert lost.status_code == 410, lost.text
    assert lost.json()["error"]["code"] == "job_state_lost"
    assert "radsearch reconcile" in lost.json()["detail"]
    unknown = api.get(f"/v1/ingest-jobs/{uuid.uuid4()}")
    assert unknown.status_code == 404, unknown.text
    listed = api.get("/v1/ingest-jobs")
    assert listed.status_code == 200
    assert listed.json()["warning"] is not None and "job state lost" in listed.json()["warning"]

    shown = cli(worker_settings, "jobs", "show", job_id)
    assert shown.returncode != 0
    assert "job state lost" in shown.stderr and "radsearch reconcile" in shown.stderr
    listing = cli(worker_settings, "jobs", "list")
    assert listing.returncode == 0, listing.stderr
    assert "warning: job state lost" in listing.stderr
    # Found in the walkthrough: a requeue of a job that was lost, or never was, answered
    # "requeued 0 dead-lettered batch(es) as job(s): -" and exit 0, as for a job with none.
    requeued = cli(worker_settings, "jobs", "requeue", job_id)
    assert requeued.returncode == 1 and "job state lost" in requeued.stderr, requeued
    # and where there is nothing to requeue, it says so (not "requeued 0 ... as job(s): -")
    empty = cli(worker_settings, "jobs", "requeue")
    assert (empty.returncode, empty.stdout) == (0, "nothing to requeue: the dead-letter list is empty\n"), (
        empty
    )
    typo = cli(worker_settings, "jobs", "requeue", "e350a94e")
    assert typo.returncode == 1 and "radsearch: error: no job e350a94e" in typo.stderr, typo

    # A new job under the new epoch: found, and no longer a reason to warn.
    again = api.post("/v1/ingest-jobs", json={"source": "s3://bucket/ct/", "collections": ["a"]})
    assert again.status_code == 202
    assert api.get(f"/v1/ingest-jobs/{again.json()['id']}").status_code == 200
    assert api.get("/v1/ingest-jobs").json()["warning"] is None
    assert api.get(f"/v1/ingest-jobs/{job_id}").status_code == 410
