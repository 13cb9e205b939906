"""Worker heartbeats: live workers listed, a job with no worker on its queue says it is waiting."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
from minio import Minio

from core.config import Settings
from core.jobs import JobKind, JobRecord, JobSpec
from core.jobs.redis_store import RedisJobStore
from core.store_identity import store_id
from tests.workers.conftest import Server, Worker, cli, upload_images
from workers.app import create_celery
from workers.heartbeat import (
    HeartbeatThread,
    WorkerBeat,
    live_workers,
    remove_beat,
    waiting_reason,
    write_beat,
)
from workers.held_messages import HELD_KEY, give_back_dead_workers_messages

HEARTBEAT_S = 0.5
DEAD_AFTER_S = 2.0


@pytest.fixture
def beat_settings(worker_settings: Settings) -> Settings:
    celery = worker_settings.celery.model_copy(
        update={"worker_heartbeat_s": HEARTBEAT_S, "worker_dead_after_s": DEAD_AFTER_S}
    )
    return worker_settings.model_copy(update={"celery": celery})


def _beat(hostname: str, queues: tuple[str, ...], last_seen: float) -> WorkerBeat:
    return WorkerBeat(hostname, 4242, queues, 1, 0, last_seen - 60, last_seen)


def _record(job_store: RedisJobStore, **changes: Any) -> JobRecord:
    job_id = job_store.create(JobKind.INGEST, JobSpec(source="s3://b/p/", collections=("c",)))
    record = job_store.get(job_id)
    assert record is not None
    return JobRecord(**{**record.__dict__, **changes})


def test_live_workers_by_injected_clock(job_store: RedisJobStore) -> None:
    write_beat(job_store.client, _beat("w-plan@h", ("plan",), 1000.0), ttl_s=60)
    write_beat(job_store.client, _beat("w-embed@h", ("embed",), 1020.0), ttl_s=60)
    names = [b.hostname for b in live_workers(job_store.client, dead_after_s=30, now=1025.0)]
    assert names == ["w-embed@h", "w-plan@h"]
    names = [b.hostname for b in live_workers(job_store.client, dead_after_s=30, now=1040.0)]
    assert names == ["w-embed@h"]  # w-plan last seen 40 s before
    assert live_workers(job_store.client, dead_after_s=30, now=1100.0) == []


def test_waiting_names_the_queue_the_job_needs(job_store: RedisJobStore) -> None:
    queued = _record(job_store)
    now = queued.created_at + 31
    plan_worker = [_beat("p@h", ("plan",), now)]
    embed_worker = [_beat("e@h", ("embed",), now)]
    assert waiting_reason(queued, [], now=now, dead_after_s=30) == "no live worker on queue plan"
    assert waiting_reason(queued, embed_worker, now=now, dead_after_s=30) == "no live worker on queue plan"
    assert waiting_reason(queued, plan_worker, now=now, dead_after_s=30) is None
    # A job younger than the threshold gives a worker that is starting time to show up.
    assert waiting_reason(queued, [], now=queued.created_at + 5, dead_after_s=30) is None

    counts = {**queued.counts, "batches_total": 3, "batches_done": 1}
    running = _record(job_store, state="running", counts=counts, planned=True)
    assert waiting_reason(running, plan_worker, now=now, dead_after_s=30) == "no live worker on queue embed"
    assert waiting_reason(running, embed_worker, now=now, dead_after_s=30) is None
    # Every batch embedded: the planner finishes the job (indexes its collections).
    complete = _record(job_store, state="running", counts={**counts, "batches_done": 3}, planned=True)
    assert waiting_reason(complete, embed_worker, now=now, dead_after_s=30) == "no live worker on queue plan"
    done = _record(job_store, state="done")
    assert waiting_reason(done, [], now=now, dead_after_s=30) is None


def test_waiting_counts_the_workers_of_the_jobs_store_only(job_store: RedisJobStore) -> None:
    spec = JobSpec(source="s3://b/p/", collections=("c",), store="edge:ours")
    record = job_store.get(job_store.create(JobKind.INGEST, spec))
    assert record is not None
    now = record.created_at + 31

    def planner(store: str | None) -> list[WorkerBeat]:
        return [dataclasses.replace(_beat("p@h", ("plan",), now), store=store)]

    assert waiting_reason(record, planner("edge:theirs"), now=now, dead_after_s=30) == (
        "no live worker of its store on queue plan (the live ones write another store)"
    )
    assert waiting_reason(record, planner("edge:ours"), now=now, dead_after_s=30) is None
    # a worker that could not tell its store at its start may be one of ours
    assert waiting_reason(record, planner(None), now=now, dead_after_s=30) is None
    # and a job queued by a version before store ids is any worker's
    legacy = JobRecord(**{**record.__dict__, "spec": spec.model_copy(update={"store": None})})
    assert waiting_reason(legacy, planner("edge:theirs"), now=now, dead_after_s=30) is None


def test_a_stopped_heartbeat_is_gone_at_once(job_store: RedisJobStore) -> None:
    beats = 0

    def describe() -> WorkerBeat:
        nonlocal beats
        beats += 1
        return _beat("t@h", ("plan", "embed"), time.time())

    thread = HeartbeatThread(job_store.client, describe, interval_s=0.05, ttl_s=5)
    thread.start()
    deadline = time.monotonic() + 5
    while beats < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [b.hostname for b in live_workers(job_store.client, dead_after_s=5)] == ["t@h"]
    thread.stop()
    assert live_workers(job_store.client, dead_after_s=5) == []
    assert beats >= 3


def test_only_a_silent_workers_messages_are_given_back(
    job_store: RedisJobStore, beat_settings: Settings
) -> None:
    """The sweep's rules on the record itself (the kill -9 path with real workers:
    tests/workers/test_reliability.py): a worker still beating keeps what it holds; a silent one's
    entry is taken once, and a tag no longer unacknowledged is passed over."""
    client = job_store.client
    app = create_celery(beat_settings)
    client.delete(HELD_KEY)
    beat = _beat("held@h", ("embed",), 1000.0)
    write_beat(client, beat, ttl_s=60, held=("tag-1", "tag-2"))
    assert json.loads(client.hget(HELD_KEY, beat.instance))["tags"] == ["tag-1", "tag-2"]
    # same hostname, another process (a restart): its own entry
    write_beat(client, _beat("held@h", ("embed",), 1001.0), ttl_s=60, held=())
    assert len(client.hkeys(HELD_KEY)) == 2

    assert give_back_dead_workers_messages(client, app, dead_after_s=DEAD_AFTER_S, now=1001.5) == 0
    assert len(client.hkeys(HELD_KEY)) == 2  # both beat within DEAD_AFTER_S: nothing taken
    # the first silent, the second alive; neither tag is in kombu's unacked hash (acknowledged)
    assert give_back_dead_workers_messages(client, app, dead_after_s=DEAD_AFTER_S, now=1002.5) == 0
    assert [k.decode() if isinstance(k, bytes) else k for k in client.hkeys(HELD_KEY)] == [
        _beat("held@h", ("embed",), 1001.0).instance
    ]
    client.hset(HELD_KEY, "garbled", "not json")
    give_back_dead_workers_messages(client, app, dead_after_s=DEAD_AFTER_S, now=1100.0)
    assert client.hkeys(HELD_KEY) == []
    remove_beat(client, beat)


def _job(api: httpx.Client, job_id: str) -> dict[str, Any]:
    response = api.get(f"/v1/ingest-jobs/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def test_job_waits_for_a_worker_which_then_shows_up_and_drops_off_when_killed(
    beat_settings: Settings,
    minio_client: Minio,
    bucket: str,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
) -> None:
    server = start_server(beat_settings, wait=False)
    upload_images(minio_client, bucket, [f"hb/{i}.png" for i in range(4)])
    server.wait_ready()
    api = server.client()
    created = api.post(
        "/v1/ingest-jobs",
        json={"source": f"s3://{bucket}/hb/", "collections": ["beats"], "encoder": "baseline"},
    )
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert created.json()["waiting"] is None

    # No worker anywhere: after the (shortened) threshold the job says why it does not move.
    job = _until(
        lambda: (body := _job(api, job_id))["waiting"] and body, DEAD_AFTER_S + 10, "no waiting reason"
    )
    # Not before the threshold: a worker that is starting gets that long to show up.
    assert time.time() - datetime.fromisoformat(job["created_at"]).timestamp() >= DEAD_AFTER_S
    assert job["waiting"] == "no live worker on queue plan" and job["state"] == "queued"
    shown = cli(beat_settings, "jobs", "show", job_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["waiting"] == "no live worker on queue plan"
    human = cli(beat_settings, "jobs", "show", job_id)
    assert "waiting: no live worker on queue plan" in human.stderr
    assert api.get("/v1/workers").json() == {"data": [], "count": 0}

    worker = start_worker(beat_settings, "--hostname", "hb-worker@test")
    listed = api.get("/v1/workers").json()
    assert listed["count"] == 1
    (entry,) = listed["data"]
    assert entry["hostname"] == "hb-worker@test" and entry["pid"] == worker.pid
    assert entry["store"] == store_id(beat_settings)
    assert sorted(entry["queues"]) == ["embed", "plan"]
    table = cli(beat_settings, "jobs", "workers")
    assert table.returncode == 0 and "hb-worker@test" in table.stdout and "queues=embed,plan" in table.stdout

    done = _until(lambda: (body := _job(api, job_id))["state"] in ("done", "failed") and body, 90, "job")
    assert done["state"] == "done" and done["counts"]["indexed_frames"] == 4
    assert done["waiting"] is None

    # Killed outright: no goodbye, the heartbeat expires after the threshold.
    worker.kill_all()
    _until(lambda: api.get("/v1/workers").json()["count"] == 0, DEAD_AFTER_S + 8, "worker still listed")


def test_jobs_workers_prints_a_table_or_json(capsys: pytest.CaptureFixture[str]) -> None:
    from radsearch.commands.jobs import print_workers

    beat = _beat("w@h", ("embed", "plan"), time.time() - 3).to_dict()
    print_workers([beat], as_json=True)
    assert json.loads(capsys.readouterr().out) == {"data": [beat], "count": 1}
    print_workers([beat], as_json=False)
    line = capsys.readouterr().out
    assert re.match(r"w@h  queues=embed,plan  pid=4242  last_seen=[34]s ago  active=0/1$", line)
    print_workers([], as_json=False)
    assert capsys.readouterr().out == "no live workers\n"


def test_following_a_job_says_once_why_it_waits(job_store: RedisJobStore, beat_settings: Settings) -> None:
    """What `radsearch ingest/reconcile` print beside their progress while no worker serves the
    job's queue: the reason once, on stderr, re-checked every few seconds, not per poll."""
    from radsearch.commands.jobs import _WaitingNotice

    deadline = time.monotonic() + 5  # beats of an earlier test's workers die after DEAD_AFTER_S
    while live_workers(job_store.client, dead_after_s=DEAD_AFTER_S) and time.monotonic() < deadline:
        time.sleep(0.2)
    queued = _record(job_store, created_at=time.time() - 10)
    now, lines = [0.0], []
    notice = _WaitingNotice(beat_settings, job_store, clock=lambda: now[0])
    notice.check(queued, lines.append)
    assert lines == [
        f"radsearch: job {queued.id} is waiting: no live worker on queue plan (start `radsearch worker`)"
    ]
    now[0] = 1.0
    write_beat(job_store.client, _beat("p@h", ("plan",), time.time()), ttl_s=60)
    notice.check(queued, lines.append)  # within the check interval: the workers are not read
    now[0] = 10.0
    notice.check(queued, lines.append)  # a plan worker now: nothing to say
    assert len(lines) == 1


def test_two_workers_of_one_host_on_the_same_queues_are_both_listed(
    beat_settings: Settings, job_store: RedisJobStore, start_worker: Callable[..., Worker]
) -> None:
    """Found in session 30: two workers of one host on the same queues (one per GPU) took the same
    default node name, and the second's heartbeat hid the first from `jobs workers`."""
    workers = [start_worker(beat_settings, "--queues", "embed", name=f"gpu-{n}") for n in (0, 1)]
    beats = live_workers(job_store.client, dead_after_s=DEAD_AFTER_S)
    assert sorted(beat.pid for beat in beats) == sorted(worker.pid for worker in workers)
    assert len({beat.hostname for beat in beats}) == 2
