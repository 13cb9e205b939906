"""The points routes (role ingest): the batch route workers and users write through, deletion,
bookkeeping look-ups and listing, and building the index; a real Edge index behind the app."""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from core.catalog import Catalog
from core.config import RuntimeSettings, SecuritySettings, Settings
from core.encoders import get_spec
from core.index.base import VectorIndex
from core.index.factory import open_index
from core.payload import PAYLOAD_FIELDS, point_id
from search_api import create_app
from search_api.schemas import PointPayloadIn

COLLECTION = "pts"
ALIAS = "pts-live"
DIM = 512  # the baseline encoder's
SOURCE = "s3://scans/ct/"
# A value no response may carry back: the vectors sent are made of it.
MARKER = 0.123456789


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(hash_key=SecretStr("test-hash-key")),
    )


@pytest.fixture(scope="module")
def index(settings: Settings) -> Iterator[VectorIndex]:
    opened = open_index(settings)
    catalog = Catalog(opened, settings)
    catalog.create(COLLECTION, get_spec("baseline"))
    catalog.set_alias(ALIAS, COLLECTION)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def api(settings: Settings, index: VectorIndex) -> Iterator[TestClient]:
    with TestClient(create_app(settings, index=index)) as client:
        yield client


def _vector(seed: int, dim: int = DIM) -> list[float]:
    vector = np.random.default_rng(seed).normal(size=dim)
    return [float(v) for v in vector]


def _point(key: str, frame: int = 0, **payload: Any) -> dict[str, Any]:
    return {
        "id": point_id(SOURCE, key, frame),
        "vector": _vector(zlib.crc32(f"{key}#{frame}".encode())),
        "payload": {"source": SOURCE, "key": key, "frame": frame, "etag": f"e-{key}", "size": 100, **payload},
    }


def _put(api: TestClient, points: list[dict[str, Any]], name: str = COLLECTION, **extra: Any) -> Any:
    return api.put(f"/v1/collections/{name}/points", json={"points": points, **extra})


def _count(api: TestClient) -> int:
    points: int = api.get(f"/v1/collections/{COLLECTION}").json()["points"]
    return points


def _clear(api: TestClient) -> None:
    response = api.post(f"/v1/collections/{COLLECTION}/points/delete", json={"filter": {"source": [SOURCE]}})
    assert response.status_code == 200, response.text


