"""Workers embed, the owner writes: `radsearch worker` processes never open the embedded store; they
send each batch to `radsearch serve`, which owns it, so several worker processes fill one
collection. Real processes throughout: Redis, moto's S3, the server, the workers."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from minio import Minio
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

from core.catalog import Catalog
from core.config import Settings
from core.encoders import get_spec
from core.errors import IndexStoreError, ServerUnavailable
from core.index.remote import OwnerIndex, locate_owner
from core.jobs import JobKind, JobSpec
from core.jobs.redis_store import RedisJobStore
from core.ownership import current_owner
from core.payload import SearchFilter, image_point_id, keyed_hash, point_id
from tests.workers.conftest import (
    Server,
    Worker,
    served_points,
    store_process_ids,
    upload_images,
    wait_job,
)
from workers.app import create_celery
from workers.client import requeue_dead_letters, submit_job
from workers.names import EMBED_TASK

# The baseline encoder projected to 2048 dimensions: 8 kB a vector, so ~1,300 points pass the
# engine's indexing threshold (10 MB of vectors; below it a collection is searched exactly).
WIDE_DIM = 2048
INDEXING_THRESHOLD_BYTES = 10_000 * 1024
N_OBJECTS = 300
FRAMES = 32


def wide_spec() -> dict[str, Any]:
    spec: dict[str, Any] = get_spec("baseline").model_dump(mode="json")
    return {**spec, "name": "baseline-wide", "dim": WIDE_DIM}


def multiframe_dicom(i: int, frames: int = FRAMES) -> bytes:
    """A multi-frame ultrasound cine loop (declared free of burned-in text), frames all different."""
    rng = np.random.default_rng(1000 + i)
    yy, xx = np.mgrid[0:48, 0:48]
    pixels = np.stack(
        [
            np.clip(128 + 80 * np.sin((xx + 3 * f) / (4 + i % 5)) + rng.normal(0, 12, (48, 48)), 0, 255)
            for f in range(frames)
        ]
    ).astype(np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.BurnedInAnnotation = "NO"
    ds.set_pixel_data(pixels, "MONOCHROME2", 8)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.NumberOfFrames = frames
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _wait_batches(store: RedisJobStore, job_id: str, at_least: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = store.get(job_id, with_items=False)
        if record is not None and (record.counts["batches_done"] >= at_least or record.finished):
            return
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id}: fewer than {at_least} batches done after {timeout_s} s")


def _served_by(settings: Settings, server: Server) -> bool:
    owner = current_owner(settings.index_dir)
    return owner is not None and owner.pid == server.pid and owner.kind == "serve" and owner.url == server.url


@pytest.mark.slow
def test_two_workers_fill_one_embedded_collection_through_the_owner(
    worker_settings: Settings,
    minio_client: Minio,
    bucket: str,
    job_store: RedisJobStore,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
) -> None:
    # The server and the workers start while the objects are uploaded.
    server = start_server(worker_settings, wait=False)
    workers = [start_worker(worker_settings, name=f"worker-{n}", wait=False) for n in (1, 2)]
    dicoms = [f"raw/{i:04d}.dcm" for i in range(N_OBJECTS) if i % 15 in (2, 9)]
    pngs = [f"raw/{i:04d}.png" for i in range(N_OBJECTS) if i % 15 not in (2, 9)]
    upload_images(minio_client, bucket, pngs)
    instances: dict[str, str] = {}
    for i, key in enumerate(dicoms):
        data = multiframe_dicom(i)
        instances[key] = keyed_hash(
            worker_settings.hash_key_bytes(), str(dcmread(io.BytesIO(data)).SOPInstanceUID)
        )
        minio_client.put_object(bucket, key, io.BytesIO(data), len(data), content_type="application/dicom")
    source = f"s3://{bucket}"
    # ids from the image: DICOM frames by instance, PNGs by the source's name (bucket/prefix) + key
    expected = {image_point_id(0, instance_hash=None, source_name=f"{bucket}/raw", key=key) for key in pngs}
    expected |= {
        image_point_id(f, instance_hash=instances[key], source_name="-", key="-")
        for key in dicoms
        for f in range(FRAMES)
    }
    assert len(expected) * WIDE_DIM * 4 > INDEXING_THRESHOLD_BYTES

    server.wait_ready()
    api = server.client()
    created = api.post("/v1/collections", json={"name": "wide", "encoder": wide_spec()})
    assert created.status_code == 201, created.text
    for worker in workers:
        worker.wait_ready()
    app = create_celery(worker_settings)
    job_id = submit_job(
        job_store, app, JobKind.INGEST, JobSpec(source=f"{source}/raw/", collections=("wide",))
    )

    _wait_batches(job_store, job_id, 6)
    record = job_store.get(job_id, with_items=False)
    assert record is not None and not record.finished, "the job ended before a worker could be killed"
    killed_at = time.monotonic()
    workers[0].kill_all()  # kill -9, the pool child with it: its batch comes back to the queue
    assert _served_by(worker_settings, server)
    workers[0].start()

    record = wait_job(job_store, job_id, timeout_s=300)
    # Read at once: the job reads done only once its collection is indexed.
    detail = api.get("/v1/collections/wide").json()
    job_s = record.seconds or 0.0
    deliveries = job_store.deliveries(job_id)
    points = served_points(server.url, "wide")
    ids = [pid for _key, _frame, pid in points]
    by_frame = {(key, frame) for key, frame, _pid in points}
    missing = len(expected - set(ids))
    duplicated = len(ids) - len(set(ids))
    unexpected = len(set(ids) - expected)
    frames_ok = by_frame == {(k, 0) for k in pngs} | {(k, f) for k in dicoms for f in range(FRAMES)}
    embed_logs = [w.log().count("radsearch.embed_batch[") for w in workers]

    # The server writes on after the job (the workers disturbed nothing), and owns the store still.
    probe = {
        "id": point_id("s3://probe", "probe.png", 0),
        "vector": [1.0] * WIDE_DIM,
        "payload": {"key": "p"},
    }
    wrote = api.put("/v1/collections/wide/points", json={"points": [probe]}).status_code
    deleted = api.post("/v1/collections/wide/points/delete", json={"ids": [probe["id"]]}).json()["deleted"]
    owned = _served_by(worker_settings, server)
    opened = [w.log().count("opened the edge store") for w in workers]
    line = (
        f"objects={N_OBJECTS} dicoms={len(dicoms)} expected_points={len(expected)} stored={len(ids)} "
        f"missing={missing} duplicated={duplicated} unexpected={unexpected} frames_ok={frames_ok} "
        f"reexecuted={sum(deliveries.values()) - len(deliveries)} "
        f"kill_to_done_s={time.monotonic() - killed_at:.1f} "
        f"job_s={job_s:.1f} state={record.state.value} points={detail['points']} "
        f"indexed={detail['indexing']['indexed_vectors']} embed_tasks_per_worker={embed_logs} "
        f"server_write={wrote} owner_is_server={owned} worker_store_opens={opened}"
    )
    print(f"\nowner_writes: {line}")
    assert record.state.value == "done", record.error
    assert record.counts["objects_done"] == N_OBJECTS and record.counts["failed"] == 0
    assert missing == 0 and duplicated == 0 and unexpected == 0 and frames_ok, line
    # Indexed at done: what the engine leaves unindexed after the finish task's build (a last small
    # segment) is under the full-scan threshold, so every search still runs at full speed.
    unindexed = detail["points"] - detail["indexing"]["indexed_vectors"]
    assert detail["points"] == len(expected) and unindexed < INDEXING_THRESHOLD_BYTES // (WIDE_DIM * 4), line
    assert all(n > 0 for n in embed_logs), line  # both processes embedded batches
    assert wrote == 200 and deleted == 1 and owned and opened == [0, 0], line


def test_without_a_serving_owner_batches_retry_then_dead_letter_then_requeue(
    worker_settings: Settings,
    minio_client: Minio,
    bucket: str,
    job_store: RedisJobStore,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
) -> None:
    keys = [f"raw/{i:02d}.png" for i in range(5)]
    upload_images(minio_client, bucket, keys)
    with pytest.raises(ServerUnavailable, match="start `radsearch serve`"):
        locate_owner(worker_settings)
    worker = start_worker(worker_settings)
    app = create_celery(worker_settings)
    spec = JobSpec(source=f"s3://{bucket}/raw/", collections=("late",))
    job_id = job_store.create(JobKind.INGEST, spec)
    job_store.raise_counters(job_id, {"listed": 5, "queued": 5, "batches_total": 1})
    job_store.plan_done(job_id)
    app.send_task(EMBED_TASK, args=[job_id, "b0", keys])
    record = wait_job(job_store, job_id, timeout_s=60)
    letters = job_store.dead_letters(job_id=job_id)
    assert len(letters) == 1 and letters[0].attempts == worker_settings.celery.max_retries + 1
    assert "ServerUnavailable" in letters[0].error and "radsearch serve" in letters[0].error
    assert record.state.value == "failed" and record.error is not None and "radsearch serve" in record.error

    # Once the owner serves (the collection created there), the replay lands every object.
    server = start_server(worker_settings)
    assert (
        server.client().post("/v1/collections", json={"name": "late", "encoder": "baseline"}).status_code
        == 201
    )
    (replay,) = requeue_dead_letters(job_store, app, job_id=job_id)
    replayed = wait_job(job_store, replay, timeout_s=60)
    worker.stop()
    assert replayed.state.value == "done", replayed.error
    assert sorted(k for k, _f, _i in served_points(server.url, "late")) == keys


def test_batches_sent_while_the_store_process_is_replaced_are_retried_and_all_land(
    worker_settings: Settings,
    minio_client: Minio,
    bucket: str,
    job_store: RedisJobStore,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
) -> None:
    """The owner's store process is killed (out of memory), and so is each new one for 3 s: the
    owner answers the workers' writes 503 `store_unavailable` meanwhile, the workers retry the batch
    later, and once a new process runs every object is indexed, none dead-lettered."""
    settings = worker_settings.model_copy(
        update={
            "celery": worker_settings.celery.model_copy(
                update={"max_retries": 10, "retry_backoff_s": 0.5, "retry_backoff_max_s": 3.0}
            ),
            "store": worker_settings.store.model_copy(update={"search_replicas": 0}),
        }
    )
    keys = [f"raw/{i:02d}.png" for i in range(5)]
    upload_images(minio_client, bucket, keys)
    server = start_server(settings)
    server.create_collection("c")
    worker = start_worker(settings)
    (store_pid,) = store_process_ids(server.pid)
    job_id = job_store.create(JobKind.INGEST, JobSpec(source=f"s3://{bucket}/raw/", collections=("c",)))
    job_store.raise_counters(job_id, {"listed": 5, "queued": 5, "batches_total": 1})
    job_store.plan_done(job_id)

    os.kill(store_pid, signal.SIGKILL)
    create_celery(settings).send_task(EMBED_TASK, args=[job_id, "b0", keys])
    killed = {store_pid}
    until = time.monotonic() + 3
    while time.monotonic() < until:
        for pid in set(store_process_ids(server.pid)) - killed:
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        time.sleep(0.02)

    record = wait_job(job_store, job_id, timeout_s=90)
    worker.stop()
    assert record.state.value == "done", (record.error, worker.log()[-3000:])
    assert job_store.dead_letters(job_id=job_id) == []
    assert sorted(k for k, _f, _i in served_points(server.url, "c")) == keys
    assert "ServerUnavailable" in worker.log() and "a new one is starting" in worker.log()  # retried
    assert "ended with exit code -9" in server.log() and "new process is running" in server.log()


def test_a_missing_collection_fails_the_job_saying_how_to_create_it(
    worker_settings: Settings,
    bucket: str,
    job_store: RedisJobStore,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
) -> None:
    start_server(worker_settings)
    start_worker(worker_settings)
    app = create_celery(worker_settings)
    # Straight to the queue with an encoder: the workers cannot create it on the owner.
    spec = JobSpec(source=f"s3://{bucket}/raw/", collections=("absent",), encoder="baseline")
    record = wait_job(job_store, submit_job(job_store, app, JobKind.INGEST, spec), timeout_s=60)
    assert record.state.value == "failed"
    assert record.error is not None and "POST /v1/ingest-jobs" in record.error and "absent" in record.error


def test_owner_index_is_the_catalog_and_bookkeeping_seen_through_the_api(
    worker_settings: Settings, start_server: Callable[..., Server]
) -> None:
    server = start_server(worker_settings)
    api = server.client()
    assert api.post("/v1/collections", json={"name": "seen", "encoder": "baseline"}).status_code == 201
    assert api.put("/v1/aliases/seen-live", json={"collection": "seen"}).status_code == 200
    index = OwnerIndex.for_settings(worker_settings)
    catalog = Catalog(index, worker_settings)
    try:
        entry = catalog.get("seen-live")
        assert entry.name == "seen" and entry.dim == 512 and entry.encoder.name == "baseline"
        assert catalog.aliases() == {"seen-live": "seen"} and catalog.resolve("seen-live") == "seen"
        assert [e.name for e in catalog.list()] == ["seen"]

        source = "s3://bucket"
        ids = [point_id(source, f"k{i}.png", 0) for i in range(600)]
        vectors = np.random.default_rng(0).normal(size=(600, 512)).astype(np.float32)
        payloads = [
            {
                "source": source,
                "key": f"k{i}.png",
                "frame": np.int64(0),
                "etag": "e",
                "size": 7,
                "modality": "CT",
            }
            for i in range(600)
        ]
        index.upsert("seen", ids, vectors, payloads)  # three requests of 256 at most
        assert index.count("seen") == 600
        found = index.retrieve("seen", [ids[0], str(point_id(source, "nope", 0))])
        assert [(p.id, p.payload) for p in found] == [
            (ids[0], {"source": source, "key": "k0.png", "frame": 0, "etag": "e", "size": 7})
        ]
        listed = list(index.scroll("seen", filter=SearchFilter(source=[source]), batch_size=250))
        assert sorted(p.id for p in listed) == sorted(ids)
        index.delete("seen", ids[:10])
        index.delete_by_filter("seen", SearchFilter(source=[source], key=["k10.png", "k11.png"]))
        assert index.count("seen") == 588
        index.optimize("seen")
        assert index.collection_info("seen")["points"] == 588
        with pytest.raises(IndexStoreError, match="not available through the owner"):
            index.search("seen", vectors[0])
    finally:
        index.close()
