"""While the store's killed process is replaced, the API answers 503 ``store_unavailable`` with a
message, and logs it as one warning every few seconds, not a line per request."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from core.config import ApiSettings, RuntimeSettings, SecuritySettings, Settings
from core.index.factory import open_index
from core.index.hosted import HostedEdgeIndex
from search_api import create_app
from tests.search_api.test_api import COLLECTION, populate


def test_searches_during_a_store_restart_answer_503_and_log_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(hash_key=SecretStr("test-hash-key")),
    )
    index = open_index(settings, child_process=True)  # as `radsearch serve` opens it
    try:
        assert isinstance(index, HostedEdgeIndex)
        corpus = populate(index, settings, tmp_path / "images")
        point = corpus.ids("circles")[0]
        search = f"/v1/collections/{COLLECTION}/search"
        with TestClient(create_app(settings, index=index)) as client:
            assert client.post(search, json={"point_id": point}).status_code == 200
            first = index.process_id
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                os.kill(first, signal.SIGKILL)
                killed_at = time.monotonic()
                while (ready := client.get("/readyz")).status_code == 200:  # the watch has not seen it yet
                    assert time.monotonic() < killed_at + 10
                assert ready.json() == {"status": "store restarting"}, ready.json()
                answers: list[int] = []
                deadline = time.monotonic() + 60
                while not answers or answers[-1] != 200:
                    assert time.monotonic() < deadline, "searches still refused 60 s after the kill"
                    response = client.post(search, json={"point_id": point, "limit": 3})
                    answers.append(response.status_code)
                    if response.status_code == 503:
                        error = response.json()["error"]
                        assert error["code"] == "store_unavailable"
                        assert "retry in a few seconds" in error["message"]
                        assert response.headers["retry-after"] == "2"
            refused = answers.count(503)
            assert client.get("/readyz").json() == {"status": "ok"}
            assert set(answers) <= {200, 503} and refused >= 2, answers  # a restart takes over a second
            unavailable = [r for r in caplog.records if "store_unavailable" in r.getMessage()]
            most = 1 + int((time.monotonic() - killed_at) // 5)  # one line per 5 s at most
            assert 1 <= len(unavailable) <= most < refused, [r.getMessage() for r in unavailable]
            assert all(r.levelno == logging.WARNING for r in unavailable)
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1 and "ended with exit code -9" in errors[0], errors
            assert index.process_id != first
    finally:
        index.close()


def test_an_owner_run_ingest_goes_on_after_the_store_process_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store's process is killed while the server runs an ingest job: the job waits for the new
    process and runs again (the objects it had stored are skipped), instead of failing."""
    settings = Settings(
        data_dir=tmp_path / "data",
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(hash_key=SecretStr("test-hash-key")),
        api=ApiSettings(ingest_roots=[tmp_path / "archive"]),
    )
    archive = tmp_path / "archive"
    archive.mkdir()
    rng = np.random.default_rng(3)
    for i in range(240):
        Image.fromarray((rng.random((48, 48)) * 255).astype(np.uint8)).save(archive / f"{i:03d}.png")
    index = open_index(settings, child_process=True)
    try:
        assert isinstance(index, HostedEdgeIndex)
        with TestClient(create_app(settings, index=index)) as client, caplog.at_level(logging.WARNING):
            body = {"executor": "owner", "source": str(archive), "collections": ["big"]}
            created = client.post("/v1/ingest-jobs", json={**body, "encoder": "baseline", "batch_size": 8})
            assert created.status_code == 202, created.text
            job_id = created.json()["id"]
            deadline = time.monotonic() + 60
            while client.get(f"/v1/ingest-jobs/{job_id}").json()["counts"]["objects_done"] < 8:
                assert time.monotonic() < deadline, "no batch done after 60 s"
                time.sleep(0.02)
            os.kill(index.process_id, signal.SIGKILL)
            while (job := client.get(f"/v1/ingest-jobs/{job_id}").json())["state"] not in ("done", "failed"):
                assert time.monotonic() < deadline + 60, job
                time.sleep(0.2)
            assert job["state"] == "done", job.get("error")
            assert job["summary"]["frames_indexed"] + job["summary"]["skipped"] == 240, job["summary"]
            assert job["summary"]["skipped"] >= 8  # stored before the kill, not embedded again
            assert index.count("big") == 240
        assert any("the job runs again once a new one answers" in r.getMessage() for r in caplog.records)
    finally:
        index.close()
