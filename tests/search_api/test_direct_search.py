"""The direct search path (`search_api.direct_search`): the plain JSON searches it takes answer
exactly as FastAPI's route does, and everything else goes on to that route, body and all."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from core.calibration import calibrate
from core.config import Settings
from core.index.base import VectorIndex
from search_api import create_app
from search_api.direct_search import DirectSearchMiddleware
from tests.search_api.test_api import CANARY, COLLECTION, Corpus
from tests.security.conftest import KEYS, secured_settings

SEARCH = f"/v1/collections/{COLLECTION}/search"
# Who answers a case: the direct path, FastAPI's route, or the access check before either.
DIRECT, FASTAPI, ACCESS = "direct", "fastapi", "access"


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return secured_settings(tmp_path_factory.mktemp("data"))


class _CountingApp:
    """Counts the HTTP requests the direct path passes on to FastAPI."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.calls += 1
        await self.app(scope, receive, send)


def _count_passed_on(app: FastAPI) -> _CountingApp | None:
    """Wrap what the app's `DirectSearchMiddleware` passes requests on to (None: no direct path)."""
    node: Any = app.middleware_stack
    while node is not None:
        if isinstance(node, DirectSearchMiddleware):
            node.app = _CountingApp(node.app)
            return node.app
        node = getattr(node, "app", None)
    return None


def _cases(corpus: Corpus, vector: list[float]) -> list[tuple[str, dict[str, Any], str]]:
    """(case, request, who answers it)."""
    reader = {"X-API-Key": KEYS["reader"]}
    point = corpus.ids("circles")[0]

    def post(body: Any, *, path: str = SEARCH, headers: dict[str, str] = reader) -> dict[str, Any]:
        return {"url": path, "json": body, "headers": headers}

    def raw(content: bytes, content_type: str) -> dict[str, Any]:
        return {"url": SEARCH, "content": content, "headers": {**reader, "content-type": content_type}}

    return [
        ("by point", post({"point_id": point}), DIRECT),
        (
            "by point, filtered and paged",
            post({"point_id": point, "filter": {"modality": ["CT"]}, "limit": 3, "offset": 1}),
            DIRECT,
        ),
        ("by vector, threshold", post({"vector": vector, "score_threshold": 0.2, "limit": 5}), DIRECT),
        ("by vector, other patients", post({"vector": vector, "exclude": {"same_patient": True}}), DIRECT),
        ("unknown filter value", post({"point_id": point, "filter": {"anatomy": ["chset"]}}), DIRECT),
        ("unknown filter field", post({"point_id": point, "filter": {"modalty": ["CT"]}}), FASTAPI),
        ("a filter field without values", post({"point_id": point, "filter": {"modality": []}}), DIRECT),
        ("no such point", post({"point_id": "0" * 32}), DIRECT),
        ("a point id that is not one", post({"point_id": CANARY}), FASTAPI),
        ("a point id in another form", post({"point_id": point.replace("-", "").upper()}), DIRECT),
        ("limit over the maximum", post({"point_id": point, "limit": 5000}), DIRECT),
        ("vector of the wrong size", post({"vector": [0.5, 0.5]}), DIRECT),
        ("a field of the wrong type", post({"point_id": point, "limit": CANARY}), FASTAPI),
        ("a field it does not take", post({"point_id": point, "limt": CANARY}), FASTAPI),
        ("two queries", post({"point_id": point, "vector": vector}), FASTAPI),
        ("not JSON", raw(b"{" + CANARY.encode(), "application/json"), FASTAPI),
        ("plain text", raw(json.dumps({"point_id": point}).encode(), "text/plain"), FASTAPI),
        ("a query parameter", post({"point_id": point}, path=f"{SEARCH}?modalty=CT"), FASTAPI),
        ("no such collection", post({"point_id": point}, path="/v1/collections/nope/search"), DIRECT),
        (
            "a name no collection has",
            post({"point_id": point}, path="/v1/collections/Bad%20Name/search"),
            DIRECT,
        ),
        ("grouped", post({"point_id": point, "group_by": "object", "limit": 3}), FASTAPI),
        ("by point, other patients", post({"point_id": point, "exclude": {"same_patient": True}}), FASTAPI),
        ("by examples", post({"positive": [point]}), FASTAPI),
        ("no credentials", post({"point_id": point}, headers={}), ACCESS),
        (
            "a key without the reader role",
            post({"point_id": point}, headers={"X-API-Key": KEYS["metrics"]}),
            ACCESS,
        ),
    ]


