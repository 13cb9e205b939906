"""Bucket events through the webhook: dropped, duplicated and out-of-order notifications, then
reconciliation; bucket objects must equal points (REFERENCE (i) T4)."""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from fastapi.testclient import TestClient
from minio import Minio

from core.config import EventSettings, Settings, Subscription
from core.index.edge import EdgeIndex
from core.jobs.redis_store import RedisJobStore
from search_api.app import create_app
from tests.workers.conftest import (
    WEBHOOK_TOKEN,
    Server,
    Worker,
    cli,
    png_bytes,
    stored_etags,
    stored_points,
    upload_images,
)


def minio_event(action: str, bucket: str, key: str) -> dict[str, Any]:
    """A notification body as MinIO's webhook target sends it (one record, URL-encoded key)."""
    name = "s3:ObjectCreated:Put" if action == "created" else "s3:ObjectRemoved:Delete"
    return {
        "EventName": name,
        "Key": f"{bucket}/{key}",
        "Records": [
            {
                "eventVersion": "2.0",
                "eventSource": "minio:s3",
                "awsRegion": "",
                "eventTime": "2026-11-28T00:00:00.000Z",
                "eventName": name,
                "userIdentity": {"principalId": "minio"},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "Config",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    # size/eTag are hints only; the worker stats the object itself
                    "object": {"key": quote_plus(key), "size": 1, "eTag": "stale", "sequencer": "1"},
                },
            }
        ],
    }


@pytest.fixture
def events_settings(worker_settings: Settings, bucket: str) -> Settings:
    return worker_settings.model_copy(
        update={
            "events": EventSettings(
                webhook_token=worker_settings.events.webhook_token,
                subscriptions=[Subscription(bucket=bucket, prefix="raw/", collections=["ev"])],
            )
        }
    )


@pytest.fixture
def api(events_settings: Settings, tmp_path: Path) -> Iterator[TestClient]:
    # The webhook needs no store: this API gets one of its own (`radsearch serve` owns data_dir's).
    index = EdgeIndex(tmp_path / "api-index", events_settings.store)
    with TestClient(create_app(events_settings, index=index)) as client:
        yield client
    index.close()


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}


