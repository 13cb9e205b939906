"""Modality codes are matched upper-case, labels also lower-case; filter values no point holds come
back as warnings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from core.catalog import Catalog
from core.config import RuntimeSettings, SecuritySettings, Settings
from core.encoders import get_spec
from core.filter_warnings import StoredValues, filter_warnings
from core.index.base import VectorIndex
from core.payload import SearchFilter, build_payload, point_id
from tests.search_api.test_api import COLLECTION, PER_CLASS, Corpus, png_bytes, search, upload

LEGACY = "legacy"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(hash_key=SecretStr("test-hash-key")),
    )


def test_payload_and_filter_upper_case_modality_only() -> None:
    payload = build_payload(
        {"modality": " mr ", "anatomy": "Lung", "pathology": ["Nodule"], "key": "a/B.png"}
    )
    assert (payload["modality"], payload["anatomy"], payload["pathology"], payload["key"]) == (
        "MR",
        "Lung",
        ["Nodule"],
        "a/B.png",
    )
    search_filter = SearchFilter.from_mapping({"modality": ["mr", "MR", "Ct"], "anatomy": ["Lung"]})
    assert search_filter.modality == ["MR", "CT"]
    assert search_filter.fields() == [("modality", ["MR", "CT"]), ("anatomy", ["Lung"])]
    # stores match the legacy spellings too, labels also lower-case (as ingest stores them)
    assert search_filter.conditions() == [
        ("modality", ["MR", "mr", "Mr", "CT", "ct", "Ct"]),
        ("anatomy", ["Lung", "lung"]),
    ]
    by_key = SearchFilter.from_mapping({"source": ["Archive"], "key": ["a/B.png"]})
    assert by_key.conditions() == [("source", ["Archive"]), ("key", ["a/B.png"])]  # exactly as given


def test_lower_case_modality_filter_matches_upper_case_payloads(client: TestClient, corpus: Corpus) -> None:
    body = search(client, point_id=corpus.ids("circles")[0], filter={"modality": ["mr"]}, limit=40)
    assert len(body["hits"]) == PER_CLASS
    assert {hit["payload"]["modality"] for hit in body["hits"]} == {"MR"}
    assert body["warnings"] == []


def test_capitalised_labels_match_what_ingest_stored_lower_case(client: TestClient, corpus: Corpus) -> None:
    """Found in the walkthrough: `--anatomy Chest` matched nothing (ingest stores labels lower-case)
    and warned "closest stored: chest"."""
    query = corpus.ids("circles")[0]
    lower = search(client, point_id=query, filter={"anatomy": ["chest"]}, limit=40)
    capitalised = search(
        client, point_id=query, filter={"anatomy": ["Chest"], "split": ["TEST", "train"]}, limit=40
    )
    assert lower["hits"] and capitalised["hits"] == lower["hits"]
    assert capitalised["warnings"] == []


def test_unmatched_value_warns_with_the_closest_stored_values(client: TestClient, corpus: Corpus) -> None:
    body = search(client, point_id=corpus.ids("circles")[0], filter={"anatomy": ["lugn", "chest"]}, limit=40)
    assert len(body["hits"]) == 2 * PER_CLASS - 1  # "chest" still matches (the query point aside)
    assert body["warnings"] == [
        {
            "field": "anatomy",
            "value": "lugn",
            "message": "filter anatomy='lugn' matches no stored value; "
            "none is close (stored: abdomen, brain, chest)",
            "suggestions": [],
        }
    ]
    typo = search(
        client, point_id=corpus.ids("circles")[0], filter={"anatomy": ["chset"], "pathology": ["nodul"]}
    )
    assert typo["hits"] == []
    assert [(w["field"], w["value"], w["suggestions"]) for w in typo["warnings"]] == [
        ("anatomy", "chset", ["chest"]),
        ("pathology", "nodul", ["nodule"]),
    ]
    assert "closest stored: chest" in typo["warnings"][0]["message"]
    # a long value is quoted cut short, and not compared with every stored value
    long = search(client, point_id=corpus.ids("circles")[0], filter={"anatomy": ["x" * 100_000]})
    [warning] = long["warnings"]
    assert warning["value"] == "x" * 100 + "..." and warning["suggestions"] == []
    assert len(warning["message"]) < 300
    # "chest,brain" typed for "chest or brain": said to be one value, with the parts to give apart
    [joined] = search(client, point_id=corpus.ids("circles")[0], filter={"anatomy": ["chest, brain"]})[
        "warnings"
    ]
    assert joined["suggestions"] == ["chest", "brain"]
    assert "it is one value, while chest, brain are each stored" in joined["message"]
    assert "--anatomy repeated on the command line" in joined["message"]
    # a comma in a value whose parts are not all stored is an ordinary miss
    [plain] = search(client, point_id=corpus.ids("circles")[0], filter={"anatomy": ["chest,lugn"]})[
        "warnings"
    ]
    assert "one value" not in plain["message"]
    # key is not a facet: an unknown key simply matches nothing
    assert search(client, point_id=corpus.ids("circles")[0], filter={"key": ["nope.png"]})["warnings"] == []


def test_image_and_compare_routes_warn(client: TestClient, corpus: Corpus) -> None:
    query = png_bytes(corpus.frames[corpus.ids("noise")[0]])
    response = upload(client, query, filter={"modality": ["us"], "dataset": ["synthetc"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["hits"] == []
    assert [(w["field"], w["value"], w["suggestions"]) for w in body["warnings"]] == [
        ("dataset", "synthetc", ["synthetic"])
    ]
    compared = client.post(
        "/v1/search/compare",
        files={"file": ("q.png", query, "image/png")},
        data={"collections": COLLECTION, "filter": json.dumps({"split": ["tset"]})},
    )
    assert compared.status_code == 200, compared.text
    [result] = compared.json()["results"]
    assert [(w["field"], w["suggestions"]) for w in result["warnings"]] == [("split", ["test"])]


@pytest.fixture(scope="module")
def legacy(index: VectorIndex, settings: Settings, corpus: Corpus) -> list[list[float]]:
    """A collection written before modality codes were upper-cased (payloads as stored then)."""
    Catalog(index, settings).create(LEGACY, get_spec("baseline"))
    vectors = np.random.default_rng(1).normal(size=(2, 512)).astype(np.float32)
    ids = [point_id("legacy", f"k{i}", 0) for i in range(2)]
    payloads = [
        {"modality": "mr", "anatomy": "lung", "key": "k0"},
        {"modality": "Ct", "anatomy": "liver", "key": "k1"},
    ]
    index.upsert(LEGACY, ids, vectors, payloads)
    return [v.tolist() for v in vectors]


def test_lugn_finds_nothing_and_suggests_lung(client: TestClient, legacy: list[list[float]]) -> None:
    response = client.post(
        f"/v1/collections/{LEGACY}/search", json={"vector": legacy[0], "filter": {"anatomy": ["lugn"]}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["hits"] == []
    assert response.json()["warnings"] == [
        {
            "field": "anatomy",
            "value": "lugn",
            "message": "filter anatomy='lugn' matches no stored value; closest stored: lung",
            "suggestions": ["lung"],
        }
    ]


def test_legacy_lower_case_payloads_still_match(client: TestClient, legacy: list[list[float]]) -> None:
    """Stored "mr" and "Ct" are found whatever the case given, and do not warn."""
    vectors = legacy
    for given, expected in (("MR", "mr"), ("mr", "mr"), ("ct", "Ct")):
        response = client.post(
            f"/v1/collections/{LEGACY}/search", json={"vector": vectors[0], "filter": {"modality": [given]}}
        )
        assert response.status_code == 200, response.text
        assert [h["payload"]["modality"] for h in response.json()["hits"]] == [expected]
        assert response.json()["warnings"] == []


class _CountingIndex:
    """Counts facet reads of a real index (the cache is what is under test)."""

    def __init__(self, index: VectorIndex) -> None:
        self.index = index
        self.reads = 0

    def facet(self, name: str, field: str, *, limit: int = 100, exact: bool = True) -> dict[str, int]:
        self.reads += 1
        return self.index.facet(name, field, limit=limit, exact=exact)


def test_stored_values_are_cached_and_refreshed_on_a_miss(index: VectorIndex, corpus: Corpus) -> None:
    now = [0.0]
    stored = StoredValues(ttl_s=300, refresh_s=5, clock=lambda: now[0])
    counting = _CountingIndex(index)
    known = SearchFilter(anatomy=["chest"])
    assert filter_warnings(counting, COLLECTION, None, stored) == []  # type: ignore[arg-type]
    assert counting.reads == 0  # no filter: no work
    for _ in range(3):
        assert filter_warnings(counting, COLLECTION, known, stored) == []  # type: ignore[arg-type]
    assert counting.reads == 1
    unknown = SearchFilter(anatomy=["knee"])
    assert len(filter_warnings(counting, COLLECTION, unknown, stored)) == 1  # type: ignore[arg-type]
    assert counting.reads == 1  # read 0 s ago: a miss does not re-read yet
    now[0] = 6.0
    assert len(filter_warnings(counting, COLLECTION, unknown, stored)) == 1  # type: ignore[arg-type]
    assert counting.reads == 2  # a miss after refresh_s re-reads (a value written since is found)
    stored.invalidate(COLLECTION)
    assert filter_warnings(counting, COLLECTION, known, stored) == []  # type: ignore[arg-type]
    assert counting.reads == 3


def test_stored_values_say_when_the_warnings_need_no_read(index: VectorIndex, corpus: Corpus) -> None:
    now = [0.0]
    stored = StoredValues(ttl_s=300, refresh_s=5, clock=lambda: now[0])
    known, unknown = SearchFilter(anatomy=["chest"]), SearchFilter(anatomy=["knee"])
    assert stored.answers(COLLECTION, None)
    assert not stored.answers(COLLECTION, known)  # nothing cached yet
    filter_warnings(index, COLLECTION, known, stored)
    assert stored.answers(COLLECTION, known)
    assert stored.answers(COLLECTION, unknown)  # a miss read 0 s ago: the cache answers
    assert not stored.answers(COLLECTION, SearchFilter(anatomy=["chest"], modality=["CT"]))  # not read
    now[0] = 6.0
    assert stored.answers(COLLECTION, known)
    assert not stored.answers(COLLECTION, unknown)  # a miss after refresh_s is read again
    now[0] = 301.0
    assert not stored.answers(COLLECTION, known)  # expired


def test_a_value_whose_points_were_all_deleted_warns_once_reread(index: VectorIndex, corpus: Corpus) -> None:
    now = [0.0]
    stored = StoredValues(ttl_s=300, refresh_s=5, clock=lambda: now[0])
    elbow = SearchFilter(anatomy=["elbow"])
    extra = point_id("test", "deleted-elbow.png", 0)
    dim = index.collection_config(COLLECTION).dim
    index.upsert(COLLECTION, [extra], np.ones((1, dim), np.float32), [{"anatomy": "elbow", "modality": "CR"}])
    try:
        assert filter_warnings(index, COLLECTION, elbow, stored) == []
    finally:
        index.delete(COLLECTION, [extra])
    now[0] = 301.0  # the cached values expired: read again
    warnings = filter_warnings(index, COLLECTION, elbow, stored)
    assert [(w.field, w.value) for w in warnings] == [("anatomy", "elbow")]