def _answer(client: TestClient, request: dict[str, Any]) -> tuple[int, str | None, Any]:
    response = client.post(**request)
    assert int(response.headers["content-length"]) == len(response.content)
    body = response.json()
    if isinstance(body, dict):
        body.pop("took_ms", None)
    return response.status_code, response.headers.get("content-type"), body


def _run(
    settings: Settings, index: VectorIndex, cases: list[tuple[str, dict[str, Any], str]], *, direct: bool
) -> tuple[dict[str, tuple[int, str | None, Any]], dict[str, bool]]:
    """Each case's answer, and whether the app passed it on to FastAPI (direct path on only)."""
    app_settings = settings.model_copy(
        update={"api": settings.api.model_copy(update={"direct_search": direct})}
    )
    app = create_app(app_settings, index=index)
    answers, passed_on = {}, {}
    with TestClient(app) as client:
        counter = _count_passed_on(app)
        assert (counter is not None) == direct
        for name, request, _ in cases:
            before = counter.calls if counter is not None else 0
            answers[name] = _answer(client, request)
            passed_on[name] = counter is not None and counter.calls > before
    return answers, passed_on


@pytest.fixture(scope="module")
def vector(index: VectorIndex, corpus: Corpus) -> list[float]:
    (point,) = index.retrieve(COLLECTION, [corpus.ids("stripes")[0]], with_vectors=True)
    assert point.vector is not None
    return [float(x) for x in point.vector]


@pytest.mark.parametrize("calibrated", [False, True], ids=["uncalibrated", "calibrated"])
def test_direct_answers_are_fastapis(
    settings: Settings, index: VectorIndex, corpus: Corpus, vector: list[float], calibrated: bool
) -> None:
    if calibrated:
        assert calibrate(index, COLLECTION) is not None
    cases = _cases(corpus, vector)
    direct, passed_on = _run(settings, index, cases, direct=True)
    through_fastapi, _ = _run(settings, index, cases, direct=False)
    for name, _, answered_by in cases:
        assert passed_on[name] is (answered_by == FASTAPI), name
        assert direct[name] == through_fastapi[name], name
        assert CANARY not in json.dumps(direct[name][2]), name
    statuses = {name: answer[0] for name, answer in direct.items()}
    assert statuses["by point"] == statuses["grouped"] == statuses["by vector, threshold"] == 200
    assert statuses["no such point"] == statuses["no such collection"] == 404
    assert statuses["a point id that is not one"] == 422
    assert statuses["a point id in another form"] == 200
    assert statuses["limit over the maximum"] == 422 and statuses["unknown filter field"] == 400
    assert statuses["a filter field without values"] == 400
    assert statuses["no credentials"] == 401 and statuses["a key without the reader role"] == 403
    hits = direct["by point"][2]["hits"]
    point = corpus.ids("circles")[0]
    assert len(hits) == 10 and point not in {h["id"] for h in hits}
    assert corpus.class_of[hits[0]["id"]] == "circles"
    assert ("weak" in hits[0]) is calibrated and ("close_match" in direct["by point"][2]) is calibrated
    assert direct["unknown filter value"][2]["warnings"][0]["suggestions"] == ["chest"]


async def _post_in_chunks(app: FastAPI, path: str, chunks: list[bytes]) -> tuple[int, bytes]:
    """POST ``chunks`` as separate ASGI messages (as uvicorn hands over a body that arrives in
    parts), straight to the app."""
    pending: list[Message] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"x-api-key", KEYS["reader"].encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


@pytest.fixture
def served(settings: Settings, index: VectorIndex, corpus: Corpus) -> Iterator[tuple[TestClient, FastAPI]]:
    app = create_app(settings, index=index)
    with TestClient(app) as client:
        yield client, app


def test_a_body_in_parts_is_read_whole_and_replayed_whole(
    served: tuple[TestClient, FastAPI], corpus: Corpus
) -> None:
    client, app = served
    assert client.portal is not None
    counter = _count_passed_on(app)
    assert counter is not None
    point = corpus.ids("gradient")[0]
    plain = json.dumps({"point_id": point, "limit": 4}).encode()
    status, body = client.portal.call(_post_in_chunks, app, SEARCH, [plain[:5], plain[5:17], plain[17:]])
    hits = json.loads(body)["hits"]
    assert status == 200 and len(hits) == 4 and corpus.class_of[hits[0]["id"]] == "gradient"
    assert counter.calls == 0
    grouped = json.dumps({"point_id": point, "group_by": "object", "limit": 2}).encode()
    status, body = client.portal.call(_post_in_chunks, app, SEARCH, [grouped[:9], grouped[9:]])
    assert status == 200 and len(json.loads(body)["groups"]) == 2  # FastAPI read the replayed parts
    assert counter.calls == 1