def test_webhook_refuses_missing_or_wrong_token_and_bad_bodies(api: TestClient, bucket: str) -> None:
    body = minio_event("created", bucket, "raw/x.png")
    assert api.post("/v1/events/s3", json=body).status_code == 401
    assert api.post("/v1/events/s3", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert api.post("/v1/events/s3", json=body, headers={"Authorization": WEBHOOK_TOKEN}).status_code == 401
    bad = api.post("/v1/events/s3", content=b"{not json", headers=_auth())
    assert bad.status_code == 400
    assert api.post("/v1/events/s3", json={"Records": [{"eventName": 1}]}, headers=_auth()).status_code == 400
    # MinIO's connectivity probe has no records: accepted, nothing to do
    probe = api.post("/v1/events/s3", json={}, headers=_auth())
    assert probe.status_code == 200 and probe.json()["received"] == 0
    ignored = api.post("/v1/events/s3", json=minio_event("created", bucket, "other/x.png"), headers=_auth())
    assert ignored.json()["ignored"] == 1
    # an event of another kind on a subscribed key is counted, as ignored (it was left out of the counts)
    accessed = minio_event("created", bucket, "raw/x.png")
    accessed["Records"][0]["eventName"] = "s3:ObjectAccessed:Get"
    counted = api.post("/v1/events/s3", json=accessed, headers=_auth()).json()
    assert (counted["received"], counted["ignored"], counted["enqueued"], counted["jobs"]) == (1, 1, 0, [])


def test_webhook_disabled_without_token(worker_settings: Settings, tmp_path: Path, bucket: str) -> None:
    settings = worker_settings.model_copy(update={"events": EventSettings()})
    index = EdgeIndex(tmp_path / "api-index", settings.store)
    with TestClient(create_app(settings, index=index)) as client:
        response = client.post("/v1/events/s3", json={}, headers=_auth())
    index.close()
    assert response.status_code == 503


def _wait_idle(store: RedisJobStore, job_ids: set[str], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = [store.get(j, with_items=False) for j in job_ids]
        if all(r is not None and r.finished for r in records):
            return
        time.sleep(0.2)
    raise TimeoutError(f"events jobs not idle: {[store.get(j, with_items=False) for j in job_ids]}")


@pytest.mark.slow
def test_events_dropped_duplicated_out_of_order_then_reconcile(
    events_settings: Settings,
    api: TestClient,
    minio_client: Minio,
    bucket: str,
    job_store: RedisJobStore,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
) -> None:
    rng = random.Random(7)
    server = start_server(events_settings, wait=False)  # the embedded store's owner
    worker = start_worker(events_settings, "--pool", "threads", "--concurrency", "2")
    server.wait_ready()
    # The subscribed collection exists before events arrive (reconcile creates it on the owner, empty).
    created = cli(
        events_settings, "reconcile", f"s3://{bucket}/raw/", "--collection", "ev", "--encoder", "baseline"
    )
    assert created.returncode == 0, created.stderr[-2000:]

    keys = [f"raw/{i:03d} scan+{i}.png" for i in range(80)]  # spaces and '+' survive URL-encoding
    dropped_total = 0
    duplicated_total = 0
    job_ids: set[str] = set()

    def deliver(events: list[tuple[str, str]], must_drop: list[int]) -> None:
        nonlocal dropped_total, duplicated_total
        dropped = set(rng.sample(range(len(events)), len(events) // 10)) | set(must_drop)
        kept = [e for i, e in enumerate(events) if i not in dropped]
        duplicated = rng.sample(kept, len(events) // 10)
        delivered = kept + duplicated
        rng.shuffle(delivered)  # out of order: a removal may arrive before its creation
        for action, key in delivered:
            response = api.post("/v1/events/s3", json=minio_event(action, bucket, key), headers=_auth())
            assert response.status_code == 200, response.text
            job_ids.update(response.json()["jobs"])
        dropped_total += len(dropped)
        duplicated_total += len(duplicated)
        _wait_idle(job_store, job_ids)

    # Phase 1: uploads.
    upload_images(minio_client, bucket, keys)
    deliver([("created", k) for k in keys], must_drop=[0])
    # Phase 2: deletions, and re-uploads of deleted keys with new content.
    removed = rng.sample(keys, 12)
    for key in removed:
        minio_client.remove_object(bucket, key)
    recreated = removed[:3]
    for i, key in enumerate(recreated):
        data = png_bytes(5000 + i)
        minio_client.put_object(bucket, key, io.BytesIO(data), len(data))
    events = [("removed", k) for k in removed] + [("created", k) for k in recreated]
    # lose one removal of a gone object (stale points) and one re-upload (a changed object)
    deliver(events, must_drop=[3, len(removed)])

    result = cli(events_settings, "reconcile", f"s3://{bucket}/raw/", "--collection", "ev", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    drift = json.loads(result.stdout.strip().splitlines()[-1])["drift"]["ev"]
    worker.stop()

    bucket_etags = {
        str(o.object_name): (o.etag or "").strip('"')
        for o in minio_client.list_objects(bucket, prefix="raw/", recursive=True)
    }
    bucket_keys = set(bucket_etags)
    points = stored_points(events_settings, "ev")
    # Keys alone would not see a re-upload whose new content was never embedded (the point of the
    # old content stays under the same key): every point must carry its object's current ETag.
    etags = stored_etags(events_settings, "ev")
    stale = sorted(k for k, tags in etags.items() if k in bucket_etags and tags != {bucket_etags[k]})
    point_keys = [k for k, _frame, _id in points]
    diff = len(bucket_keys.symmetric_difference(point_keys)) + (len(point_keys) - len(set(point_keys)))
    line = (
        f"dropped={dropped_total} duplicated={duplicated_total} bucket_objects={len(bucket_keys)} "
        f"qdrant_points={len(points)} diff={diff} reconcile_missing={drift['missing']} "
        f"reconcile_changed={drift['changed']} reconcile_gone={drift['gone']} stale_etag={len(stale)}"
    )
    ok = diff == 0 and len(points) == len(bucket_keys) and not stale
    print(f"\nevents: {line} {'PASS' if ok else 'FAIL'}")
    assert ok, line
