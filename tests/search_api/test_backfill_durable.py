"""Backfills that survive their server (issue 14, item 8): a real ``radsearch serve`` killed with
SIGKILL mid-backfill, restarted on the same data dir; moto's S3 server as the backfill's source."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from minio import Minio

from core.config import IngestSettings, Settings
from core.jobs import JobState
from core.jobs.sqlite_store import read_owner_jobs
from tests.workers.conftest import Server, cli, start_server, upload_images

__all__ = ["start_server"]  # the fixture, used by name

_OBJECTS = 32


def _wait(
    client: httpx.Client, path: str, until: Callable[[dict[str, Any]], bool], timeout_s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.get(path)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if until(body):
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: {body}")
        time.sleep(0.02)


def test_a_backfill_survives_kill_9_and_the_alias_waits_for_it(
    settings: Settings,
    minio_client: Minio,
    bucket: str,
    start_server: Callable[..., Server],
    tmp_path: Path,
) -> None:
    """Before: a backfill lived only in the API process's memory. Killing the server mid-backfill
    lost the job (``GET /v1/backfill-jobs/{id}`` 404 after the restart), and ``PUT /v1/aliases/...``
    switched users onto the partial collection (224 of 600). Now the job is in the data dir: the
    restarted owner resumes it to the end, and the alias switch is refused (409 naming the job and
    its progress) while it is incomplete, unless forced."""
    settings = settings.model_copy(update={"ingest": IngestSettings(batch_size=4, decode_workers=1)})
    keys = [f"img/{i:04d}.png" for i in range(_OBJECTS)]
    upload_images(minio_client, bucket, keys)
    server = start_server(settings)
    server.create_collection("dst")
    with server.client() as client:
        created = client.post("/v1/collections/dst/backfill", json={"from": f"s3://{bucket}"})
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        running = _wait(
            client,
            f"/v1/backfill-jobs/{job_id}",
            lambda job: job["counts"]["objects_done"] > 0 or job["state"] in ("done", "failed"),
            60,
        )
        assert running["state"] == "running", running
        refused = client.put("/v1/aliases/live", json={"collection": "dst"})
        forced = client.put("/v1/aliases/preview", json={"collection": "dst", "force": True})
    os.killpg(server.pid, signal.SIGKILL)
    assert server.proc is not None
    server.proc.wait(timeout=10)

    assert refused.status_code == 409, refused.text
    assert f"backfill {job_id} is running (" in refused.json()["detail"]
    assert f"/{_OBJECTS})" in refused.json()["detail"]
    assert forced.status_code == 200, forced.text
    # The kill hit the backfill in flight: the durable record says so.
    store = read_owner_jobs(settings)
    assert store is not None
    try:
        killed = store.get(job_id)
    finally:
        store.close()
    assert killed is not None and killed.state != JobState.DONE, killed
    assert killed.counts["objects_done"] < _OBJECTS

    # The command line, without a server, finds the job and refuses the switch too.
    shown = cli(settings, "jobs", "show", job_id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["state"] in ("running", "planning")
    alias = cli(settings, "collections", "alias", "live", "dst")
    assert alias.returncode != 0
    assert f"backfill {job_id} is running" in alias.stderr

    restarted = start_server(settings)
    with restarted.client() as client:
        done = _wait(
            client, f"/v1/backfill-jobs/{job_id}", lambda job: job["state"] in ("done", "failed"), 120
        )
        assert done["state"] == "done", done
        assert done["resumed"] == 1
        resumed_line = f"backfill job {job_id} resumed: the previous owner of the store left it unfinished"
        assert resumed_line in restarted.log_path.read_text()  # shown without -v
        assert done["counts"]["failed"] == 0
        detail = client.get("/v1/collections/dst").json()
        assert detail["points"] == _OBJECTS  # idempotent re-run: no duplicates, nothing missing
        switched = client.put("/v1/aliases/live", json={"collection": "dst"})
        assert switched.status_code == 200, switched.text
