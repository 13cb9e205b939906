"""The search API end to end: a real Edge index, the baseline encoder, real readers and sources."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from PIL import Image
from pydantic import SecretStr
from qdrant_client import QdrantClient

from core.catalog import Catalog
from core.config import ApiSettings, RuntimeSettings, SecuritySettings, Settings
from core.encoders import get_spec
from core.index.base import VectorIndex
from core.index.factory import open_index
from core.payload import build_payload, image_point_id, point_id
from search_api import create_app
from tests.conftest import free_port

# qdrant-client's local mode (the congruence backend) says what it cannot do; both are expected here
pytestmark = pytest.mark.filterwarnings(
    "ignore:Payload indexes have no effect:UserWarning", "ignore:Local mode performs exact:UserWarning"
)

COLLECTION = "demo"
WIDTH, HEIGHT = 96, 72
PER_CLASS = 10
CANARY = "ZZCANARY"

# class → (modality, anatomy, pathology labels)
LABELS: dict[str, tuple[str, str, list[str]]] = {
    "circles": ("CT", "chest", ["nodule"]),
    "stripes": ("MR", "brain", ["normal"]),
    "gradient": ("CR", "chest", ["effusion", "normal"]),
    "noise": ("US", "abdomen", ["cyst"]),
}


def make_frame(kind: str, rng: np.random.Generator) -> NDArray[np.uint8]:
    """One synthetic greyscale frame of a visually distinct class."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    if kind == "circles":
        cy, cx = rng.uniform(25, HEIGHT - 25), rng.uniform(30, WIDTH - 30)
        radius = rng.uniform(12, 20)
        image = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2, 220.0, 30.0)
    elif kind == "stripes":
        period = rng.uniform(6, 10)
        image = 127 + 110 * np.sin(2 * np.pi * xx / period + rng.uniform(0, 2 * np.pi))
    elif kind == "gradient":
        angle = rng.uniform(-0.3, 0.3)
        ramp = yy * np.cos(angle) + xx * np.sin(angle)
        image = 255 * (ramp - ramp.min()) / (ramp.max() - ramp.min())
    elif kind == "noise":
        image = rng.uniform(0, 255, size=(HEIGHT, WIDTH))
    else:
        raise ValueError(kind)
    return np.clip(image, 0, 255).astype(np.uint8)


def png_bytes(frame: NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Corpus:
    source: str
    class_of: dict[str, str] = field(default_factory=dict)
    frames: dict[str, NDArray[np.uint8]] = field(default_factory=dict)

    def ids(self, kind: str) -> list[str]:
        return [pid for pid, k in self.class_of.items() if k == kind]


def populate(index: VectorIndex, settings: Settings, folder: Path) -> Corpus:
    """The ``demo`` collection: 40 frames of 4 classes, written as PNGs under ``folder`` (the source)."""
    folder.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(index, settings)
    catalog.create(COLLECTION, get_spec("baseline"))
    # Written as the pipeline writes: payload ``source`` is the folder's stable name, ids come from
    # name + key (id scheme v2), and the collection records where the name is read from.
    corpus = Corpus(source=folder.name)
    rng = np.random.default_rng(7)
    keys, frames, payloads = [], [], []
    for kind, (modality, anatomy, pathology) in LABELS.items():
        for i in range(PER_CLASS):
            frame = make_frame(kind, rng)
            key = f"{kind}_{i:02d}.png"
            (folder / key).write_bytes(png_bytes(frame))
            pid = image_point_id(0, instance_hash=None, source_name=corpus.source, key=key)
            corpus.class_of[pid] = kind
            corpus.frames[pid] = frame
            keys.append(pid)
            frames.append(frame)
            payloads.append(
                build_payload(
                    {
                        "modality": modality,
                        "anatomy": anatomy,
                        "pathology": pathology,
                        "split": "train" if i % 2 else "test",
                        "dataset": "synthetic",
                        "source": corpus.source,
                        "key": key,
                        "frame": 0,
                    }
                )
            )
    vectors = catalog.encoder_for(COLLECTION).embed(frames)
    index.upsert(COLLECTION, keys, vectors, payloads)
    index.register_source(COLLECTION, corpus.source, str(folder.resolve()))
    return corpus


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """As ``tests/conftest.py``'s, for the whole module (the populated index is built once), no S3."""
    return Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(hash_key=SecretStr("test-hash-key")),
    )


@dataclass
class Backend:
    client: TestClient
    corpus: Corpus


def memory_index(settings: Settings) -> VectorIndex:
    from core.index.server import QdrantServerIndex

    return QdrantServerIndex(QdrantClient(":memory:"), settings.store)


