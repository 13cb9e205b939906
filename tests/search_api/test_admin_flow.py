"""Collections administration end to end over HTTP: create collection B for a second encoder,
backfill it from A while searches on A keep answering, switch an alias, search through it, compare
encoders side by side, roll back, drop."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from qdrant_client import QdrantClient

from core.catalog import Catalog
from core.config import IngestSettings, RuntimeSettings, SecuritySettings, Settings
from core.encoders import get_spec
from core.errors import ConfigError
from core.index.base import VectorIndex
from core.index.factory import open_index
from search_api.routes.compare import reciprocal_rank_fusion
from tests.search_api.test_api import COLLECTION, PER_CLASS, Corpus, png_bytes

pytestmark = pytest.mark.filterwarnings(
    "ignore:Payload indexes have no effect:UserWarning", "ignore:Local mode performs exact:UserWarning"
)

B = "resnet-tiny"
ALIAS = "current"


def tiny_resnet_spec() -> dict[str, Any]:
    """A full spec (not a registry name): ResNet with a small config, random weights."""
    spec = get_spec("resnet50").model_dump(mode="json")
    spec.update(
        name="resnet-tiny",
        model_overrides={"embedding_size": 8, "hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
        dim=64,
        input_size=64,
        resize="squash",
        resize_size=None,
        weights="random",
    )
    return spec


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(hash_key=SecretStr("test-hash-key")),
        ingest=IngestSettings(batch_size=4, decode_workers=2),  # several batches: progress is visible
    )


def _search(client: TestClient, name: str, **body: Any) -> Any:
    response = client.post(f"/v1/collections/{name}/search", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _wait_for_job(client: TestClient, job_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/backfill-jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"backfill job {job_id} did not finish")


def test_bad_specs_are_400_and_leave_nothing_behind(client: TestClient) -> None:
    wrong_dim = {**tiny_resnet_spec(), "dim": 63}
    cases: list[tuple[Any, str]] = [
        ("resnet5O", "did you mean"),
        ({**tiny_resnet_spec(), "input_size": 3}, "input_size"),
        ({**tiny_resnet_spec(), "colour": "red"}, "colour"),
        (wrong_dim, "dim 63"),
        ({**tiny_resnet_spec(), "checkpoint": "acme/unknown"}, "no shipped architecture"),
    ]
    for encoder, needle in cases:
        response = client.post("/v1/collections", json={"name": "broken", "encoder": encoder})
        assert response.status_code == 400, response.text
        assert needle in response.json()["detail"]
    # weights that cannot be had here: a failed dependency (424), the request itself is well-formed
    missing = {**tiny_resnet_spec(), "weights": "/nonexistent/weights.safetensors"}
    response = client.post("/v1/collections", json={"name": "broken", "encoder": missing})
    assert response.status_code == 424, response.text
    assert "does not exist" in response.json()["detail"]
    assert client.get("/v1/collections/broken").status_code == 404
    assert "broken" not in [c["name"] for c in client.get("/v1/collections").json()["collections"]]
    taken = client.post("/v1/collections", json={"name": COLLECTION, "encoder": "baseline"})
    assert taken.status_code == 409


def test_zero_downtime_model_upgrade(client: TestClient, corpus: Corpus, index: VectorIndex) -> None:
    a_ids = list(corpus.class_of)
    query_id = corpus.ids("circles")[0]

    # Create B for a second encoder, float32 only (not the int8 default): probed, payload indexes,
    # spec recorded.
    created = client.post(
        "/v1/collections", json={"name": B, "encoder": tiny_resnet_spec(), "quantization": "none"}
    )
    assert created.status_code == 201, created.text
    detail = created.json()
    assert created.headers["location"] == f"/v1/collections/{B}"
    assert (detail["dim"], detail["points"], detail["quantization"]) == (64, 0, "none")
    assert detail["spec"]["checkpoint"] == "microsoft/resnet-50" and detail["spec"]["output"] == "pooled"
    assert detail["spec"]["preprocess_version"] == "1" and detail["weights"] == "random"
    assert detail["indexing"]["status"] in ("green", "yellow")

    # The alias serves A first.
    switched = client.put(f"/v1/aliases/{ALIAS}", json={"collection": COLLECTION})
    assert switched.json() == {"alias": ALIAS, "collection": COLLECTION, "previous": None}
    assert _search(client, ALIAS, point_id=query_id, limit=3)["collection"] == COLLECTION

    # A "concurrent ingest" already wrote one object into B: the backfill must not overwrite it.
    concurrent_id = a_ids[5]
    marker = np.zeros((1, 64), np.float32)
    marker[0, 0] = 1.0
    index.upsert(B, [concurrent_id], marker, [{"key": "written-by-ingest", "source": "elsewhere"}])

    # Searches on A keep answering during the backfill.
    statuses: list[int] = []
    stop = threading.Event()

    def search_loop() -> None:
        while not stop.is_set():
            response = client.post(
                f"/v1/collections/{COLLECTION}/search", json={"point_id": query_id, "limit": 5}
            )
            statuses.append(response.status_code)

    searcher = threading.Thread(target=search_loop)
    searcher.start()
    try:
        started = client.post(f"/v1/collections/{B}/backfill", json={"from": ALIAS})
        assert started.status_code == 202, started.text
        job = started.json()
        assert job["kind"] == "backfill" and job["collections"] == [B] and job["source"] == ALIAS
        assert started.headers["location"] == f"/v1/backfill-jobs/{job['id']}"
        seen_running = False
        deadline = time.monotonic() + 120
        while job["state"] not in ("done", "failed") and time.monotonic() < deadline:
            job = client.get(f"/v1/backfill-jobs/{job['id']}").json()
            seen_running |= job["state"] in ("planning", "running")
            time.sleep(0.05)
    finally:
        stop.set()
        searcher.join(timeout=30)
    assert job["state"] == "done", job
    counts = job["counts"]
    total = 4 * PER_CLASS
    assert counts["listed"] == total and counts["objects_done"] == total
    assert counts["batches_done"] == counts["batches_total"] == total // 4
    assert counts["failed"] == 0 and job["throughput"]["objects_per_s"]
    assert len(statuses) >= 3 and set(statuses) == {200}, statuses[:20]

    # B has every image, with A's labels and ids; the concurrent point is untouched.
    assert client.get(f"/v1/collections/{B}").json()["points"] == total
    kept = client.get(f"/v1/collections/{B}/points/{concurrent_id}").json()
    assert kept["payload"]["key"] == "written-by-ingest"
    moved = client.get(f"/v1/collections/{B}/points/{query_id}").json()["payload"]
    original = client.get(f"/v1/collections/{COLLECTION}/points/{query_id}").json()["payload"]
    assert {k: moved[k] for k in ("modality", "anatomy", "pathology", "key", "source")} == {
        k: original[k] for k in ("modality", "anatomy", "pathology", "key", "source")
    }
    assert moved["encoder"] == "resnet-tiny@random"

    # A second backfill is a no-op: everything is present at its ETag.
    again = _wait_for_job(
        client, client.post(f"/v1/collections/{B}/backfill", json={"from": COLLECTION}).json()["id"]
    )
    assert again["state"] == "done" and again["counts"]["indexed_frames"] == 1  # only the concurrent one

    # Switch the alias atomically; search through it (stored id, uploaded image), then roll back.
    switched = client.put(f"/v1/aliases/{ALIAS}", json={"collection": B})
    assert switched.json()["previous"] == COLLECTION
    assert _search(client, ALIAS, point_id=query_id, limit=3)["collection"] == B
    upload = client.post(
        f"/v1/collections/{ALIAS}/search/image",
        files={"file": ("q.png", png_bytes(corpus.frames[query_id]), "image/png")},
        data={"limit": "3"},
    )
    assert upload.status_code == 200 and upload.json()["collection"] == B
    assert upload.json()["hits"][0]["id"] == query_id
    assert client.get(f"/v1/collections/{ALIAS}").json()["name"] == B
    assert client.get(f"/v1/collections/{B}").json()["aliases"] == [ALIAS]

    no_text = client.post(f"/v1/collections/{ALIAS}/search", json={"text": "pleural effusion"})
    assert no_text.status_code == 400 and "no text tower" in no_text.json()["detail"]

    refused = client.delete(f"/v1/collections/{B}")
    assert refused.status_code == 409 and ALIAS in refused.json()["detail"]

    rolled_back = client.put(f"/v1/aliases/{ALIAS}", json={"collection": COLLECTION})
    assert rolled_back.json()["previous"] == B
    assert _search(client, ALIAS, point_id=query_id, limit=3)["collection"] == COLLECTION
    assert client.get("/v1/aliases").json() == {"aliases": [{"alias": ALIAS, "collection": COLLECTION}]}

    # Compare side by side: the query image is each collection's best hit and the fused winner.
    compared = client.post(
        "/v1/search/compare",
        files={"file": ("q.png", png_bytes(corpus.frames[query_id]), "image/png")},
        data={"collections": [ALIAS, B], "limit": "5", "fuse": "true"},
    )
    assert compared.status_code == 200, compared.text
    body = compared.json()
    assert [r["collection"] for r in body["results"]] == [ALIAS, B]
    assert [r["encoder"] for r in body["results"]] == ["baseline", "resnet-tiny"]
    assert all(r["hits"][0]["id"] == query_id for r in body["results"])
    assert body["fused"][0]["id"] == query_id and body["fused"][0]["ranks"] == {ALIAS: 1, B: 1}

    # The old model's collection is dropped once nothing points at it.
    dropped = client.delete(f"/v1/collections/{B}")
    assert dropped.status_code == 200 and dropped.json()["trashed"] is True, dropped.text
    assert client.get(f"/v1/collections/{B}").status_code == 404
    assert client.delete(f"/v1/aliases/{ALIAS}").status_code == 204
    assert client.get(f"/v1/collections/{ALIAS}").status_code == 404


def test_backfill_of_unknown_origin_or_target(client: TestClient) -> None:
    assert client.post("/v1/collections/nope/backfill", json={"from": COLLECTION}).status_code == 404
    assert client.post(f"/v1/collections/{COLLECTION}/backfill", json={"from": "nope"}).status_code == 404
    local = client.post(f"/v1/collections/{COLLECTION}/backfill", json={"from": "/etc"})
    assert local.status_code == 400 and "s3://" in local.json()["detail"]
    assert client.get("/v1/backfill-jobs/not-a-uuid").status_code == 404


def test_text_search_with_a_text_tower(client: TestClient) -> None:
    created = client.post(
        "/v1/collections", json={"name": "clip", "encoder": "clip-vit-b16", "weights": "random"}
    )
    assert created.status_code == 201, created.text
    assert created.json()["text_search"] is True
    response = client.post("/v1/collections/clip/search", json={"text": "pleural effusion", "limit": 3})
    assert response.status_code == 200 and response.json()["hits"] == []
    assert client.delete("/v1/collections/clip").status_code == 200


def test_reciprocal_rank_fusion_orders_by_summed_reciprocal_ranks() -> None:
    from core.index.base import Hit

    def hits(*ids: str) -> list[Hit]:
        return [Hit(id=i, score=1.0, payload={}) for i in ids]

    fused = reciprocal_rank_fusion({"a": hits("x", "y", "z"), "b": hits("y", "w")}, k=60)
    assert [f.id for f in fused] == ["y", "x", "w", "z"]
    assert fused[0].score == pytest.approx(1 / 62 + 1 / 61)
    assert fused[0].ranks == {"a": 2, "b": 1}


@pytest.mark.parametrize("backend", ["edge", "qdrant-memory"])
def test_catalog_aliases_on_both_backends(backend: str, tmp_path: Path) -> None:
    from core.index.server import QdrantServerIndex

    settings = Settings(data_dir=tmp_path, runtime=RuntimeSettings(device="cpu", dtype="float32"))
    index: VectorIndex = (
        open_index(settings)
        if backend == "edge"
        else QdrantServerIndex(QdrantClient(":memory:"), settings.store)
    )
    try:
        catalog = Catalog(index, settings)
        catalog.create("one", get_spec("baseline"))
        catalog.create("two", get_spec("baseline"))
        assert catalog.set_alias("live", "one") is None
        assert catalog.get("live").name == "one"
        assert catalog.set_alias("live", "two") == "one"
        assert catalog.resolve("live") == "two" and catalog.aliases() == {"live": "two"}
        with pytest.raises(ConfigError, match="is a collection"):
            catalog.set_alias("one", "two")
        with pytest.raises(ConfigError, match="is an alias"):
            catalog.create("live", get_spec("baseline"))
        with pytest.raises(ConfigError, match="target of alias live"):
            catalog.drop("two")
        # insert-only writes never overwrite
        vec = np.ones((1, 512), np.float32)
        pid = "00000000-0000-0000-0000-000000000001"
        index.upsert("one", [pid], vec, [{"key": "first"}])
        index.upsert("one", [pid], -vec, [{"key": "second"}], insert_only=True)
        assert index.retrieve("one", [pid])[0].payload["key"] == "first"
        catalog.delete_alias("live")
        catalog.drop("two")
        assert catalog.aliases() == {} and [e.name for e in catalog.list()] == ["one"]
    finally:
        index.close()