def test_put_is_idempotent_and_stores_allow_listed_payload_only(api: TestClient) -> None:
    _clear(api)
    # a payload field outside the allow-list is refused, named, never echoed, never stored
    refused = _put(api, [_point("a.dcm", 0, modality="CT", PatientName="ZZCANARY^PATIENT", comment="x")])
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["field"]) == ("unknown_field", "points.0.payload.PatientName")
    assert "comment" in error["message"] and "ZZCANARY" not in refused.text
    assert _count(api) == 0
    points = [
        _point("a.dcm", 0, modality="CT", pathology="nodule"),
        _point("a.dcm", 1, modality="CT"),
        _point("b.png", 0, anatomy="chest"),
    ]
    response = _put(api, points)
    assert response.status_code == 200, response.text
    assert response.json() == {"collection": COLLECTION, "upserted": 3}
    assert _count(api) == 3
    assert _put(api, points).status_code == 200  # the same batch again: the same 3 points
    assert _count(api) == 3

    stored = api.get(f"/v1/collections/{COLLECTION}/points/{points[0]['id']}").json()["payload"]
    assert stored["pathology"] == ["nodule"] and stored["modality"] == "CT" and stored["ingested_at"]

    # stored L2-normalised: searching with the raw vector finds the point itself at cosine 1
    hits = api.post(f"/v1/collections/{COLLECTION}/search", json={"vector": points[2]["vector"], "limit": 1})
    assert hits.json()["hits"][0]["id"] == points[2]["id"]
    assert hits.json()["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_insert_only_leaves_existing_points_untouched(api: TestClient) -> None:
    _clear(api)
    first = _point("c.png", etag="old")
    assert _put(api, [first]).status_code == 200
    again = {**first, "payload": {**first["payload"], "etag": "new"}}
    assert _put(api, [again], insert_only=True).status_code == 200
    found = api.post(f"/v1/collections/{COLLECTION}/points/lookup", json={"ids": [first["id"]]}).json()
    assert found["points"][0]["etag"] == "old"


def test_an_alias_resolves_and_unknown_collections_are_404(api: TestClient) -> None:
    _clear(api)
    response = _put(api, [_point("via-alias.png")], name=ALIAS)
    assert response.status_code == 200 and response.json()["collection"] == COLLECTION
    assert _count(api) == 1
    for name in ("nope", "Bad Name"):
        assert _put(api, [_point("x.png")], name=name).status_code == 404
        assert api.post(f"/v1/collections/{name}/optimize").status_code == 404
        assert (
            api.post(f"/v1/collections/{name}/points/lookup", json={"ids": [str(uuid.uuid4())]}).status_code
            == 404
        )


def _marker_vector(dim: int = DIM) -> list[float]:
    return [MARKER] * dim


def test_bad_vectors_are_400_naming_the_point_and_never_echoed(api: TestClient) -> None:
    before = _count(api)
    good = {**_point("good.png"), "vector": _marker_vector()}
    cases = {
        "dimension": {**_point("d.png"), "vector": _marker_vector(DIM - 3)},
        "zero": {**_point("z.png"), "vector": [0.0] * DIM},
        "overflow": {**_point("o.png"), "vector": [MARKER] * (DIM - 1) + [1e39]},
    }
    for case, bad in cases.items():
        response = _put(api, [good, bad])
        assert response.status_code == 400, (case, response.text)
        assert "points[1].vector" in response.json()["detail"], response.text
        assert response.json()["error"]["field"] == "points[1].vector", response.text
        assert str(MARKER) not in response.text
    # NaN is no JSON number, but Python's JSON reader takes the token: refused as a vector
    body = json.dumps(
        {"points": [good, {**_point("n.png"), "vector": [MARKER] * (DIM - 1) + [float("nan")]}]}
    )
    response = api.put(
        f"/v1/collections/{COLLECTION}/points", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "points[1].vector contains NaN or Inf" in response.json()["detail"]
    assert response.json()["error"]["field"] == "points[1].vector"
    assert str(MARKER) not in response.text
    # schema errors (422; 400 for a field the schema does not take) name the field, never the values
    for broken, status, field in (
        (
            {"points": [{**good, "vector": [*_marker_vector(DIM - 1), "x"]}]},
            422,
            f"points.0.vector.{DIM - 1}",
        ),
        ({"points": [{**good, "id": "not-a-uuid"}]}, 422, "points.0.id"),
        ({"points": [good], "unknown": 1}, 400, "unknown"),
        ({"vectors": [_marker_vector()]}, 400, "vectors"),
    ):
        response = api.put(f"/v1/collections/{COLLECTION}/points", json=broken)
        assert response.status_code == status, response.text
        assert response.json()["error"]["field"] == field, response.text
        assert str(MARKER) not in response.text and "input" not in response.json()["error"]
    assert _count(api) == before  # nothing of a refused batch was written


def test_delete_by_ids_and_by_key_filter(api: TestClient) -> None:
    _clear(api)
    points = [_point(f"k{i}.png") for i in range(4)] + [_point("multi.dcm", f) for f in range(3)]
    assert _put(api, points).status_code == 200
    url = f"/v1/collections/{COLLECTION}/points/delete"
    by_ids = api.post(url, json={"ids": [points[0]["id"], points[1]["id"], str(uuid.uuid4())]})
    assert by_ids.json() == {"collection": COLLECTION, "deleted": 2}
    by_key = api.post(url, json={"filter": {"source": [SOURCE], "key": ["multi.dcm"]}})
    assert by_key.json()["deleted"] == 3
    assert _count(api) == 2
    assert api.post(url, json={"filter": {}}).status_code == 400  # would match every point
    assert api.post(url, json={"filter": {"key": []}}).status_code == 400
    assert api.post(url, json={"filter": {"patient": ["x"]}}).status_code == 400
    assert api.post(url, json={"ids": [points[2]["id"]], "filter": {"key": ["k2.png"]}}).status_code == 422
    assert api.post(url, json={}).status_code == 422
    assert _count(api) == 2


def test_lookup_and_scroll_answer_bookkeeping_fields_only(api: TestClient) -> None:
    _clear(api)
    points = [_point(f"s{i:02d}.png", modality="MR", pathology=["glioma"]) for i in range(25)]
    other = [{**_point("elsewhere.png"), "id": point_id("s3://other/", "elsewhere.png", 0)}]
    other[0]["payload"]["source"] = "s3://other/"
    assert _put(api, points + other).status_code == 200

    found = api.post(
        f"/v1/collections/{COLLECTION}/points/lookup", json={"ids": [points[3]["id"], str(uuid.uuid4())]}
    ).json()["points"]
    assert found == [
        {"id": points[3]["id"], "source": SOURCE, "key": "s03.png", "frame": 0, "n_frames": None,
         "frames_sampled": None, "etag": "e-s03.png", "size": 100, "labels_hash": None,
         "instance_hash": None}
    ]  # fmt: skip

    seen: list[dict[str, Any]] = []
    offset = None
    pages = 0
    while True:
        body = {"filter": {"source": [SOURCE]}, "limit": 10, "offset": offset}
        page = api.post(f"/v1/collections/{COLLECTION}/points/scroll", json=body).json()
        seen += page["points"]
        pages += 1
        offset = page["next_offset"]
        if offset is None:
            break
    assert pages == 3 and sorted(p["id"] for p in seen) == sorted(p["id"] for p in points)
    assert all("modality" not in p and "pathology" not in p for p in seen)


def test_batches_take_the_large_body_limit_and_other_routes_the_small_one(
    api: TestClient, settings: Settings
) -> None:
    _clear(api)
    points = [_point(f"big{i:03d}.png") for i in range(256)]
    body = json.dumps({"points": points})
    assert len(body) > settings.api.max_json_bytes  # a batch does not fit the JSON limit
    response = api.put(
        f"/v1/collections/{COLLECTION}/points", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 200 and response.json()["upserted"] == 256
    big_filter = {"filter": {"key": ["k" * 2000] * 600}}
    assert api.post(f"/v1/collections/{COLLECTION}/points/delete", json=big_filter).status_code == 413


def test_optimize_answers_points_and_indexed_vectors(api: TestClient) -> None:
    response = api.post(f"/v1/collections/{ALIAS}/optimize")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["collection"] == COLLECTION and body["points"] == _count(api)
    assert body["status"] == "green"  # small: searched exactly, nothing to build


def test_the_payload_schema_is_the_allow_list() -> None:
    assert set(PointPayloadIn.model_fields) == set(PAYLOAD_FIELDS)


def test_payload_overwrite_relabels_without_touching_vectors(api: TestClient, index: VectorIndex) -> None:
    """The relabel route replaces whole payloads (a label removed is gone), keeps vectors, skips
    ids that do not exist and drops fields outside the allow-list."""
    _clear(api)
    points = [_point("r0.png", anatomy="knee", pathology=["tear"]), _point("r1.png", anatomy="knee")]
    assert _put(api, points).status_code == 200
    count = _count(api)
    before = index.retrieve(COLLECTION, [points[0]["id"]], with_vectors=True)[0]
    refused = {"source": "scans", "key": "r0.png", "frame": 0, "anatomy": "hand", "patient_name": "ZZX"}
    body = {"points": [{"id": points[0]["id"], "payload": refused}]}
    response = api.post(f"/v1/collections/{ALIAS}/points/payload", json=body)
    assert response.status_code == 400 and "ZZX" not in response.text, response.text  # outside the allow-list
    assert response.json()["error"]["field"] == "points.0.payload.patient_name"
    new = {"source": "scans", "key": "r0.png", "frame": 0, "anatomy": "hand"}
    body = {"points": [{"id": points[0]["id"], "payload": new}, {"id": str(uuid.uuid4()), "payload": new}]}
    response = api.post(f"/v1/collections/{ALIAS}/points/payload", json=body)
    assert response.status_code == 200, response.text
    after = index.retrieve(COLLECTION, [points[0]["id"]], with_vectors=True)[0]
    assert after.payload["anatomy"] == "hand" and "pathology" not in after.payload
    assert after.payload["source"] == "scans" and "patient_name" not in after.payload
    assert before.vector is not None and after.vector is not None
    assert np.allclose(before.vector, after.vector)
    assert _count(api) == count  # the unknown id was not created
    assert index.retrieve(COLLECTION, [points[1]["id"]])[0].payload["anatomy"] == "knee"


def test_source_registration_is_kept_out_of_every_answer(api: TestClient, index: VectorIndex) -> None:
    """A stable source name maps to its URI in the collection's metadata; no answer shows the URI,
    and a name that could be a path is refused naming the field."""
    url = f"/v1/collections/{COLLECTION}/sources"
    secret = "/srv/archive/secret-site"
    assert api.put(url, json={"name": "site-a", "uri": secret}).status_code == 204
    assert Catalog(index, api.app.state.settings).source_uri(COLLECTION, "site-a") == secret  # type: ignore[attr-defined]
    bad = api.put(url, json={"name": "../etc", "uri": secret})
    assert bad.status_code == 400 and "name" in bad.json()["detail"] and "../etc" not in bad.text
    detail = api.get(f"/v1/collections/{COLLECTION}")
    assert detail.status_code == 200 and secret not in detail.text
    assert detail.json()["id_scheme"] == "v2"
    # the names that reach the same files: key prefixes, never a URI
    overlaps = f"/v1/collections/{COLLECTION}/sources/overlaps"
    around = api.post(overlaps, json={"name": "whole", "uri": "/srv/archive"})
    assert around.json() == {"overlaps": [{"name": "site-a", "strip": "secret-site/", "add": ""}]}
    inside = api.post(overlaps, json={"name": "part", "uri": f"{secret}/ct"})
    assert inside.json() == {"overlaps": [{"name": "site-a", "strip": "", "add": "ct/"}]}
    assert "/srv" not in around.text + inside.text
    assert api.put(url, json={"name": "raw/chest", "uri": "s3://raw"}).status_code == 204
    same_bucket = api.post(overlaps, json={"name": "raw", "uri": "s3://raw"}).json()
    assert same_bucket == {"overlaps": [{"name": "raw/chest", "strip": "", "add": ""}]}
    assert api.post(overlaps, json={"name": "other", "uri": "s3://other"}).json() == {"overlaps": []}
    pacs = api.post(overlaps, json={"name": "pacs", "uri": "dicomweb+http://pacs.example/dicom-web"})
    assert pacs.status_code == 200 and pacs.json() == {"overlaps": []}
    assert api.post(overlaps, json={"name": "../etc", "uri": "s3://raw"}).status_code == 400
