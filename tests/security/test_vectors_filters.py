"""Vectors and filters from clients: bad vectors and unknown filter fields/types are 400s decided
before any store call (query path), and bad vectors never reach a collection (ingest path)."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest

from core.errors import InvalidVector
from search_api.app import create_app
from tests.security.conftest import SecuredApp, key_headers

DIM = 512


class CountingIndex:
    """Wraps the real index and counts store calls (searches, awaited or not, and upserts),
    delegating everything."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.searches = 0
        self.upserts = 0

    def search(self, *args: Any, **kwargs: Any) -> Any:
        self.searches += 1
        return self._inner.search(*args, **kwargs)

    async def search_async(self, *args: Any, **kwargs: Any) -> Any:
        self.searches += 1
        return await self._inner.search_async(*args, **kwargs)

    def upsert(self, *args: Any, **kwargs: Any) -> Any:
        self.upserts += 1
        return self._inner.upsert(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_bad_query_vectors_are_400_before_the_store(secured: SecuredApp) -> None:
    from fastapi.testclient import TestClient

    counting = CountingIndex(secured.index)
    app = create_app(secured.settings, index=counting)  # type: ignore[arg-type]
    rejected: dict[str, int] = {}
    raw_bodies = {
        "nan": '{"vector": [NaN' + ", 0.1" * (DIM - 1) + "]}",
        "inf": '{"vector": [Infinity' + ", 0.1" * (DIM - 1) + "]}",
        "neg_inf": '{"vector": [-Infinity' + ", 0.1" * (DIM - 1) + "]}",
        "zero_norm": '{"vector": [' + ", ".join(["0.0"] * DIM) + "]}",
        "wrong_dim_short": '{"vector": [' + ", ".join(["0.1"] * (DIM - 1)) + "]}",
        "wrong_dim_long": '{"vector": [' + ", ".join(["0.1"] * (DIM + 1)) + "]}",
        "huge_values": '{"vector": [1e39' + ", 0.1" * (DIM - 1) + "]}",  # inf once cast to float32
        "not_numbers": '{"vector": ["a"' + ", 0.1" * (DIM - 1) + "]}",
    }
    with TestClient(app, headers=key_headers("reader")) as client:
        for name, body in raw_bodies.items():
            response = client.post(
                "/v1/collections/demo/search", content=body, headers={"content-type": "application/json"}
            )
            rejected[name] = response.status_code
        good = client.post("/v1/collections/demo/search", json={"vector": [0.1] * DIM})
    print(
        "vector_validation_query: "
        + " ".join(f"{k}={v}" for k, v in rejected.items())
        + f" store_calls_for_rejected={counting.searches - 1} good_status={good.status_code}"
    )
    assert all(status in (400, 422) for status in rejected.values()), rejected
    assert {rejected[k] for k in ("nan", "inf", "zero_norm", "wrong_dim_short", "wrong_dim_long")} == {400}
    assert good.status_code == 200
    assert counting.searches == 1  # only the good query reached the store


@pytest.mark.parametrize("backend", ["edge"])
def test_bad_vectors_never_reach_a_collection(secured: SecuredApp, backend: str) -> None:
    index = secured.index
    before = index.count("demo")
    cases = {
        "nan": np.full((1, DIM), np.nan, dtype=np.float32),
        "inf": np.full((1, DIM), np.inf, dtype=np.float32),
        "zero_norm": np.zeros((1, DIM), dtype=np.float32),
        "wrong_dim": np.ones((1, DIM - 3), dtype=np.float32),
    }
    rejected: dict[str, bool] = {}
    for name, vec in cases.items():
        with pytest.raises(InvalidVector):
            index.upsert("demo", ["00000000-0000-0000-0000-00000000000" + str(len(rejected))], vec, [{}])
        rejected[name] = True
    print(
        "vector_validation_ingest: "
        + " ".join(f"{k}_rejected={int(v)}" for k, v in rejected.items())
        + f" points_added={index.count('demo') - before}"
    )
    assert index.count("demo") == before


FILTER_ATTACKS: dict[str, Any] = {
    "unknown_field": {"patient_name": ["x"]},
    "raw_qdrant_must": {"must": [{"key": "modality", "match": {"value": "CT"}}]},
    "raw_qdrant_should": {"should": [{"key": "modality", "match": {"any": ["CT", "MR"]}}]},
    "must_not": {"must_not": [{"is_empty": {"key": "modality"}}]},
    "nested_object_value": {"modality": [{"$ne": "CT"}]},
    "dict_value": {"modality": {"match": {"value": "CT"}}},
    "number_value": {"modality": [1]},
    "bool_value": {"modality": True},
    "null_in_list": {"modality": [None]},
    "empty_list": {"modality": []},
    "too_many_values": {"modality": ["CT"] * 101},
    "not_an_object": ["modality", "CT"],
    "string_filter": "modality = CT",
    "dunder_key": {"__class__": ["x"]},
}


def _png(side: int = 48) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.arange(side * side, dtype=np.uint8).reshape(side, side)).save(out, format="PNG")
    return out.getvalue()


def test_filter_injection_is_400(secured: SecuredApp) -> None:
    """The image route gets a valid PNG, so only its filter can make it refuse (the upload half
    used to send a bare PNG signature, refused whatever the filter said); a valid filter with the
    same image answers 200."""
    point = next(iter(secured.corpus.class_of))
    statuses: dict[str, int] = {}
    upload_statuses: dict[str, int] = {}
    bypass = 0
    image = _png()
    control = secured.client.post(
        "/v1/collections/demo/search/image",
        files={"file": ("q.png", image, "image/png")},
        data={"filter": json.dumps({"modality": ["CT"]})},
        headers=key_headers("reader"),
    )
    assert control.status_code == 200, control.text
    for name, attack in FILTER_ATTACKS.items():
        response = secured.client.post(
            "/v1/collections/demo/search",
            json={"point_id": point, "filter": attack, "limit": 50},
            headers=key_headers("reader"),
        )
        statuses[name] = response.status_code
        if response.status_code == 200:
            bypass += 1
        upload = secured.client.post(
            "/v1/collections/demo/search/image",
            files={"file": ("q.png", image, "image/png")},
            data={"filter": json.dumps(attack)},
            headers=key_headers("reader"),
        )
        upload_statuses[name] = upload.status_code
        if upload.status_code == 200:
            bypass += 1
        elif upload.status_code in (400, 422):
            assert "filter" in upload.text.lower(), (name, upload.text)  # refused for the filter
    facet = secured.client.get(
        "/v1/collections/demo/facets/modality", params={"patient_name": "x"}, headers=key_headers("reader")
    )
    print(
        f"filter_injection: cases={len(FILTER_ATTACKS)} filter_bypass={bypass} statuses="
        + ",".join(f"{k}:{v}" for k, v in statuses.items())
        + f" facet_unknown_param_status={facet.status_code}"
    )
    assert bypass == 0
    assert all(status in (400, 422) for status in statuses.values()), statuses
    assert all(status in (400, 422) for status in upload_statuses.values()), upload_statuses
