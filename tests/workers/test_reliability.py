"""Crash tests with real parts: worker kill -9, Redis restart without persistence, bad files and
dead letters, with `radsearch serve` owning the embedded store the workers fill. Each prints one
line of figures (REFERENCE (i) T1, T3)."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable

import httpx
import pytest
import redis
from minio import Minio

from core.config import Settings
from core.jobs import JobKind, JobSpec
from core.jobs.redis_store import RedisJobStore
from tests.conftest import free_port
from tests.workers.conftest import (
    RedisServer,
    Server,
    Worker,
    cli,
    coverage,
    png_bytes,
    stored_points,
    upload_images,
    wait_job,
)
from workers.app import create_celery
from workers.client import BrokerUnavailable, submit_job
from workers.held_messages import HELD_KEY


def _wait_batches(store: RedisJobStore, job_id: str, at_least: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = store.get(job_id, with_items=False)
        if record is not None and (record.counts["batches_done"] >= at_least or record.finished):
            return
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id}: fewer than {at_least} batches done after {timeout_s} s")


def _wait_in_flight(store: RedisJobStore, job_id: str, timeout_s: float = 60) -> set[str]:
    """The batches that started after this call and are not done, once there is one: running now.

    "Started and not done" alone is not enough: a batch of a killed worker waits unacknowledged
    for its visibility timeout while not running, and right after a batch completes the pool child
    is idle for a moment (a kill then interrupts nothing)."""
    before = store.deliveries(job_id)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = store.deliveries(job_id)
        started = {b for b, n in now.items() if n > before.get(b, 0)}
        running = started - store.done_batches(job_id)
        if running:
            return running
        time.sleep(0.01)
    raise TimeoutError(f"job {job_id}: no batch started after {timeout_s} s")


@pytest.mark.slow
def test_kill_worker_and_child_during_job(
    worker_settings: Settings,
    minio_client: Minio,
    bucket: str,
    job_store: RedisJobStore,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
) -> None:
    n = 300
    keys = [f"raw/{i:04d}.png" for i in range(n)]
    server = start_server(worker_settings, wait=False)
    upload_images(minio_client, bucket, keys)
    server.wait_ready()
    # prefork, one child: killing it (or the whole worker) mid-batch is the test
    worker = start_worker(worker_settings, "--pool", "prefork", "--concurrency", "1")
    app = create_celery(worker_settings)
    server.create_collection("kill")
    spec = JobSpec(source=f"s3://{bucket}/raw/", collections=("kill",), encoder="baseline")
    job_id = submit_job(job_store, app, JobKind.INGEST, spec)

    # (batches done before the kill, what to kill); 30 batches of 10
    schedule = [(3, "child"), (8, "child"), (12, "worker"), (18, "child"), (23, "worker")]
    kills = 0
    recovery: list[float] = []
    hit: list[set[str]] = []  # per kill: the batches it interrupted (started, not done, at the kill)
    retried = 0
    for threshold, what in schedule:
        _wait_batches(job_store, job_id, threshold)
        record = job_store.get(job_id, with_items=False)
        assert record is not None
        if record.finished:
            break
        done_before = record.counts["batches_done"]
        for _attempt in range(3):
            in_flight = _wait_in_flight(job_store, job_id)
            killed_at = time.monotonic()
            if what == "child":
                assert worker.kill_child(), "no pool child to kill"
            else:
                worker.kill_all()
            # a batch that finished in the moment before the kill was not interrupted by it
            interrupted = in_flight - job_store.done_batches(job_id)
            if what == "worker":
                worker.start()
            if interrupted:
                break
            retried += 1  # the kill came too late: kill again at the next batch
        hit.append(interrupted)
        kills += 1
        _wait_batches(job_store, job_id, done_before + 1, timeout_s=90)
        recovery.append(time.monotonic() - killed_at)

    record = wait_job(job_store, job_id, timeout_s=180)
    deliveries = job_store.deliveries(job_id)
    worker.stop()
    points = stored_points(worker_settings, "kill")
    figures = coverage(keys, points)
    reexecuted = sum(deliveries.values()) - len(deliveries)
    # every kill interrupted a batch, and each interrupted batch ran again (a second delivery)
    missed_kills = sum(1 for batches in hit if not batches)
    not_rerun = sorted(b for batches in hit for b in batches if deliveries.get(b, 0) < 2)
    c = record.counts
    line = (
        f"expected={n} stored={figures['stored']} missing={figures['missing']} "
        f"duplicates={figures['duplicates']} reexecuted={reexecuted} kills={kills} "
        f"kills_without_batch_in_flight={missed_kills} kills_retried={retried} "
        f"interrupted_not_rerun={not_rerun} "
        f"resume_s_max={max(recovery):.1f} job_s={record.seconds:.1f} job_state={record.state.value} "
        f"indexed_frames={c['indexed_frames']} skipped_unchanged={c['skipped_unchanged']} "
        f"failed={c['failed']}"
    )
    ok = (
        figures["stored"] == n
        and figures["missing"] == 0
        and figures["duplicates"] == 0
        and figures["unexpected"] == 0
        and kills == len(schedule)
        and reexecuted >= kills
        and missed_kills == 0
        and not not_rerun
        and record.state.value == "done"
        and c["objects_done"] == n
        and c["indexed_frames"] + c["skipped_unchanged"] == n
        and c["failed"] == 0
        and max(recovery) <= worker_settings.celery.visibility_timeout_s + 30
    )
    print(f"\nworker_kill: {line} {'PASS' if ok else 'FAIL'}")
    assert ok, line


@pytest.mark.slow
def test_a_dead_workers_batch_is_given_back_long_before_the_visibility_timeout(
    worker_settings: Settings,
    minio_client: Minio,
    bucket: str,
    job_store: RedisJobStore,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
) -> None:
    """A worker killed outright (kill -9 of its main process) holds its batch unacknowledged; with
    the default hour of visibility timeout the job would wait that long. The other workers give
    it back once the dead worker's heartbeat has been silent for ``worker_dead_after_s``."""
    celery = worker_settings.celery.model_copy(
        update={"visibility_timeout_s": 3600, "worker_heartbeat_s": 0.5, "worker_dead_after_s": 2.0}
    )
    settings = worker_settings.model_copy(update={"celery": celery})
    n = 200
    keys = [f"raw/{i:04d}.png" for i in range(n)]
    server = start_server(settings, wait=False)
    upload_images(minio_client, bucket, keys)
    server.wait_ready()
    doomed = start_worker(
        settings, "--pool", "prefork", "--concurrency", "1", "--hostname", "doomed@test", name="doomed"
    )
    server.create_collection("given-back")
    spec = JobSpec(source=f"s3://{bucket}/raw/", collections=("given-back",), encoder="baseline")
    job_id = submit_job(job_store, create_celery(settings), JobKind.INGEST, spec)
    _wait_batches(job_store, job_id, 2)
    interrupted: set[str] = set()
    for _attempt in range(3):
        in_flight = _wait_in_flight(job_store, job_id)
        doomed.kill_all()
        interrupted = in_flight - job_store.done_batches(job_id)
        if interrupted:
            break
        doomed.start()  # the kill came as its batch ended: kill it at the next one
    assert interrupted, "no kill interrupted a batch"
    killed_at = time.monotonic()

    port = free_port()
    rescuer = start_worker(
        settings,
        "--hostname",
        "rescuer@test",
        "--pool",
        "threads",
        "--metrics-port",
        str(port),
        name="rescuer",
    )
    record = wait_job(job_store, job_id, timeout_s=120)
    took_s = time.monotonic() - killed_at
    deliveries = job_store.deliveries(job_id)
    figures = coverage(keys, stored_points(settings, "given-back"))
    assert record.state.value == "done", record.error
    assert figures == {"expected": n, "stored": n, "missing": 0, "duplicates": 0, "unexpected": 0}
    assert all(deliveries[batch] >= 2 for batch in interrupted), (interrupted, deliveries)
    assert took_s < 60, f"the job ended {took_s:.0f} s after the kill"
    assert "doomed@test silent for" in rescuer.log() and "given back to their queues" in rescuer.log()
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    given_back = re.search(
        r'^radsearch_worker_messages_given_back_total\{queue="embed"\} (\S+)$', metrics, re.M
    )
    assert given_back is not None and float(given_back.group(1)) >= len(interrupted), metrics
    # what a worker that stopped cleanly held is not given back: kombu returned it, and its entry went
    rescuer.stop()
    assert not job_store.client.hkeys(HELD_KEY)


