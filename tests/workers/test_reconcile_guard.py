"""Reconcile, with the real parts: ``radsearch serve`` owning the embedded store, a Celery worker,
Redis and an S3 bucket (issue 14, items 1 and 3). The command line runs in process."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from minio import Minio

from core.config import Settings
from radsearch.commands.main import main
from tests.ingest.test_prune import dicom_bytes
from tests.workers.conftest import Server, Worker, stored_points, upload_images, use_settings_env

pytestmark = pytest.mark.slow


def test_reconcile_guard_dry_run_and_sampled_frames(
    worker_settings: Settings,
    minio_client: Minio,
    bucket: str,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Reproduced first: (1) a 70-frame series (64 sampled frames stored) was "changed" and
    re-embedded on every reconcile; (3) reconcile against an emptied bucket deleted the whole
    collection, with no dry run, threshold or confirmation. Now a second reconcile finds nothing
    changed; --dry-run lists the keys and changes nothing; deleting more than 10 % or everything
    is refused (exit 2, the job failed naming the numbers, nothing deleted); --force deletes,
    reporting each key."""
    use_settings_env(monkeypatch, worker_settings)
    server = start_server(worker_settings, wait=False)
    keys = [f"raw/{i:02d}.png" for i in range(9)]
    upload_images(minio_client, bucket, keys)
    series = dicom_bytes(7, frames=70, modality="US", size=16)
    minio_client.put_object(bucket, "raw/long.dcm", io.BytesIO(series), len(series))
    server.wait_ready()
    start_worker(worker_settings, "--pool", "threads", "--concurrency", "2")
    source = f"s3://{bucket}/raw/"

    def reconcile(*extra: str) -> tuple[int, dict[str, Any]]:
        code = main(["reconcile", source, "--collection", "rg", "--json", *extra])
        job: dict[str, Any] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        return code, job

    code, job = reconcile("--encoder", "baseline")
    assert code == 0 and job["drift"]["rg"]["missing"] == 10, job
    assert len(stored_points(worker_settings, "rg")) == 9 + 64
    # the workers' points reach the owner with the count reconcile compares with
    with server.client() as client:
        body = {"filter": {"key": ["raw/long.dcm"]}, "limit": 100}
        page = client.post("/v1/collections/rg/points/scroll", json=body).json()["points"]
    assert len(page) == 64 and {p["frames_sampled"] for p in page} == {64}
    code, job = reconcile()
    assert code == 0 and (job["drift"]["rg"]["changed"], job["drift"]["rg"]["missing"]) == (0, 0), job
    assert job["counts"]["queued"] == 0  # nothing re-embedded: the long series is not "changed"

    for key in keys[:2]:  # 2 of 10 objects: beyond 0.1
        minio_client.remove_object(bucket, key)
    code, job = reconcile("--dry-run")
    drift = job["drift"]["rg"]
    assert code == 0 and drift["dry_run"] is True and drift["deleted_items"] == keys[:2]
    assert "2 of the 10 objects" in drift["would_refuse"]
    assert len(stored_points(worker_settings, "rg")) == 9 + 64  # nothing changed
    code, job = reconcile()
    assert code == 2 and job["state"] == "failed" and "2 of the 10 objects" in job["error"]
    assert job["drift"]["rg"]["refused"] is True
    assert len(stored_points(worker_settings, "rg")) == 9 + 64

    for obj in minio_client.list_objects(bucket, prefix="raw/", recursive=True):
        minio_client.remove_object(bucket, obj.object_name)
    code, job = reconcile()
    assert code == 2 and "lists no objects" in job["error"] and "all 10 objects" in job["error"]
    assert len(stored_points(worker_settings, "rg")) == 9 + 64  # the failure: all of it was deleted
    code, job = reconcile("--force")
    assert code == 0 and job["counts"]["deleted"] == 10
    assert job["drift"]["rg"]["deleted_items"] == sorted([*keys, "raw/long.dcm"])
    assert stored_points(worker_settings, "rg") == []
