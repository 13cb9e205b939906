"""A client generated from the served ``/openapi.json`` by openapi-python-client works: generated
offline into a temporary folder with 0 warnings, then used through its typed functions and
models only, over real HTTP (uvicorn), with a key per role."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from core.index.factory import open_index
from search_api import create_app
from tests.conftest import free_port
from tests.search_api.test_api import COLLECTION, Corpus, dicom_bytes, make_frame, populate
from tests.security.conftest import KEYS, secured_settings

PACKAGE = "radsearch_client"
# image/png (thumbnails) is a binary answer; formatting hooks (ruff) are not needed to import it
GENERATOR_CONFIG = "content_type_overrides:\n  image/png: application/octet-stream\npost_hooks: []\n"


@dataclass
class Served:
    url: str
    corpus: Corpus
    images: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The keyed API (docs on) over a populated ``demo`` collection, served by uvicorn in a thread."""
    images = tmp_path_factory.mktemp("images")
    settings = secured_settings(tmp_path_factory.mktemp("data"), docs=True, ingest_roots=[images])
    index = open_index(settings)
    corpus = populate(index, settings, images / "demo")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, index=index), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield Served(f"http://127.0.0.1:{port}", corpus, images)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        index.close()


@pytest.fixture(scope="module")
def generated(served: Served, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The client package generated from the served document (offline: no network is needed)."""
    out = tmp_path_factory.mktemp("generated")
    spec = out / "openapi.json"
    spec.write_text(json.dumps(httpx.get(f"{served.url}/openapi.json", timeout=30).json()))
    config = out / "config.yaml"
    config.write_text(GENERATOR_CONFIG)
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(spec)]
        + ["--output-path", str(out / PACKAGE), "--meta", "none", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = run.stdout + run.stderr
    warnings = sum(1 for line in output.splitlines() if line.startswith("WARNING"))
    print(f"generated_client: warnings={warnings} seconds={time.perf_counter() - started:.1f}")
    assert run.returncode == 0, output
    assert warnings == 0 and "Warning(s) encountered" not in output, output
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def _client(generated: Any, served: Served, role: str) -> Any:
    return generated.Client(base_url=served.url, headers={"X-API-Key": KEYS[role]}, timeout=60.0)


def _api(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.api.{name}")


def _models() -> Any:
    return importlib.import_module(f"{PACKAGE}.models")


def test_generated_client_reads_and_searches(generated: Any, served: Served) -> None:
    models, types = _models(), importlib.import_module(f"{PACKAGE}.types")
    reader = _client(generated, served, "reader")
    admin_client = _client(generated, served, "admin")

    listed = _api("collections.read_collections").sync(client=reader)
    assert isinstance(listed, models.CollectionsPublic)
    assert [c.name for c in listed.collections] == [COLLECTION] and listed.collections[0].points == 40

    facets = _api("collections.read_facets").sync(COLLECTION, "modality", client=reader)
    assert isinstance(facets, models.FacetsPublic)
    assert facets.counts.additional_properties == {"CT": 10, "MR": 10, "CR": 10, "US": 10}
    within = _api("collections.read_facets").sync(COLLECTION, "anatomy", client=reader, modality=["CT"])
    assert within.counts.additional_properties == {"chest": 10}

    query_id = served.corpus.ids("circles")[0]
    by_point = _api("search.search_collection").sync(
        COLLECTION,
        client=reader,
        body=models.SearchQuery(point_id=query_id, filter_=models.SearchFilterIn(modality=["MR"]), limit=5),
    )
    assert isinstance(by_point, models.SearchResponse) and len(by_point.hits) == 5
    assert all(isinstance(hit.payload, models.PayloadPublic) for hit in by_point.hits)
    assert {hit.payload.modality for hit in by_point.hits} == {"MR"}

    frame = make_frame("circles", np.random.default_rng(3))
    dicom = dicom_bytes(frame, patient_name="GENERATED^CLIENT")
    upload = types.File(payload=BytesIO(dicom), file_name="query.dcm", mime_type="application/dicom")
    by_image = _api("search.search_by_image").sync_detailed(
        COLLECTION,
        client=reader,
        body=models.BodySearchByImage(file=[upload], filter_=json.dumps({"anatomy": ["chest"]}), limit=4),
    )
    assert by_image.status_code == 200, by_image.content[:300]
    assert isinstance(by_image.parsed, models.SearchResponse) and len(by_image.parsed.hits) == 4
    assert {hit.payload.anatomy for hit in by_image.parsed.hits} == {"chest"}
    assert b"GENERATED" not in by_image.content

    # an error parses to the error model, with its code and field
    refused = _api("search.search_collection").sync_detailed(
        "no-such", client=reader, body=models.SearchQuery(point_id=query_id)
    )
    assert refused.status_code == 404 and isinstance(refused.parsed, models.ErrorBody)
    assert refused.parsed.error.code == "collection_not_found"

    thumbnail = _api("collections.read_thumbnail").sync_detailed(COLLECTION, query_id, client=reader, size=32)
    assert thumbnail.status_code == 200 and isinstance(thumbnail.parsed, types.File)
    assert thumbnail.parsed.payload.read().startswith(b"\x89PNG")

    # admin: a second collection, compared with the first, then dropped
    created = _api("admin.create_collection").sync_detailed(
        client=admin_client, body=models.CollectionCreate(name="second", encoder="baseline")
    )
    assert created.status_code == 201 and isinstance(created.parsed, models.CollectionDetailPublic), (
        created.content
    )
    upload = types.File(payload=BytesIO(dicom), file_name="query.dcm", mime_type="application/dicom")
    compared = _api("search.compare_collections").sync(
        client=reader,
        body=models.BodyCompareCollections(
            file=upload,
            collections=[COLLECTION, "second"],
            filter_=json.dumps({"modality": ["CT"]}),
            fuse=True,
        ),
    )
    assert isinstance(compared, models.CompareResponse)
    assert [r.collection for r in compared.results] == [COLLECTION, "second"]
    assert compared.results[0].hits and {h.payload.modality for h in compared.results[0].hits} == {"CT"}
    assert compared.results[1].hits == [] and compared.fused
    dropped = _api("admin.delete_collection").sync_detailed("second", client=admin_client)
    assert dropped.status_code == 200 and isinstance(dropped.parsed, models.CollectionDropped)
    assert dropped.parsed.name == "second" and dropped.parsed.trashed
    assert [c.name for c in _api("collections.read_collections").sync(client=reader).collections] == [
        COLLECTION
    ]


def test_generated_client_submits_and_reads_an_ingest_job(generated: Any, served: Served) -> None:
    models = _models()
    ingest = _client(generated, served, "ingest")
    submitted = _api("ingest_jobs.create_ingest_job").sync_detailed(
        client=ingest,
        body=models.IngestJobCreate(
            source=str(served.images / "demo"),
            collections=["ingested"],
            executor=models.IngestJobCreateExecutor.OWNER,
            encoder="baseline",
        ),
    )
    assert submitted.status_code == 202, submitted.content[:500]
    job = submitted.parsed
    assert isinstance(job, models.IngestJobPublic)
    deadline = time.monotonic() + 120
    while job.state.value not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = _api("ingest_jobs.read_ingest_job").sync(job.id, client=ingest)
        assert isinstance(job, models.IngestJobPublic)
    assert job.state.value == "done", job.error
    assert job.collections == ["ingested"] and job.counts.objects_done == 40
