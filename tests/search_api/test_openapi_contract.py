"""The OpenAPI document is exact: every error answer is the error model, uploads are binary, bounds
appear, payloads and filters are typed, operation ids are clean; the error mapping and the
clients that read error bodies agree with it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.api_client import ApiClient
from core.config import ApiSettings, Settings
from core.errors import CollectionNotFound, ConfigError, RadsearchError
from core.index.factory import open_index
from core.payload import FILTER_FIELDS, PAYLOAD_FIELDS
from search_api import create_app
from search_api.errors import STATUS_BY_ERROR, code_for, error_responses, status_for

_REF = "#/components/schemas/ErrorBody"
# Free-form objects that remain, on purpose: an encoder's architecture overrides (any config of
# the model family), the evaluation report (its shape follows `radsearch eval --json`), a job
# summary's extra keys, and:
UNTYPED_ALLOWED = {
    "components/schemas/EncoderSpec/properties/model_overrides/anyOf/0",
    "components/schemas/CollectionCreate/properties/encoder/anyOf/1",
    "components/schemas/JobSummary",
    # a snapshot's copy of the catalog record; a reconcile job's drift counts per collection
    "components/schemas/SnapshotCollectionPublic/properties/catalog",
    "components/schemas/IngestJobPublic/properties/drift/anyOf/0/additionalProperties",
    "paths//v1/collections/{name}/evaluate/post/responses/200/content/application/json/schema",
}


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), api=ApiSettings(docs=True, max_limit=500))
    index = open_index(settings)
    try:
        yield create_app(settings, index=index).openapi()
    finally:
        index.close()


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield method.upper(), path, operation


def test_every_error_answer_is_the_error_model(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert set(schemas["ErrorBody"]["properties"]) == {"error", "detail"}
    assert set(schemas["ErrorInfo"]["properties"]) == {"code", "message", "field"}
    for method, path, operation in _operations(document):
        errors = {status: r for status, r in operation["responses"].items() if int(status) >= 400}
        assert "400" in errors, (method, path)  # unknown query parameters, on every operation
        for status, response in errors.items():
            if path == "/readyz" and status == "503":
                continue  # readiness answers its own body
            assert response["content"]["application/json"]["schema"] == {"$ref": _REF}, (method, path, status)
        if path.startswith("/v1/") and not path.startswith("/v1/events"):
            assert {"401", "403"} <= set(errors), (method, path)
        if "{name}" in path and path.startswith("/v1/collections/"):
            assert "404" in errors, (method, path)
        if operation.get("parameters") or operation.get("requestBody"):
            assert "422" in errors, (method, path)
        if operation.get("requestBody"):
            assert "413" in errors, (method, path)
    image = document["paths"]["/v1/collections/{name}/search/image"]["post"]["responses"]
    assert {"400", "404", "413", "415", "422"} <= set(image)
    assert (
        "collection_exists" in document["paths"]["/v1/collections"]["post"]["responses"]["409"]["description"]
    )


def test_uploads_bounds_and_typed_schemas(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for body in ("Body_search_by_image", "Body_compare_collections"):
        file = schemas[body]["properties"]["file"]
        if body == "Body_search_by_image":  # the file part repeats: several examples
            assert file["type"] == "array"
            part = file["items"]
        else:
            part = file
        assert part["type"] == "string" and part["format"] == "binary" and "contentMediaType" not in part
        assert f"at most {64 * 1024 * 1024} bytes" in file["description"]
        assert schemas[body]["properties"]["limit"]["maximum"] == 500  # the settings' max_limit
    assert schemas["SearchQuery"]["properties"]["limit"]["maximum"] == 500
    collections = schemas["Body_compare_collections"]["properties"]["collections"]
    assert (collections["minItems"], collections["maxItems"]) == (1, 8)
    thumbnail = document["paths"]["/v1/collections/{name}/points/{point_id}/thumbnail"]["get"]
    assert thumbnail["responses"]["200"]["content"] == {
        "image/png": {"schema": {"type": "string", "format": "binary"}}
    }
    size = next(p for p in thumbnail["parameters"] if p["name"] == "size")["schema"]
    assert (size["minimum"], size["maximum"]) == (16, 1024)
    assert set(schemas["PayloadPublic"]["properties"]) == PAYLOAD_FIELDS
    assert set(schemas["PointPayloadIn"]["properties"]) == PAYLOAD_FIELDS
    assert set(schemas["SearchFilterIn"]["properties"]) == {*FILTER_FIELDS, "key"}
    for model in ("SearchQuery", "SearchFilterIn", "PointPayloadIn", "CollectionCreate", "IngestJobCreate"):
        assert schemas[model]["additionalProperties"] is False, model
    assert schemas["SearchQuery"]["properties"]["filter"]["anyOf"][0] == {
        "$ref": "#/components/schemas/SearchFilterIn"
    }
    assert schemas["SearchHit"]["properties"]["payload"] == {"$ref": "#/components/schemas/PayloadPublic"}
    assert schemas["CollectionDetailPublic"]["properties"]["spec"] == {
        "$ref": "#/components/schemas/EncoderSpec"
    }

    untyped: set[str] = set()

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            free = node.get("additionalProperties") in (True, {})
            bare = node.get("type") == "object" and "properties" not in node
            if free or (bare and "additionalProperties" not in node):
                untyped.add(where)
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk(document["components"], "components")
    walk(document["paths"], "paths")
    assert untyped == UNTYPED_ALLOWED


def test_operation_ids_are_the_endpoint_names(document: dict[str, Any]) -> None:
    ids = [operation["operationId"] for _, _, operation in _operations(document)]
    assert len(ids) == len(set(ids)) and all(i.isidentifier() and i.islower() for i in ids)
    assert "search_by_image" in ids and "compare_collections" in ids


def test_error_mapping_is_one_line_per_class() -> None:
    class WidgetMissing(RadsearchError):
        pass

    assert status_for(WidgetMissing("x")) == 500 and code_for(WidgetMissing) == "widget_missing"
    STATUS_BY_ERROR[WidgetMissing] = 424
    try:
        assert status_for(WidgetMissing("x")) == 424
        assert error_responses(WidgetMissing)[424]["description"].endswith("(codes: widget_missing)")
    finally:
        del STATUS_BY_ERROR[WidgetMissing]
    assert (
        code_for(CollectionNotFound) == "collection_not_found" and code_for(ConfigError) == "invalid_request"
    )


def test_api_client_reads_the_error_model(tmp_path: Path) -> None:
    answers = {
        "/model": httpx.Response(
            404, json={"error": {"code": "collection_not_found", "message": "gone"}, "detail": "x"}
        ),
        "/legacy": httpx.Response(400, json={"detail": "old shape"}),
    }
    client = ApiClient("http://radsearch.test")
    client._http = httpx.Client(
        base_url="http://radsearch.test", transport=httpx.MockTransport(lambda r: answers[r.url.path])
    )
    with pytest.raises(CollectionNotFound, match="^gone$"):
        client.request("GET", "/model")
    with pytest.raises(ConfigError, match="^old shape$"):
        client.request("GET", "/legacy")
