"""``radsearch worker --metrics-port``: what the prefork pool's processes record reaches the port."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from minio import Minio
from prometheus_client.parser import text_string_to_metric_families

from core.config import Settings
from tests.conftest import free_port
from tests.workers.conftest import Server, Worker, upload_images, wait_api_job


def _ingest_images(text: str, collection: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "radsearch_ingest_images_total" and sample.labels == {"collection": collection}:
                return sample.value
    return 0.0


def test_prefork_children_report_through_the_worker_port(
    worker_settings: Settings,
    minio_client: Minio,
    bucket: str,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prom"))
    port = free_port()
    server = start_server(worker_settings, wait=False)
    worker = start_worker(worker_settings, "--pool", "prefork", "--metrics-port", str(port), wait=False)
    upload_images(minio_client, bucket, [f"metered/{i:02d}.png" for i in range(6)])
    server.wait_ready()
    worker.wait_ready()
    api = server.client()
    created = api.post(
        "/v1/ingest-jobs",
        json={"source": f"s3://{bucket}/metered/", "collections": ["metered"], "encoder": "baseline"},
    )
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert wait_api_job(api, job_id)["state"] == "done"
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    # The batch ran in a pool process, not in the worker's main process that serves the port.
    assert _ingest_images(text, "metered") == 6
    assert 'radsearch_ingest_stage_seconds_count{stage="embed"}' in text


def test_prefork_without_a_multiprocess_folder_is_refused(
    worker_settings: Settings, start_worker: Callable[..., Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    worker = start_worker(worker_settings, "--metrics-port", str(free_port()), wait=False)
    assert worker.proc is not None
    assert worker.proc.wait(timeout=60) == 2
    assert "PROMETHEUS_MULTIPROC_DIR" in worker.log_path.read_text()


def test_request_id_reaches_the_worker_log_lines(
    worker_settings: Settings,
    minio_client: Minio,
    bucket: str,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
) -> None:
    # JSON log lines: the id a client sent with the job's request is on the lines the plan and
    # embed tasks log in the worker (prefork pool processes), and comes back in the response.
    settings = worker_settings.model_copy(update={"log_format": "json"})
    server = start_server(settings, wait=False)
    worker = start_worker(settings, wait=False)
    upload_images(minio_client, bucket, [f"traced/{i:02d}.png" for i in range(4)])
    server.wait_ready()
    worker.wait_ready()
    api = server.client()
    created = api.post(
        "/v1/ingest-jobs",
        json={"source": f"s3://{bucket}/traced/", "collections": ["traced"], "encoder": "baseline"},
        headers={"X-Request-ID": "trace-0042"},
    )
    assert created.status_code == 202, created.text
    assert created.headers["x-request-id"] == "trace-0042"
    job_id = created.json()["id"]
    wait_api_job(api, job_id)
    lines = [json.loads(line) for line in worker.log_path.read_text().splitlines() if line.startswith("{")]
    traced = [line for line in lines if line["request_id"] == "trace-0042"]
    assert traced, lines[-20:]
    assert {line["logger"] for line in traced} >= {"workers.tasks"}
    # A request id that is not a plain token is replaced, never echoed into logs.
    replaced = api.get("/v1/collections", headers={"X-Request-ID": "a b;c=" + "x" * 80})
    assert "a b" not in replaced.headers["x-request-id"] and len(replaced.headers["x-request-id"]) == 32
