"""``GET /metrics``: the counters move after a search and an ingest, label values are templates and
names only, and keys on, only a ``metrics`` or ``admin`` key reads it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from core.api_keys import hash_api_key
from core.catalog import Catalog
from core.config import ApiKeyEntry, RuntimeSettings, SecuritySettings, Settings
from core.encoders import get_spec
from core.index.base import VectorIndex
from ingest.inline import IngestOptions
from radsearch.services import ingest_source
from search_api import create_app
from tests.search_api.test_api import COLLECTION, Corpus, make_frame, png_bytes

KEYS = {role: f"{role}-key-0123456789" for role in ("reader", "metrics", "admin")}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(hash_key=SecretStr("test-hash-key")),
    )


def samples(client: TestClient, **headers: str) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_search_moves_the_route_and_search_metrics(client: TestClient, corpus: Corpus) -> None:
    before = samples(client)
    point = next(iter(corpus.class_of))
    filtered = {"modality": ["CT"], "anatomy": ["chest"]}
    for body in ({"point_id": point}, {"point_id": point, "filter": filtered}):
        assert client.post(f"/v1/collections/{COLLECTION}/search", json=body).status_code == 200
    after = samples(client)
    route = {"method": "POST", "route": "/v1/collections/{name}/search", "status": "200"}
    assert grew(before, after, "radsearch_http_request_duration_seconds_count", **route) == 2
    for kind in ("none", "anatomy+modality"):
        labels = {"collection": COLLECTION, "filter_kind": kind}
        assert grew(before, after, "radsearch_searches_total", **labels) == 1
        assert grew(before, after, "radsearch_search_seconds_count", **labels) == 1
    # A 404 is timed under its route template: the raw path (a collection name, an id) never is.
    client.get(f"/v1/collections/{COLLECTION}/points/not-a-point-id")
    text = client.get("/metrics").text
    assert "not-a-point-id" not in text
    assert 'route="/v1/collections/{name}/points/{point_id}",status="404"' in text
    # The live gauges: free disk, the queue and the workers (Redis answers here).
    found = samples(client)
    assert value(found, "radsearch_store_disk_free_bytes") > 0
    assert value(found, "radsearch_scrape_source_up", source="redis") == 1
    assert ("radsearch_queue_depth", frozenset({("queue", "embed")})) in found


def test_ingest_moves_the_stage_and_image_metrics(
    client: TestClient, index: VectorIndex, settings: Settings, tmp_path: Path
) -> None:
    import numpy as np

    rng = np.random.default_rng(3)
    folder = tmp_path / "more"
    folder.mkdir()
    for i in range(5):
        (folder / f"extra_{i}.png").write_bytes(png_bytes(make_frame("noise", rng)))
    catalog = Catalog(index, settings)
    catalog.create("metered", get_spec("baseline"))
    before = samples(client)
    report = ingest_source(catalog, settings, str(folder), ["metered"], IngestOptions(), progress=False)
    assert report.frames_indexed == 5
    after = samples(client)
    assert grew(before, after, "radsearch_ingest_images_total", collection="metered") == 5
    assert grew(before, after, "radsearch_ingest_objects_total", outcome="indexed") == 5
    for stage, per in (("fetch", 5), ("decode", 5), ("embed", 1), ("upsert", 1)):
        assert grew(before, after, "radsearch_ingest_stage_seconds_count", stage=stage) == per, stage


@pytest.fixture
def secured(settings: Settings, index: VectorIndex, corpus: Corpus) -> Iterator[TestClient]:
    keyed = settings.model_copy(
        update={
            "security": SecuritySettings(
                hash_key=SecretStr("test-hash-key"),
                api_keys=[
                    ApiKeyEntry(name=f"{role}-bot", role=role, sha256=hash_api_key(key))  # type: ignore[arg-type]
                    for role, key in KEYS.items()
                ],
            )
        }
    )
    with TestClient(create_app(keyed, index=index)) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("caller", "status"), [(None, 401), ("reader", 403), ("metrics", 200), ("admin", 200)]
)
def test_keys_on_only_metrics_or_admin_reads_it(secured: TestClient, caller: str | None, status: int) -> None:
    headers = {"X-API-Key": KEYS[caller]} if caller else {}
    response = secured.get("/metrics", headers=headers)
    assert response.status_code == status
    if caller == "metrics":  # the scraper's key reads nothing else
        assert secured.get("/v1/collections", headers=headers).status_code == 403


def test_dashboard_queries_only_exposed_metrics(client: TestClient) -> None:
    import json
    import re

    exposed = {family.name for family in text_string_to_metric_families(client.get("/metrics").text)}
    path = Path(__file__).parents[2] / "infra/grafana/dashboards/radsearch.json"
    dashboard = json.loads(path.read_text())
    queried = {
        re.sub(r"_(bucket|sum|count|total)$", "", name)
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"radsearch_[a-z_]+", target["expr"])
    }
    assert len(queried) >= 10
    assert queried <= exposed, queried - exposed


def test_search_replicas_show_in_the_metrics(tmp_path: Path) -> None:
    """The app's own store (the owner in a child process, a search replica beside it): once a
    collection's copy is current the gauge names it, and every search is counted on one process."""
    import threading
    import time

    from core.config import StoreSettings
    from core.index.hosted import HostedEdgeIndex
    from tests.search_api.test_api import populate

    settings = Settings(
        data_dir=tmp_path / "data",
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(hash_key=SecretStr("test-hash-key")),
        store=StoreSettings(search_replicas=1, search_replica_quiet_s=0.2),
    )
    with TestClient(create_app(settings)) as client:
        index = client.app.state.index  # type: ignore[attr-defined]
        assert isinstance(index, HostedEdgeIndex)
        corpus = populate(index, settings, tmp_path / "source")
        point = next(iter(corpus.class_of))

        def search_a_while() -> None:
            for _ in range(20):
                index.search_near_point(COLLECTION, point, limit=3)

        # Searches that queue on the owner (several at once) ask for a copy.
        deadline = time.monotonic() + 60
        while not value(samples(client), "radsearch_search_replica_current", collection=COLLECTION):
            assert time.monotonic() < deadline, "no current copy within 60 s"
            threads = [threading.Thread(target=search_a_while) for _ in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        before = samples(client)
        for _ in range(5):
            response = client.post(f"/v1/collections/{COLLECTION}/search", json={"point_id": point})
            assert response.status_code == 200
        after = samples(client)
        labels = {"collection": COLLECTION, "filter_kind": "none"}
        assert grew(before, after, "radsearch_searches_total", **labels) == 5
        by_process = [
            grew(before, after, "radsearch_store_process_searches_total", process=process)
            for process in ("owner", "replica")
        ]
        assert sum(by_process) == 5
