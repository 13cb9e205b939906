"""A collection's record says how much of it is indexed, and a backfill leaves its target indexed:
``GET /v1/collections/{name}`` reports indexed == points when the backfill job ends."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from core.config import IngestSettings, RuntimeSettings, SecuritySettings, Settings, StoreSettings
from tests.search_api.test_api import COLLECTION, PER_CLASS, Corpus

TARGET = "indexed"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # 16 KB of 512-d vectors: 8 vectors need an index. No background indexing, so what indexes the
    # target is the backfill itself.
    return Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(hash_key=SecretStr("test-hash-key")),
        ingest=IngestSettings(batch_size=8, decode_workers=2),
        store=StoreSettings(full_scan_threshold_kb=16, auto_index=False),
    )


def _indexing(client: TestClient, name: str) -> dict[str, Any]:
    response = client.get(f"/v1/collections/{name}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["indexing"]["points"] == body["points"]
    indexing: dict[str, Any] = body["indexing"]
    return indexing


def test_a_backfilled_collection_is_indexed_when_its_job_ends(client: TestClient, corpus: Corpus) -> None:
    total = 4 * PER_CLASS
    # The source collection was written in one upsert and never optimized: all of it unindexed.
    source = _indexing(client, COLLECTION)
    assert source == {
        "status": "yellow",
        "points": total,
        "indexed_vectors": 0,
        "unindexed_vectors": total,
        "optimizing": False,
        "segments": source["segments"],
    }
    created = client.post("/v1/collections", json={"name": TARGET, "encoder": "baseline"})
    assert created.status_code == 201, created.text
    assert created.json()["indexing"]["points"] == 0

    job = client.post(f"/v1/collections/{TARGET}/backfill", json={"from": COLLECTION}).json()
    deadline = time.monotonic() + 120
    while job["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
        job = client.get(f"/v1/backfill-jobs/{job['id']}").json()
    assert job["state"] == "done", job
    assert job["counts"]["indexed_frames"] == total

    indexing = _indexing(client, TARGET)
    assert indexing["points"] == indexing["indexed_vectors"] == total
    assert indexing["unindexed_vectors"] == 0 and indexing["status"] == "green"
    assert indexing["optimizing"] is False