@pytest.fixture(scope="module", params=["edge", "qdrant-memory"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """The same populated collection behind either index backend (congruence)."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(hash_key=SecretStr("test-hash-key")),
    )
    index = open_index(settings) if request.param == "edge" else memory_index(settings)
    corpus = populate(index, settings, tmp_path_factory.mktemp("images"))
    with TestClient(create_app(settings, index=index)) as test_client:
        yield Backend(test_client, corpus)
    index.close()


def search(client: TestClient, **body: Any) -> Any:
    response = client.post(f"/v1/collections/{COLLECTION}/search", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def hit_ids(client: TestClient, **body: Any) -> list[str]:
    return [hit["id"] for hit in search(client, **body)["hits"]]


def upload(
    client: TestClient, data: bytes, filename: str = "query.png", **form: Any
) -> Any:  # an httpx.Response
    return client.post(
        f"/v1/collections/{COLLECTION}/search/image",
        files={"file": (filename, data, "application/octet-stream")},
        data={
            k: (json.dumps(v) if k == "filter" and not isinstance(v, str) else str(v))
            for k, v in form.items()
        },
    )


def dicom_bytes(frame: NDArray[np.uint8], *, patient_name: str) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("query.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.PatientName = patient_name
    ds.PatientID = f"{CANARY}-ID"
    ds.InstitutionName = f"{CANARY} HOSPITAL"
    ds.Rows, ds.Columns = frame.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.WindowCenter = 512
    ds.WindowWidth = 1024
    ds.PixelData = (frame.astype(np.uint16) * 4).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# -- health, page, OpenAPI ---------------------------------------------------------------------


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readiness_fails_when_the_store_is_unreachable(settings: Settings) -> None:
    from core.index.server import QdrantServerIndex

    unreachable = QdrantClient(url=f"http://127.0.0.1:{free_port()}", timeout=2, check_compatibility=False)
    with TestClient(create_app(settings, index=QdrantServerIndex(unreachable, settings.store))) as client:
        assert client.get("/healthz").status_code == 200
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json() == {"status": "unavailable"}


def test_readiness_waits_until_the_collections_are_open(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a start, /readyz answers 503 until every collection is loaded, so that a load
    balancer sends no search that would wait for it (seconds at 1 M points)."""
    from core.index.base import CollectionConfig
    from core.index.edge import EdgeIndex

    root = tmp_path / "store"
    index = EdgeIndex(root, settings.store)
    index.create_collection(CollectionConfig(name="c", dim=4))
    index.upsert("c", [point_id("s", "a", 0)], np.eye(1, 4, dtype=np.float32), [{"modality": "CT"}])
    index.close()
    index = EdgeIndex(root, settings.store)
    may_open = threading.Event()
    open_collections = index.open_collections

    def open_when_allowed() -> None:
        may_open.wait(30)
        open_collections()

    monkeypatch.setattr(index, "open_collections", open_when_allowed)
    try:
        with TestClient(create_app(settings, index=index)) as client:
            response = client.get("/readyz")
            assert (response.status_code, response.json()) == (503, {"status": "opening collections"})
            assert client.get("/healthz").status_code == 200
            assert not index._handles
            may_open.set()
            deadline = time.monotonic() + 30
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "never ready"
                time.sleep(0.05)
            assert set(index._handles) == {"c"}
    finally:
        may_open.set()
        index.close()


def test_web_page_is_self_contained_html(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "<html" in page and 'src="static/page.js"' in page and 'href="static/page.css"' in page
    script = client.get("/static/page.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    code = script.text
    assert "v1/collections" in code and "/image?" in code and "/facets/" in code and "v1/render" in code
    style = client.get("/static/page.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    # no CDN: nothing is loaded from another origin
    for text in (page, code, style.text):
        assert "http://" not in text and "https://" not in text
    assert client.get("/static/index.html").status_code == 404  # the page's files only


def test_openapi_lists_every_route_with_clean_operation_ids(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operations = {
        (method.upper(), path): op["operationId"]
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    }
    assert operations == {
        ("GET", "/healthz"): "read_liveness",
        ("GET", "/readyz"): "read_readiness",
        ("GET", "/v1/collections"): "read_collections",
        ("GET", "/v1/collections/{name}"): "read_collection",
        ("GET", "/v1/collections/{name}/points/{point_id}"): "read_point",
        ("GET", "/v1/collections/{name}/facets/{field}"): "read_facets",
        ("GET", "/v1/collections/{name}/points/{point_id}/thumbnail"): "read_thumbnail",
        ("POST", "/v1/collections/{name}/search"): "search_collection",
        ("POST", "/v1/collections/{name}/search/image"): "search_by_image",
        ("GET", "/"): "read_page",
        # collections administration and comparison (issue 4)
        ("POST", "/v1/collections"): "create_collection",
        ("DELETE", "/v1/collections/{name}"): "delete_collection",
        ("POST", "/v1/collections/{name}/backfill"): "create_backfill",
        ("GET", "/v1/backfill-jobs"): "read_backfill_jobs",
        ("GET", "/v1/backfill-jobs/{job_id}"): "read_backfill_job",
        ("PUT", "/v1/aliases/{alias}"): "update_alias",
        ("GET", "/v1/aliases"): "read_aliases",
        ("DELETE", "/v1/aliases/{alias}"): "delete_alias",
        ("POST", "/v1/search/compare"): "compare_collections",
        # ingest jobs and bucket events (issue 3)
        ("POST", "/v1/ingest-jobs"): "create_ingest_job",
        ("GET", "/v1/ingest-jobs"): "read_ingest_jobs",
        ("GET", "/v1/ingest-jobs/{job_id}"): "read_ingest_job",
        ("GET", "/v1/workers"): "read_workers",
        ("GET", "/v1/store"): "read_store",
        ("POST", "/v1/events/s3"): "create_s3_events",
        # points written through the store's owner (issue 13)
        ("PUT", "/v1/collections/{name}/points"): "upsert_points",
        ("POST", "/v1/collections/{name}/points/delete"): "delete_points",
        ("POST", "/v1/collections/{name}/points/lookup"): "lookup_points",
        ("POST", "/v1/collections/{name}/points/scroll"): "scroll_points",
        ("POST", "/v1/collections/{name}/points/payload"): "overwrite_payloads",
        ("PUT", "/v1/collections/{name}/sources"): "register_source",
        ("POST", "/v1/collections/{name}/sources/overlaps"): "source_overlaps",
        ("POST", "/v1/collections/{name}/optimize"): "optimize_collection",
        ("POST", "/v1/collections/{name}/evaluate"): "create_evaluation",
        # backups: the trash and snapshots (issue 14)
        ("POST", "/v1/collections/{name}/restore"): "restore_collection",
        ("GET", "/v1/trash"): "read_trash",
        ("POST", "/v1/snapshots"): "create_snapshot",
        ("GET", "/v1/snapshots"): "read_snapshots",
        ("POST", "/v1/snapshots/{snapshot_id}/restore"): "restore_snapshot",
        # results a radiologist can use (issue 16)
        ("POST", "/v1/collections/{name}/calibrate"): "calibrate_collection",
        ("GET", "/v1/collections/{name}/points/{point_id}/image"): "read_point_image",
        ("POST", "/v1/render"): "render_upload",
        ("GET", "/static/{asset}"): "read_page_asset",
        # metrics (issue 18)
        ("GET", "/metrics"): "read_metrics",
        # a PACS over DICOMweb (issue 17)
        ("POST", "/v1/collections/{name}/search/dicomweb"): "search_by_dicomweb",
        ("POST", "/v1/dicomweb/studies"): "stow_instances",
        ("POST", "/v1/dicomweb/studies/{study_uid}"): "stow_study_instances",
    }
    assert client.get("/docs").status_code == 200


# -- collections, points, facets -----------------------------------------------------------------


def test_collections_list(client: TestClient) -> None:
    body = client.get("/v1/collections").json()
    assert body["collections"] == [
        {
            "name": COLLECTION,
            "encoder": "baseline",
            "dim": 512,
            "points": 4 * PER_CLASS,
            "weights": body["collections"][0]["weights"],
            "text_search": False,
            "created_at": body["collections"][0]["created_at"],
        }
    ]
    assert body["collections"][0]["weights"]
    detail = client.get(f"/v1/collections/{COLLECTION}").json()
    # The single-collection GET adds the full record (issue 4) to the listing's fields.
    assert {k: detail[k] for k in body["collections"][0]} == body["collections"][0]
    # Created by ingest without a quantization: the store's default, int8 (rescored with the originals).
    assert detail["spec"]["name"] == "baseline" and detail["quantization"] == "int8"
    assert detail["indexing"]["status"] in ("green", "yellow") and detail["aliases"] == []


def test_point_payload(client: TestClient, corpus: Corpus) -> None:
    pid = corpus.ids("gradient")[3]
    response = client.get(f"/v1/collections/{COLLECTION}/points/{pid}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == pid
    payload = body["payload"]
    assert payload["modality"] == "CR"
    assert payload["anatomy"] == "chest"
    assert payload["pathology"] == ["effusion", "normal"]
    assert payload["key"] == "gradient_03.png"
    assert payload["source"] == corpus.source
    assert payload["frame"] == 0


@pytest.mark.parametrize("pid", ["00000000-0000-0000-0000-000000000000", "not-a-uuid"])
def test_missing_point_is_404(client: TestClient, pid: str) -> None:
    response = client.get(f"/v1/collections/{COLLECTION}/points/{pid}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "point_not_found"
    if pid == "not-a-uuid":
        assert pid not in response.json()["detail"]  # what is no point id is not echoed


def test_a_wrong_method_names_the_methods_the_path_takes(client: TestClient) -> None:
    response = client.post("/v1/aliases", json={"alias": "a", "collection": COLLECTION})
    assert response.status_code == 405 and response.headers["allow"] == "GET"
    assert response.json()["error"] == {
        "code": "method_not_allowed",
        "message": "method not allowed: this path takes GET",
        "field": None,
    }


def test_facets(client: TestClient) -> None:
    response = client.get(f"/v1/collections/{COLLECTION}/facets/modality")
    assert response.status_code == 200
    assert response.json() == {
        "field": "modality",
        "counts": {"CT": 10, "MR": 10, "CR": 10, "US": 10},
        "warnings": [],
    }
    pathology = client.get(f"/v1/collections/{COLLECTION}/facets/pathology").json()["counts"]
    assert pathology == {"normal": 20, "nodule": 10, "effusion": 10, "cyst": 10}
    within_chest = client.get(
        f"/v1/collections/{COLLECTION}/facets/modality", params={"anatomy": "chest"}
    ).json()
    assert within_chest["counts"] == {"CT": 10, "CR": 10}
    either = client.get(
        f"/v1/collections/{COLLECTION}/facets/anatomy", params=[("modality", "CT"), ("modality", "MR")]
    ).json()
    assert either["counts"] == {"chest": 10, "brain": 10}
    # found in the walkthrough: a value no point holds gave empty counts and no word why
    misspelt = client.get(f"/v1/collections/{COLLECTION}/facets/modality", params={"anatomy": "chets"}).json()
    assert misspelt["counts"] == {}
    [warning] = misspelt["warnings"]
    assert (warning["field"], warning["value"], warning["suggestions"]) == ("anatomy", "chets", ["chest"])
    field_typo = client.get(f"/v1/collections/{COLLECTION}/facets/modalty")
    assert field_typo.status_code == 400
    assert field_typo.json()["error"]["message"].startswith("unknown facet field (did you mean 'modality'?)")


@pytest.mark.parametrize("field_name", ["key", "patient_name", "rows"])
def test_facets_of_unknown_field_is_400(client: TestClient, field_name: str) -> None:
    response = client.get(f"/v1/collections/{COLLECTION}/facets/{field_name}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("unknown_field", "field") and "modality" in error["message"]
    assert field_name not in response.text  # the path segment is never echoed


# -- search by point, vector, text ---------------------------------------------------------------


def test_search_by_point_excludes_itself(backend: Backend) -> None:
    client, corpus = backend.client, backend.corpus
    for kind in LABELS:
        pid = corpus.ids(kind)[0]
        body = search(client, point_id=pid, limit=39)
        ids = [hit["id"] for hit in body["hits"]]
        assert body["collection"] == COLLECTION
        assert body["took_ms"] >= 0
        assert pid not in ids
        assert len(ids) == 39
        assert corpus.class_of[ids[0]] == kind
        top5 = [corpus.class_of[i] for i in ids[:5]]
        assert top5.count(kind) >= 4, (kind, top5)
        scores = [hit["score"] for hit in body["hits"]]
        assert scores == sorted(scores, reverse=True)


def test_search_by_unknown_point_is_404(client: TestClient) -> None:
    response = client.post(
        f"/v1/collections/{COLLECTION}/search", json={"point_id": "00000000-0000-0000-0000-000000000000"}
    )
    assert response.status_code == 404


def test_point_ids_that_are_not_uuids_are_refused_naming_the_field(
    client: TestClient, corpus: Corpus
) -> None:
    """They answered 404 point_not_found, as if a point might have had that id; each is a 422
    (JSON) or 400 (form) naming the field, and no value is echoed."""
    url = f"/v1/collections/{COLLECTION}/search"
    point = corpus.ids("circles")[0]
    for body, named in [
        ({"point_id": "Jane^Doe"}, "point_id"),
        ({"positive": [point, "Jane^Doe"]}, "positive.1"),
        ({"positive": [point], "negative": ["Jane^Doe"]}, "negative.0"),
    ]:
        response = client.post(url, json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == named
        assert "point ids are UUIDs" in response.json()["error"]["message"]
        assert "Jane" not in response.text
    form = client.post(
        f"{url}/image",
        files={"file": ("q.png", png_bytes(corpus.frames[point]), "image/png")},
        data={"negative": f"{point},Jane^Doe"},
    )
    assert form.status_code == 400, form.text
    assert form.json()["error"]["field"] == "negative" and "negative[1]: point ids are UUIDs" in form.text
    assert "Jane" not in form.text
    # Any form of a UUID names the same point: the query point is still left out of its hits.
    hits = search(client, point_id=point.replace("-", "").upper(), limit=5)["hits"]
    assert [hit["id"] for hit in hits] == hit_ids(client, point_id=point, limit=5)
    assert point not in [hit["id"] for hit in hits]


def test_search_by_vector(client: TestClient, settings: Settings, index: VectorIndex, corpus: Corpus) -> None:
    pid = corpus.ids("stripes")[2]
    encoder = Catalog(index, settings).encoder_for(COLLECTION)
    vector = encoder.embed([corpus.frames[pid]])[0]
    body = search(client, vector=[float(v) for v in vector], limit=5)
    assert body["hits"][0]["id"] == pid
    assert body["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert all(corpus.class_of[hit["id"]] == "stripes" for hit in body["hits"])


@pytest.mark.parametrize(("vector", "message"), [([0.1] * 511, "dimension"), ([0.0] * 512, "zero norm")])
def test_search_by_bad_vector_is_400(client: TestClient, vector: list[float], message: str) -> None:
    response = client.post(f"/v1/collections/{COLLECTION}/search", json={"vector": vector})
    assert response.status_code == 400
    assert message in response.json()["detail"]
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_vector", "vector")


def test_search_by_text_without_text_tower_is_400(client: TestClient) -> None:
    response = client.post(f"/v1/collections/{COLLECTION}/search", json={"text": "a nodule in the lung"})
    assert response.status_code == 400
    assert "text tower" in response.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [{}, {"point_id": "00000000-0000-0000-0000-000000000000", "text": "x"}, {"limit": 3}],
)
def test_search_needs_exactly_one_query(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post(f"/v1/collections/{COLLECTION}/search", json=body)
    assert response.status_code == 422
    assert "exactly one of point_id, vector, text or positive" in response.text


# -- filters, paging, threshold ------------------------------------------------------------------


def test_filter_by_modality_only(backend: Backend) -> None:
    client, corpus = backend.client, backend.corpus
    query = corpus.ids("circles")[0]
    body = search(client, point_id=query, filter={"modality": ["US"]}, limit=40)
    assert len(body["hits"]) == PER_CLASS
    assert {hit["payload"]["modality"] for hit in body["hits"]} == {"US"}


def test_filter_any_of_within_and_all_of_across_fields(backend: Backend) -> None:
    client, corpus = backend.client, backend.corpus
    query = corpus.ids("noise")[0]
    either = search(client, point_id=query, filter={"modality": ["CT", "MR"]}, limit=40)["hits"]
    assert len(either) == 2 * PER_CLASS
    assert {hit["payload"]["modality"] for hit in either} == {"CT", "MR"}

    chest = search(client, point_id=query, filter={"anatomy": ["chest"]}, limit=40)["hits"]
    assert {hit["payload"]["modality"] for hit in chest} == {"CT", "CR"}

    both = search(client, point_id=query, filter={"anatomy": ["chest"], "modality": ["CR", "MR"]}, limit=40)
    assert {(h["payload"]["modality"], h["payload"]["anatomy"]) for h in both["hits"]} == {("CR", "chest")}
    assert len(both["hits"]) == PER_CLASS

    labelled = search(client, point_id=query, filter={"pathology": ["normal"], "split": ["train"]}, limit=40)
    assert len(labelled["hits"]) == PER_CLASS  # stripes + gradient, odd indices only
    assert all(
        "normal" in h["payload"]["pathology"] and h["payload"]["split"] == "train" for h in labelled["hits"]
    )

    nothing = search(client, point_id=query, filter={"modality": ["CT"], "anatomy": ["brain"]})
    assert nothing["hits"] == []


@pytest.mark.parametrize(
    ("filter_", "needle"),
    [
        ({"patient_name": ["x"]}, "patient_name"),
        ({"modality": 5}, "modality"),
        ({"modality": [1, 2]}, "modality"),
        ({"modality": []}, "modality"),
        ({"modality": ["CT"] * 101}, "modality"),
    ],
)
def test_bad_filter_is_400(client: TestClient, corpus: Corpus, filter_: dict[str, Any], needle: str) -> None:
    response = client.post(
        f"/v1/collections/{COLLECTION}/search",
        json={"point_id": corpus.ids("circles")[0], "filter": filter_},
    )
    assert response.status_code == 400, response.text
    assert needle in response.json()["detail"]
    assert (
        response.json()["error"]["code"] == "invalid_filter" and response.json()["error"]["field"] == "filter"
    )


@pytest.mark.parametrize("filter_", ["CT", ["CT"], 5])
def test_a_filter_that_is_no_object_is_400_on_json_and_form_routes(
    client: TestClient, corpus: Corpus, filter_: Any
) -> None:
    response = client.post(
        f"/v1/collections/{COLLECTION}/search", json={"point_id": corpus.ids("circles")[0], "filter": filter_}
    )
    assert response.status_code == 400, response.text
    assert (
        response.json()["error"]["code"] == "invalid_filter" and response.json()["error"]["field"] == "filter"
    )
    form = client.post(
        f"/v1/collections/{COLLECTION}/search/image",
        files={"file": ("q.png", png_bytes(corpus.frames[corpus.ids("circles")[0]]), "image/png")},
        data={"filter": json.dumps(filter_)},
    )
    assert form.status_code == 400 and form.json()["error"]["code"] == "invalid_filter", form.text


def test_nothing_sent_is_ignored(client: TestClient, corpus: Corpus) -> None:
    """Unknown query parameters, JSON fields and form parts: 400 unknown_field naming them."""
    query = client.get(f"/v1/collections/{COLLECTION}/facets/modality", params={"modalty": "CT"})
    assert query.status_code == 400 and query.json()["error"]["field"] == "modalty", query.text
    assert "anatomy" in query.json()["error"]["message"]  # what the operation does take
    assert "'modalty' (did you mean 'modality'?)" in query.json()["error"]["message"]
    body = client.post(
        f"/v1/collections/{COLLECTION}/search", json={"point_id": corpus.ids("circles")[0], "limt": 5}
    )
    assert body.status_code == 400, body.text
    assert (body.json()["error"]["code"], body.json()["error"]["field"]) == ("unknown_field", "limt")
    assert "'limt' (did you mean 'limit'?)" in body.json()["error"]["message"]  # a typo, corrected
    nested = client.post(
        f"/v1/collections/{COLLECTION}/search",
        json={"point_id": corpus.ids("circles")[0], "exclude": {"same_pateint": True}},
    )
    assert nested.status_code == 400, nested.text
    assert nested.json()["error"]["field"] == "exclude.same_pateint"
    assert "'exclude.same_pateint' (did you mean 'same_patient'?)" in nested.json()["error"]["message"]
    form = client.post(
        f"/v1/collections/{COLLECTION}/search/image",
        files={"file": ("q.png", png_bytes(corpus.frames[corpus.ids("circles")[0]]), "image/png")},
        data={"modality": "MR"},
    )
    assert form.status_code == 400 and form.json()["error"] == {
        "code": "unknown_field",
        "message": form.json()["detail"],
        "field": "modality",
    }
    typo = client.post(
        f"/v1/collections/{COLLECTION}/search/image",
        files={"file": ("q.png", png_bytes(corpus.frames[corpus.ids("circles")[0]]), "image/png")},
        data={"limt": "5"},
    )
    assert typo.status_code == 400 and "'limt' (did you mean 'limit'?)" in typo.json()["detail"], typo.text


def test_limit_offset_paging_equals_slices(backend: Backend) -> None:
    client, corpus = backend.client, backend.corpus
    query = corpus.ids("gradient")[1]
    full = hit_ids(client, point_id=query, limit=39)
    assert len(full) == 39
    pages = [hit_ids(client, point_id=query, limit=7, offset=offset) for offset in range(0, 39, 7)]
    assert [pid for page in pages for pid in page] == full
    assert hit_ids(client, point_id=query, limit=5, offset=37) == full[37:]
    assert hit_ids(client, point_id=query, limit=5, offset=100) == []


@pytest.mark.parametrize(
    ("changes", "loc"),
    [({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"offset": -1}, "offset")],
)
def test_paging_bounds_are_422(client: TestClient, corpus: Corpus, changes: dict[str, int], loc: str) -> None:
    body = {"point_id": corpus.ids("circles")[0], **changes}
    response = client.post(f"/v1/collections/{COLLECTION}/search", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("validation_error", loc), error
    assert f"{loc} (body)" in error["message"] and error["message"] == response.json()["detail"]


def test_score_threshold(client: TestClient, corpus: Corpus) -> None:
    query = corpus.ids("circles")[4]
    full = search(client, point_id=query, limit=39)["hits"]
    threshold = (full[9]["score"] + full[10]["score"]) / 2
    kept = search(client, point_id=query, limit=39, score_threshold=threshold)["hits"]
    assert [hit["id"] for hit in kept] == [hit["id"] for hit in full[:10]]
    assert all(hit["score"] >= threshold for hit in kept)
    # a threshold no cosine score can reach (walkthrough: 2 answered no hits, and no word why)
    for out_of_range in (2, -1.5):
        refused = client.post(
            f"/v1/collections/{COLLECTION}/search", json={"point_id": query, "score_threshold": out_of_range}
        )
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "score_threshold"


def test_backends_agree(tmp_path: Path) -> None:
    """Congruence: the same queries through Edge and qdrant-client's local mode give the same hits."""
    settings = Settings(data_dir=tmp_path / "data", runtime=RuntimeSettings(device="cpu", dtype="float32"))
    results = []
    for name, index in (("edge", open_index(settings)), ("memory", memory_index(settings))):
        corpus = populate(index, settings, tmp_path / name)
        with TestClient(create_app(settings, index=index)) as test_client:
            runs = []
            for kind in LABELS:
                # ids differ by source folder, so compare classes and key names, plus scores
                body = search(
                    test_client, point_id=corpus.ids(kind)[1], limit=12, filter={"split": ["train"]}
                )
                runs.append([(hit["payload"]["key"], hit["score"]) for hit in body["hits"]])
            results.append(runs)
        index.close()
    edge_runs, memory_runs = results
    for edge_hits, memory_hits in zip(edge_runs, memory_runs, strict=True):
        assert [key for key, _ in edge_hits] == [key for key, _ in memory_hits]
        assert [s for _, s in edge_hits] == pytest.approx([s for _, s in memory_hits], abs=1e-4)


# -- unknown collection --------------------------------------------------------------------------

PID = "00000000-0000-0000-0000-000000000000"


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("GET", "/v1/collections/nope", {}),
        ("GET", f"/v1/collections/nope/points/{PID}", {}),
        ("GET", f"/v1/collections/nope/points/{PID}/thumbnail", {}),
        ("GET", "/v1/collections/nope/facets/modality", {}),
        ("POST", "/v1/collections/nope/search", {"json": {"point_id": PID}}),
        ("POST", "/v1/collections/nope/search", {"json": {"vector": [1.0] * 512}}),
        ("POST", "/v1/collections/nope/search/image", {"files": {"file": ("q.png", b"x")}}),
        ("GET", "/v1/collections/Bad..Name/facets/modality", {}),
    ],
)
def test_unknown_collection_is_404(
    client: TestClient, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    response = client.request(method, path, **kwargs)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "collection_not_found", response.text


# -- search by uploaded image --------------------------------------------------------------------


def test_search_by_png_upload(backend: Backend) -> None:
    client, corpus = backend.client, backend.corpus
    rng = np.random.default_rng(1234)
    for kind in LABELS:
        response = upload(client, png_bytes(make_frame(kind, rng)), limit=5)
        assert response.status_code == 200, response.text
        classes = [corpus.class_of[hit["id"]] for hit in response.json()["hits"]]
        assert classes[0] == kind and classes.count(kind) >= 4, (kind, classes)


def test_search_by_upload_with_filter_and_paging(client: TestClient, corpus: Corpus) -> None:
    query = png_bytes(make_frame("circles", np.random.default_rng(5)))
    full = upload(client, query, limit=20).json()["hits"]
    page = upload(client, query, limit=5, offset=5).json()["hits"]
    assert [h["id"] for h in page] == [h["id"] for h in full[5:10]]
    filtered = upload(client, query, limit=40, filter={"anatomy": ["brain"]}).json()["hits"]
    assert len(filtered) == PER_CLASS and {h["payload"]["modality"] for h in filtered} == {"MR"}
    threshold = full[3]["score"] - 1e-6
    kept = upload(client, query, limit=20, score_threshold=threshold).json()["hits"]
    assert [h["id"] for h in kept] == [h["id"] for h in full[:4]]
    refused = upload(client, query, score_threshold=1.5)
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "score_threshold", refused.text


def test_search_by_dicom_upload_leaks_no_header(client: TestClient, corpus: Corpus) -> None:
    frame = make_frame("circles", np.random.default_rng(99))
    data = dicom_bytes(frame, patient_name=f"{CANARY}^API")
    assert CANARY.encode() in data
    response = upload(client, data, filename="scan.dcm", limit=10)
    assert response.status_code == 200, response.text
    assert CANARY not in response.text
    hits = response.json()["hits"]
    assert len(hits) == 10
    assert corpus.class_of[hits[0]["id"]] == "circles"

    # a corrupt DICOM full of identifying values: the error names the upload, never a header value
    broken = data[: len(data) // 3]
    response = upload(client, broken, filename="broken.dcm")
    assert 400 <= response.status_code < 500
    assert "broken.dcm" in response.json()["detail"]
    assert CANARY not in response.text


def test_undecodable_upload_is_4xx_naming_the_file(client: TestClient) -> None:
    response = upload(client, b"these are notes, not an image\n" * 10, filename="notes.txt")
    assert response.status_code == 415
    detail = response.json()["detail"]
    assert "notes.txt" in detail

    response = upload(client, b"\x89PNG\r\n\x1a\n" + b"\0" * 64, filename="../../etc/truncated.png")
    assert response.status_code == 400
    assert response.json()["detail"].startswith("truncated.png:")


def test_empty_upload_is_400(client: TestClient) -> None:
    response = upload(client, b"", filename="empty.png")
    assert response.status_code in (400, 415)
    assert "empty.png" in response.json()["detail"]


def test_upload_over_the_limit_is_413(settings: Settings, index: VectorIndex, corpus: Corpus) -> None:
    small = settings.model_copy(update={"api": ApiSettings(max_upload_bytes=4096)})
    with TestClient(create_app(small, index=index)) as client:
        noise = make_frame("noise", np.random.default_rng(3))
        data = png_bytes(noise)
        assert 4096 < len(data) < 64 * 1024  # over the upload limit, inside the multipart allowance
        response = upload(client, data)
        assert response.status_code == 413
        assert "query.png" in response.json()["detail"]
        # far beyond: refused by the body limit before the upload is spooled
        response = upload(client, b"\0" * (2 * 1024 * 1024))
        assert response.status_code == 413
        ok = upload(client, png_bytes(make_frame("circles", np.random.default_rng(3))))
        assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    ("filter_", "needle"),
    [("{not json", "not valid JSON"), ('{"patient_id": ["x"]}', "patient_id"), ('["CT"]', "JSON object")],
)
def test_upload_with_bad_filter_is_400(client: TestClient, filter_: str, needle: str) -> None:
    query = png_bytes(make_frame("circles", np.random.default_rng(5)))
    response = upload(client, query, filter=filter_)
    assert response.status_code == 400
    assert needle in response.json()["detail"]


def test_an_unknown_form_field_is_400_not_ignored(client: TestClient) -> None:
    # `curl -F modality=MR` looks like a filter; searching unfiltered instead would mislead.
    query = png_bytes(make_frame("circles", np.random.default_rng(5)))
    response = upload(client, query, modality="MR", limit=5)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "unknown form field 'modality'" in detail and '"filter"' in detail and "MR" not in detail
    compare = client.post(
        "/v1/search/compare",
        files={"file": ("q.png", query, "image/png")},
        data={"collections": COLLECTION, "modality": "MR"},
    )
    assert compare.status_code == 400 and "'modality'" in compare.json()["detail"], compare.text
    ok = upload(client, query, limit=5, filter={"modality": ["MR"]})
    assert ok.status_code == 200 and {h["payload"]["modality"] for h in ok.json()["hits"]} == {"MR"}


def test_a_filter_field_that_is_none_is_named_with_the_fields_there_are(
    client: TestClient, corpus: Corpus
) -> None:
    """Found in session 24's walkthrough: ``{"filter": {"not": ...}}`` in a JSON body answered
    "filter.not (body): Extra inputs are not permitted"; a form's filter named the fields there
    are. Both say the same now."""
    said = "unknown filter field(s) 'not'; allowed: modality, anatomy, pathology, dataset, split, source, key"
    body = client.post(
        f"/v1/collections/{COLLECTION}/search",
        json={"point_id": corpus.ids("circles")[0], "filter": {"not": {"split": ["test"]}}},
    )
    form = upload(client, png_bytes(make_frame("circles", np.random.default_rng(3))), filter='{"not": ["x"]}')
    for response in (body, form):
        assert response.status_code == 400, response.text
        assert response.json()["error"] == {"code": "invalid_filter", "message": said, "field": "filter"}


def test_a_filter_field_typo_is_answered_with_the_field_meant(client: TestClient, corpus: Corpus) -> None:
    """Found in session 25's walkthrough: ``filter.modaliti`` listed the fields a filter takes but
    did not say which was meant, unlike a collection's typo."""
    said = (
        "unknown filter field(s) 'Modality' (did you mean 'modality'?), 'patholgy' (did you mean "
        "'pathology'?); allowed: modality, anatomy, pathology, dataset, split, source, key"
    )
    typos = {"Modality": ["MR"], "patholgy": ["fracture"]}
    body = client.post(
        f"/v1/collections/{COLLECTION}/search", json={"point_id": corpus.ids("circles")[0], "filter": typos}
    )
    form = upload(
        client, png_bytes(make_frame("circles", np.random.default_rng(3))), filter=json.dumps(typos)
    )
    for response in (body, form):
        assert response.status_code == 400, response.text
        assert response.json()["error"] == {"code": "invalid_filter", "message": said, "field": "filter"}


def test_an_evaluation_with_a_k_given_twice_is_refused(client: TestClient) -> None:
    """Found in session 24's walkthrough: ``{"ks": [1, 1]}`` answered P@1 once, the other k
    silently dropped (the metrics are keyed by k)."""
    for body, says in (({"ks": [1, 5, 1]}, "ks"), ({"index_fractions": [0.5, 0.5]}, "index fractions")):
        response = client.post(f"/v1/collections/{COLLECTION}/evaluate", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["message"] == f"{says} must not repeat a value"


def test_a_single_valued_field_given_twice_is_400_not_one_of_them(client: TestClient, corpus: Corpus) -> None:
    """Found in the walkthrough: `-F filter=MR... -F filter=CT...` searched CT alone, and
    `?limit=3&limit=4` counted one of them, silently. Fields that take a list (files, roles,
    example ids, a facet's filter values) may still repeat."""
    query = png_bytes(make_frame("circles", np.random.default_rng(5)))
    twice = client.post(
        f"/v1/collections/{COLLECTION}/search/image",
        files=[("file", ("q.png", query, "image/png"))],
        data={"filter": ['{"modality": ["MR"]}', '{"modality": ["CT"]}'], "limit": "5"},
    )
    assert twice.status_code == 400, twice.text
    error = twice.json()["error"]
    assert error == {
        "code": "repeated_field",
        "message": "form field 'filter' given 2 times; give it once",
        "field": "filter",
    }
    render = client.post(
        "/v1/render", files={"file": ("q.png", query, "image/png")}, data={"size": ["64", "128"]}
    )
    assert render.status_code == 400 and render.json()["error"]["field"] == "size", render.text
    facets = client.get(
        f"/v1/collections/{COLLECTION}/facets/modality", params=[("limit", "3"), ("limit", "4")]
    )
    assert facets.status_code == 400, facets.text
    assert facets.json()["error"]["message"] == "query parameter 'limit' given 2 times; give it once"
    # lists repeat: two files as examples, two values of one filter field
    two = client.post(
        f"/v1/collections/{COLLECTION}/search/image",
        files=[("file", ("a.png", query, "image/png")), ("file", ("b.png", query, "image/png"))],
        data={"role": ["positive", "positive"], "limit": "3"},
    )
    assert two.status_code == 200 and len(two.json()["hits"]) == 3, two.text
    both = client.get(
        f"/v1/collections/{COLLECTION}/facets/modality", params=[("modality", "MR"), ("modality", "CT")]
    )
    assert both.status_code == 200 and set(both.json()["counts"]) == {"MR", "CT"}, both.text


def test_upload_limit_bounds_are_422(client: TestClient) -> None:
    query = png_bytes(make_frame("circles", np.random.default_rng(5)))
    assert upload(client, query, limit=0).status_code == 422
    assert upload(client, query, limit=5000).status_code == 422
    assert upload(client, query, offset=-1).status_code == 422


# -- thumbnails ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 256])
def test_thumbnail_is_a_png_of_the_requested_size(client: TestClient, corpus: Corpus, size: int) -> None:
    pid = corpus.ids("circles")[0]
    response = client.get(f"/v1/collections/{COLLECTION}/points/{pid}/thumbnail", params={"size": size})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    assert image.size == (size, round(size * HEIGHT / WIDTH))  # aspect kept, longest side = size
    assert not image.info.get("dpi") and not getattr(image, "text", {})
    # the rendering is of the right picture: its downscaled pixels match the stored frame
    expected = Image.fromarray(corpus.frames[pid]).resize(image.size)
    diff = np.abs(np.asarray(image.convert("L"), dtype=np.int16) - np.asarray(expected, dtype=np.int16))
    assert diff.mean() < 10


def test_thumbnail_default_size_and_bounds(client: TestClient, corpus: Corpus) -> None:
    pid = corpus.ids("noise")[0]
    response = client.get(f"/v1/collections/{COLLECTION}/points/{pid}/thumbnail")
    assert Image.open(io.BytesIO(response.content)).size == (256, 192)
    assert client.get(f"/v1/collections/{COLLECTION}/points/{pid}/thumbnail?size=5000").status_code == 422


def test_thumbnail_of_missing_point_is_404(client: TestClient) -> None:
    assert client.get(f"/v1/collections/{COLLECTION}/points/{PID}/thumbnail").status_code == 404


@pytest.mark.parametrize("source", ["/nonexistent/folder", "ftp://host/x"])
def test_thumbnail_when_the_source_object_is_unreadable_is_502(
    client: TestClient, index: VectorIndex, corpus: Corpus, source: str
) -> None:
    # (an object missing from a readable source is a deleted one: 404, tests/search_api/test_quarantine.py)
    pid = point_id(source, "gone.png", 0)
    vector = np.ones((1, 512), dtype=np.float32)
    payload = build_payload({"modality": "CT", "source": source, "key": "gone.png", "frame": 0})
    index.upsert(COLLECTION, [pid], vector, [payload])
    try:
        response = client.get(f"/v1/collections/{COLLECTION}/points/{pid}/thumbnail")
        assert response.status_code == 502
        assert "cannot be read" in response.json()["detail"]
    finally:
        index.delete(COLLECTION, [pid])
