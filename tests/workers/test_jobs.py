"""Ingest jobs: the HTTP API, the command line and the job store's counting rules."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from minio import Minio

from core.config import Settings
from core.index.edge import EdgeIndex
from core.jobs import JobKind, JobSpec, JobState
from core.jobs.redis_store import RedisJobStore
from search_api.app import create_app
from tests.workers.conftest import RedisServer, Server, Worker, cli, upload_images, wait_api_job
from workers.client import parse_s3_event


@pytest.fixture
def api(worker_settings: Settings, tmp_path: Path) -> Iterator[TestClient]:
    index = EdgeIndex(tmp_path / "api-index", worker_settings.store)
    with TestClient(create_app(worker_settings, index=index)) as client:
        yield client
    index.close()


def test_ingest_job_api_fills_several_collections_with_labels(
    worker_settings: Settings,
    minio_client: Minio,
    bucket: str,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
) -> None:
    # The API is the embedded store's owner: it creates the job's collections, the workers fill them.
    server = start_server(worker_settings, wait=False)
    worker = start_worker(worker_settings, wait=False)
    keys = [f"raw/CT/chest/{i:02d}.png" for i in range(12)] + [f"raw/MR/head/{i:02d}.png" for i in range(8)]
    upload_images(minio_client, bucket, keys)
    manifest = b"key,pathology,anatomy\nraw/CT/chest/00.png,nodule,lung\nraw/MR/head/03.png,glioma,\n"
    minio_client.put_object(bucket, "manifests/labels.csv", io.BytesIO(manifest), len(manifest))
    server.wait_ready()
    worker.wait_ready()
    api = server.client()
    body = {
        "source": f"s3://{bucket}/raw/",
        "collections": ["multi-a", "multi-b"],
        "manifest": f"s3://{bucket}/manifests/labels.csv",
        "path_template": "{modality}/{anatomy}/{file}",
        "encoder": "baseline",
    }
    created = api.post("/v1/ingest-jobs", json=body)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert created.headers["location"] == f"/v1/ingest-jobs/{job_id}"
    job = wait_api_job(api, job_id)
    counts = job["counts"]
    assert isinstance(counts, dict)
    assert job["state"] == "done"
    assert counts["listed"] == 20 and counts["queued"] == 20 and counts["indexed_frames"] == 40
    assert counts["failed"] == 0 and job["started_at"] and job["finished_at"]
    throughput = job["throughput"]
    assert isinstance(throughput, dict) and throughput["objects_per_s"] > 0

    again = api.post("/v1/ingest-jobs", json=body).json()["id"]
    second = wait_api_job(api, again)
    second_counts = second["counts"]
    assert isinstance(second_counts, dict)
    assert second_counts["skipped_unchanged"] == 20 and second_counts["indexed_frames"] == 0

    listed = api.get("/v1/ingest-jobs").json()
    assert listed["count"] >= 2 and listed["data"][0]["id"] == again
    assert api.get("/v1/ingest-jobs/6b0a2f6e-0000-4000-8000-000000000000").status_code == 404
    assert api.get("/v1/ingest-jobs/not-a-uuid").status_code == 404

    shown = cli(worker_settings, "jobs", "show", job_id, "--json")
    assert json.loads(shown.stdout)["counts"]["indexed_frames"] == 40
    listing = cli(worker_settings, "jobs", "list")
    assert job_id in listing.stdout and again in listing.stdout
    detail = api.get("/v1/collections/multi-a").json()
    assert detail["encoder"] == "baseline" and detail["points"] == 20
    worker.stop()
    server.stop()  # gives the store up: it is read here directly

    index = EdgeIndex(worker_settings.index_dir, worker_settings.store)
    try:
        for collection in ("multi-a", "multi-b"):
            payloads = {p.payload["key"]: p.payload for p in index.scroll(collection)}
            assert len(payloads) == 20
            assert payloads["raw/CT/chest/00.png"]["pathology"] == ["nodule"]
            assert payloads["raw/CT/chest/00.png"]["anatomy"] == "lung"  # manifest beats the template
            assert payloads["raw/CT/chest/05.png"]["modality"] == "CT"
            assert payloads["raw/MR/head/03.png"]["anatomy"] == "head"
            assert payloads["raw/MR/head/03.png"]["pathology"] == ["glioma"]
            # the workers record the source's stable name (bucket/prefix), never a URI or path
            assert {p["source"] for p in payloads.values()} == {f"{bucket}/raw"}
    finally:
        index.close()


def test_ingest_with_the_workers_creates_new_collections_with_the_weights_given(
    worker_settings: Settings,
    minio_client: Minio,
    bucket: str,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
) -> None:
    """``radsearch ingest --executor celery --weights``: the job's new collections get those weights
    on the store's owner, whether the command finds the owner itself or is given its ``--url``.
    Found in the walkthrough: both dropped ``--weights``, so the owner tried the encoder's hub
    weights (no network here: the command failed) or, with a network, took other weights."""
    server = start_server(worker_settings, wait=False)
    worker = start_worker(worker_settings, wait=False)
    upload_images(minio_client, bucket, [f"weights/{i}.png" for i in range(3)])
    server.wait_ready()
    worker.wait_ready()
    common = ["--encoder", "resnet50", "--weights", "random", "--executor", "celery", "--json"]
    found = cli(worker_settings, "ingest", f"s3://{bucket}/weights/", "--collection", "w-a,w-b", *common)
    assert found.returncode == 0, found.stderr[-2000:]
    given = cli(
        worker_settings,
        "ingest",
        f"s3://{bucket}/weights/",
        "--collection",
        "w-c",
        "--url",
        server.url,
        *common,
    )
    assert given.returncode == 0, given.stderr[-2000:]
    api = server.client()
    for name in ("w-a", "w-b", "w-c"):
        detail = api.get(f"/v1/collections/{name}").json()
        assert (detail["encoder"], detail["weights"], detail["points"]) == ("resnet50", "random", 3), detail


@pytest.mark.parametrize(
    "body",
    [
        {"source": "http://169.254.169.254/latest", "collections": ["a"]},
        {"source": "/etc", "collections": ["a"]},
        {"source": "s3://bucket/x", "collections": []},
        {"source": "s3://bucket/x", "collections": ["Bad Name"]},
        {"source": "s3://bucket/x", "collections": ["a"], "manifest": "/etc/passwd"},
        {"source": "s3://bucket/x", "collections": ["a"], "source_name": "../etc"},
        {"source": "s3://bucket/x", "collections": ["a"], "source_name": "a\x00b"},
    ],
)
def test_ingest_job_api_rejects_bad_requests(api: TestClient, body: dict[str, object]) -> None:
    assert api.post("/v1/ingest-jobs", json=body).status_code == 422


def test_ingest_job_api_names_an_unknown_field(api: TestClient) -> None:
    body = {"source": "s3://bucket/x", "collections": ["a"], "unknown": 1}
    response = api.post("/v1/ingest-jobs", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "unknown_field",
        "message": "unknown field 'unknown': the request schema does not take it",
        "field": "unknown",
    }


def test_a_job_counts_modality_labels_that_disagree_with_the_dicom_header(
    worker_settings: Settings,
    minio_client: Minio,
    bucket: str,
    tmp_path: Path,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from radsearch.commands.common import MODALITY_CONFLICTS
    from radsearch.commands.jobs import print_job_result
    from radsearch.demo_data import generate_demo_archive

    server = start_server(worker_settings, wait=False)
    worker = start_worker(worker_settings, wait=False)
    archive = generate_demo_archive(tmp_path / "archive", per_class=2, seed=5)
    files = sorted((archive.root / "dicom" / "CT").rglob("*.dcm"))
    for path in files:  # CT/chest/normal/x.dcm under raw/
        key = "raw/" + path.relative_to(archive.root / "dicom").as_posix()
        minio_client.fput_object(bucket, key, str(path))
    server.wait_ready()
    worker.wait_ready()
    api = server.client()
    body = {
        "source": f"s3://{bucket}/raw/",
        "collections": ["labels"],
        "path_template": "{modality}/{anatomy}/{file}",  # one folder short: modality = chest, abdomen
        "encoder": "baseline",
    }
    created = api.post("/v1/ingest-jobs", json=body)
    assert created.status_code == 202, created.text
    job = wait_api_job(api, created.json()["id"])
    assert job["state"] == "done" and job["counts"]["modality_conflicts"] == len(files)
    shown = cli(worker_settings, "jobs", "show", job["id"])
    assert json.loads(shown.stdout)["counts"]["modality_conflicts"] == len(files)
    print_job_result(job, as_json=False)  # what `ingest --executor celery` and `jobs wait` print
    assert f"  {len(files)} {MODALITY_CONFLICTS} (the log names the values)" in capsys.readouterr().out
    assert "CHEST where the DICOM header says CT (" in worker.log()


def test_ingest_job_api_rejects_bad_template_and_encoder(api: TestClient) -> None:
    bad_template = {"source": "s3://bucket/x", "collections": ["a"], "path_template": "{nope}/{file}"}
    assert api.post("/v1/ingest-jobs", json=bad_template).status_code == 400
    bad_encoder = {"source": "s3://bucket/x", "collections": ["a"], "encoder": "no-such-encoder"}
    assert api.post("/v1/ingest-jobs", json=bad_encoder).status_code == 400


def test_ingest_job_api_503_when_redis_is_down(
    worker_settings: Settings, api: TestClient, redis_server: object
) -> None:
    redis_server.kill()  # type: ignore[attr-defined]
    response = api.post("/v1/ingest-jobs", json={"source": "s3://bucket/x", "collections": ["a"]})
    assert response.status_code == 503
    assert api.get("/v1/ingest-jobs").status_code == 503


def test_job_store_counts_a_redelivered_batch_once(job_store: RedisJobStore) -> None:
    spec = JobSpec(source="s3://b/p/", collections=("a",))
    job_id = job_store.create(JobKind.INGEST, spec)
    job_store.raise_counters(job_id, {"listed": 20, "queued": 20, "batches_total": 2})
    job_store.raise_counters(job_id, {"listed": 10, "batches_total": 1})  # a re-run planner
    assert job_store.complete_batch(job_id, "p0", {"objects_done": 10, "indexed_frames": 10})
    assert not job_store.complete_batch(job_id, "p0", {"objects_done": 10, "indexed_frames": 10})
    assert job_store.state(job_id) == JobState.RUNNING
    assert job_store.complete_batch(job_id, "p1", {"objects_done": 10, "failed": 1}, [("k", "bad")])
    assert job_store.state(job_id) == JobState.RUNNING  # not planned yet: more batches may come
    assert not job_store.is_complete(job_id) and not job_store.finish(job_id)
    job_store.plan_done(job_id)
    # complete, and done only once its collections are indexed (the finish task calls finish)
    assert job_store.is_complete(job_id) and job_store.state(job_id) == JobState.RUNNING
    assert job_store.finish(job_id)
    assert not job_store.is_complete(job_id) and not job_store.finish(job_id)
    record = job_store.get(job_id)
    assert record is not None and record.state == JobState.DONE
    assert record.counts["objects_done"] == 20 and record.counts["indexed_frames"] == 10
    assert record.counts["listed"] == 20 and record.counts["batches_total"] == 2
    assert record.failed_items == [{"key": "k", "reason": "bad"}]
    assert record.finished_at is not None and record.seconds is not None
    # a batch of a job Redis no longer has is ignored, not resurrected as a half job
    assert not job_store.complete_batch("0" * 32, "p0", {"objects_done": 1})
    assert job_store.get("0" * 32) is None


def test_a_batch_added_while_the_job_is_indexed_keeps_it_running(job_store: RedisJobStore) -> None:
    job_id = job_store.create(JobKind.EVENTS, JobSpec(source="s3://b/p/", collections=("a",)))
    job_store.raise_counters(job_id, {"batches_total": 1})
    job_store.plan_done(job_id)
    assert job_store.complete_batch(job_id, "e0", {"objects_done": 3})
    assert job_store.is_complete(job_id)
    job_store.add_batches(job_id, batches=1, objects=2)  # an event arrives while the index is built
    assert not job_store.finish(job_id) and job_store.state(job_id) == JobState.RUNNING
    assert job_store.complete_batch(job_id, "e1", {"objects_done": 2})
    assert job_store.finish(job_id) and job_store.state(job_id) == JobState.DONE


def test_parse_minio_event_decodes_keys_and_marks_other_events() -> None:
    body = {
        "Records": [
            {
                "eventName": "s3:ObjectCreated:Put",
                "s3": {"bucket": {"name": "b"}, "object": {"key": "a+b%2Fc.png"}},
            },
            {
                "eventName": "s3:ObjectRemoved:Delete",
                "s3": {"bucket": {"name": "b"}, "object": {"key": "x.dcm"}},
            },
            {"eventName": "s3:ObjectAccessed:Get", "s3": {"bucket": {"name": "b"}, "object": {"key": "y"}}},
        ]
    }
    events = parse_s3_event(body)
    # another kind of event is kept as "other": the webhook counts it as ignored
    assert [(e.action, e.key) for e in events] == [
        ("created", "a b/c.png"),
        ("removed", "x.dcm"),
        ("other", "y"),
    ]
    with pytest.raises(ValueError):
        parse_s3_event({"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {}}]})
    with pytest.raises(ValueError):
        parse_s3_event([1, 2])


def test_a_batch_the_broker_lost_is_sent_again(worker_settings: Settings, job_store: RedisJobStore) -> None:
    """Reproduces the stuck kill test (~1 run in 10 stuck at 29/30 batches): kombu's Redis
    transport BRPOPs a message before recording it as unacknowledged, so a worker killed in
    between loses it and no visibility timeout brings it back. Here the 'killed worker' pops both
    messages; one batch completes, the other is gone from Redis. The job is idle for longer than
    the allowed time, nothing of it is queued or unacknowledged: that batch is sent again, once."""
    import redis as redis_lib

    from ingest.sources.base import ObjectRef
    from workers.app import create_celery
    from workers.names import EMBED_QUEUE
    from workers.tasks import _send_embed_batches, resend_lost_batches

    app = create_celery(worker_settings)
    broker = redis_lib.Redis.from_url(worker_settings.redis.url)
    job_id = job_store.create(JobKind.INGEST, JobSpec(source="s3://b/p/", collections=("a",)))
    refs = [ObjectRef(f"p/{i}.png", f"etag{i}", 10) for i in range(4)]
    assert _send_embed_batches(app, job_store, job_id, refs, 2, "p") == 2
    job_store.plan_done(job_id)
    assert broker.llen(EMBED_QUEUE) == 2
    broker.delete(EMBED_QUEUE)  # both popped by a worker that was killed before recording them
    job_store.complete_batch(job_id, "p0", {"objects_done": 2})  # p0 had run; p1 is lost

    assert resend_lost_batches(app, job_store, broker, idle_s=1.0) == 0  # not idle long enough
    time.sleep(1.1)
    broker.lpush(EMBED_QUEUE, b"a message of another job")
    broker.lpush(EMBED_QUEUE, json.dumps({"body": job_id}))
    assert resend_lost_batches(app, job_store, broker, idle_s=1.0) == 0  # one of its is queued...
    broker.delete(EMBED_QUEUE)
    broker.hset("unacked", "tag", json.dumps([{"body": job_id}, "", "embed"]))
    assert resend_lost_batches(app, job_store, broker, idle_s=1.0) == 0  # ...or a worker holds one
    broker.delete("unacked")

    broker.lpush(EMBED_QUEUE, b"a message of another job")  # others' messages do not hold it back
    assert resend_lost_batches(app, job_store, broker, idle_s=1.0) == 1
    assert broker.llen(EMBED_QUEUE) == 2
    message = json.loads(broker.lindex(EMBED_QUEUE, 0) or b"{}")
    assert (
        message["headers"]["task"] == "radsearch.embed_batch"
        and message["headers"]["argsrepr"].find("'p1'") > 0
    )
    assert resend_lost_batches(app, job_store, broker, idle_s=1.0) == 0  # sent once, clock restarted
    job_store.complete_batch(job_id, "p1", {"objects_done": 2})
    time.sleep(1.1)
    assert job_store.lost_batches(job_id, 1.0) == {} and job_store.is_complete(job_id)
    broker.close()


def test_reading_jobs_loads_neither_the_workers_tasks_nor_pydicom(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Found on a slower host (session 24): `radsearch jobs show` took 1.13 s (the CLI's target is
    1 s): it built the Celery app, which imports the whole ingest pipeline and pydicom, only to
    read a job. Listing, showing and the workers' list read the job store alone."""
    code = f"""
import json, sys
from radsearch.commands.main import main
data = ["--data-dir", {str(tmp_path / "data")!r}]
codes = [main([*data, "jobs", "show", "00000000-deadbeef"]), main([*data, "jobs", "list"]),
         main([*data, "jobs", "workers"])]
print(json.dumps({{"codes": codes, "loaded": [m for m in ("pydicom", "workers.tasks", "workers.app")
                                           if m in sys.modules]}}))
"""
    env = {**os.environ, "RADSEARCH_REDIS__URL": redis_server.url}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"codes": [1, 0, 0], "loaded": []}, (seen, done.stderr[-1000:])