def _brpop_clients(client: redis.Redis) -> int:
    return sum(1 for c in client.client_list() if c.get("cmd") in ("brpop", "blpop", "bzpopmin"))


@pytest.mark.slow
def test_redis_restart_mid_job_then_reconcile(
    worker_settings: Settings,
    redis_server: RedisServer,
    minio_client: Minio,
    bucket: str,
    job_store: RedisJobStore,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
) -> None:
    n = 300
    keys = [f"raw/{i:04d}.png" for i in range(n)]
    server = start_server(worker_settings, wait=False)
    upload_images(minio_client, bucket, keys)
    server.wait_ready()
    worker = start_worker(worker_settings, "--pool", "threads", "--concurrency", "2")
    app = create_celery(worker_settings)
    source = f"s3://{bucket}/raw/"
    server.create_collection("rr")
    job_id = submit_job(
        job_store, app, JobKind.INGEST, JobSpec(source=source, collections=("rr",), encoder="baseline")
    )
    _wait_batches(job_store, job_id, 10)

    redis_server.kill()  # every queued task, the job's state and the results are gone with it
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        submit_job(job_store, app, JobKind.INGEST, JobSpec(source=source, collections=("rr",)))
    producer_hang_s = time.monotonic() - started
    redis_server.restart()
    restarted = time.monotonic()
    probe = redis.Redis(port=redis_server.port)
    while _brpop_clients(probe) == 0:
        assert time.monotonic() - restarted < 60, "worker did not reconnect to Redis"
        time.sleep(0.1)
    reconnect_s = time.monotonic() - restarted
    probe.close()
    assert job_store.get(job_id) is None  # the job is gone with Redis

    result = cli(worker_settings, "reconcile", source, "--collection", "rr", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    job = json.loads(result.stdout.strip().splitlines()[-1])
    lost = job["drift"]["rr"]["missing"]
    worker.stop()
    figures = coverage(keys, stored_points(worker_settings, "rr"))
    line = (
        f"lost_before_reconcile={lost} missing_after_reconcile={figures['missing']} "
        f"duplicates={figures['duplicates']} stored={figures['stored']} expected={n} "
        f"producer_hang_s={producer_hang_s:.1f} reconnect_s={reconnect_s:.1f}"
    )
    ok = (
        figures["missing"] == 0
        and figures["stored"] == n
        and figures["duplicates"] == 0
        and producer_hang_s <= 10
        and job["state"] == "done"
        and lost > 0
    )
    print(f"\nredis_restart: {line} {'PASS' if ok else 'FAIL'}")
    assert ok, line


def test_bad_file_in_a_batch_is_listed_not_retried(
    worker_settings: Settings,
    minio_client: Minio,
    bucket: str,
    job_store: RedisJobStore,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
) -> None:
    start_server(worker_settings, wait=False).wait_ready()
    good = [f"raw/{i:03d}.png" for i in range(19)]
    upload_images(minio_client, bucket, good)
    junk = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # a PNG signature, then garbage
    truncated = png_bytes(999)[:60]
    minio_client.put_object(bucket, "raw/bad.png", io.BytesIO(junk), len(junk))
    minio_client.put_object(bucket, "raw/truncated.png", io.BytesIO(truncated), len(truncated))
    worker = start_worker(worker_settings)
    result = cli(
        worker_settings,
        "ingest",
        f"s3://{bucket}/raw/",
        "--collection",
        "bad",
        "--executor",
        "celery",
        "--json",
    )
    job = json.loads(result.stdout.strip().splitlines()[-1])
    record = job_store.get(job["id"])
    assert record is not None
    deliveries = job_store.deliveries(record.id)
    worker.stop()
    points = stored_points(worker_settings, "bad")
    reasons = {item["key"]: item["reason"] for item in job["failed_items"]}
    line = (
        f"objects={len(good) + 2} indexed={len(points)} failed={job['counts']['failed']} "
        f"max_deliveries={max(deliveries.values())} dead_letters={len(job_store.dead_letters())} "
        f"reasons={json.dumps(reasons)}"
    )
    ok = (
        result.returncode == 0
        and job["state"] == "done"
        and len(points) == len(good)
        and set(reasons) == {"raw/bad.png", "raw/truncated.png"}
        and all(reasons.values())
        and max(deliveries.values()) == 1
        and not job_store.dead_letters()
    )
    print(f"\nbad_file: {line} {'PASS' if ok else 'FAIL'}")
    assert ok, line


def test_transient_errors_retry_then_dead_letter_and_requeue(
    worker_settings: Settings,
    minio_client: Minio,
    bucket: str,
    job_store: RedisJobStore,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
) -> None:
    keys = [f"raw/{i:03d}.png" for i in range(20)]
    upload_images(minio_client, bucket, keys)
    start_server(worker_settings).create_collection("dl")
    planner = start_worker(worker_settings, "--queues", "plan", name="planner")
    app = create_celery(worker_settings)
    spec = JobSpec(source=f"s3://{bucket}/raw/", collections=("dl",), encoder="baseline")
    job_id = submit_job(job_store, app, JobKind.INGEST, spec)
    deadline = time.monotonic() + 60
    while not (r := job_store.get(job_id, with_items=False)) or not r.planned:
        assert time.monotonic() < deadline, "planning did not finish"
        time.sleep(0.1)
    planner.stop()
    # The bucket disappears between planning and embedding: every fetch is a transient S3 error.
    for key in keys:
        minio_client.remove_object(bucket, key)
    minio_client.remove_bucket(bucket)

    # plan too: it finishes the job (indexes its collection) once the last batch is done
    embedder = start_worker(worker_settings, "--queues", "embed,plan", name="embedder")
    record = wait_job(job_store, job_id, timeout_s=90)
    deliveries = job_store.deliveries(job_id)
    letters = job_store.dead_letters(job_id=job_id)
    assert record.state.value == "done"
    assert record.counts["dead_lettered"] == len(keys) and record.counts["failed"] == len(keys)
    assert len(letters) == 2 and all("SourceError" in d.error for d in letters)
    # bounded: one first try plus max_retries retries per batch, then the dead-letter list
    assert set(deliveries.values()) == {worker_settings.celery.max_retries + 1}

    minio_client.make_bucket(bucket)
    upload_images(minio_client, bucket, keys)
    result = cli(worker_settings, "jobs", "requeue", "--json")
    assert result.returncode == 0, result.stderr
    replay = json.loads(result.stdout.strip().splitlines()[-1])
    assert replay["requeued_batches"] == 2 and len(replay["jobs"]) == 1
    replayed = wait_job(job_store, replay["jobs"][0], timeout_s=90)
    embedder.stop()
    figures = coverage(keys, stored_points(worker_settings, "dl"))
    line = (
        f"objects={len(keys)} dead_lettered={record.counts['dead_lettered']} "
        f"deliveries_per_batch={sorted(set(deliveries.values()))} "
        f"requeued_batches={replay['requeued_batches']} "
        f"indexed_after_requeue={replayed.counts['indexed_frames']} missing={figures['missing']} "
        f"dead_letters_left={len(job_store.dead_letters())}"
    )
    ok = (
        replayed.state.value == "done"
        and figures["missing"] == 0
        and figures["duplicates"] == 0
        and not job_store.dead_letters()
    )
    print(f"\ndead_letter: {line} {'PASS' if ok else 'FAIL'}")
    assert ok, line
