"""Authorisation matrix: every route of the app × every kind of caller → the expected status.

The route list comes from ``app.routes`` itself, so a route added later without an entry in
`EXPECTED` fails this test (and `check_route_policies` refuses to build an app with a route that
has no policy at all).
"""

from __future__ import annotations

import io
import logging
import re
import uuid
from typing import Any

import numpy as np
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from PIL import Image
from starlette.routing import BaseRoute

from search_api import create_app
from search_api.routing import iter_routes
from search_api.security import AUDIT_LOGGER, Role, route_policy
from tests.security.conftest import KEYS, WEBHOOK_TOKEN, SecuredApp, key_headers, mint_jwt

READER, INGEST, ADMIN, METRICS, CLINICIAN = (
    Role.READER,
    Role.INGEST,
    Role.ADMIN,
    Role.METRICS,
    Role.CLINICIAN,
)
ANY_ROLE = frozenset({READER, INGEST, ADMIN})
PUBLIC = "public"
WEBHOOK = "webhook"

# (method, path template) → who may call it. Every route of the app must be listed here.
EXPECTED: dict[tuple[str, str], frozenset[Role] | str] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/"): PUBLIC,
    ("GET", "/static/{asset}"): PUBLIC,
    ("GET", "/v1/collections"): ANY_ROLE,
    ("GET", "/v1/collections/{name}"): ANY_ROLE,
    ("GET", "/v1/collections/{name}/points/{point_id}"): frozenset({READER}),
    ("GET", "/v1/collections/{name}/facets/{field}"): frozenset({READER}),
    ("GET", "/v1/collections/{name}/points/{point_id}/thumbnail"): frozenset({READER}),
    ("POST", "/v1/collections/{name}/search"): frozenset({READER}),
    ("POST", "/v1/collections/{name}/search/image"): frozenset({READER}),
    ("POST", "/v1/collections/{name}/evaluate"): frozenset({READER}),
    ("POST", "/v1/collections/{name}/search/dicomweb"): frozenset({READER}),
    # A PACS or modality pushes instances (STOW-RS): the ingest side.
    ("POST", "/v1/dicomweb/studies"): frozenset({INGEST}),
    ("POST", "/v1/dicomweb/studies/{study_uid}"): frozenset({INGEST}),
    # The store's owner writes what the workers (or users) computed: the ingest side.
    ("PUT", "/v1/collections/{name}/points"): frozenset({INGEST}),
    ("POST", "/v1/collections/{name}/points/delete"): frozenset({INGEST}),
    ("POST", "/v1/collections/{name}/points/lookup"): frozenset({INGEST}),
    ("POST", "/v1/collections/{name}/points/scroll"): frozenset({INGEST}),
    ("POST", "/v1/collections/{name}/points/payload"): frozenset({INGEST}),
    ("PUT", "/v1/collections/{name}/sources"): frozenset({INGEST}),
    ("POST", "/v1/collections/{name}/sources/overlaps"): frozenset({INGEST}),
    ("POST", "/v1/collections/{name}/optimize"): frozenset({INGEST}),
    ("POST", "/v1/ingest-jobs"): frozenset({INGEST}),
    ("GET", "/v1/ingest-jobs"): frozenset({INGEST}),
    ("GET", "/v1/ingest-jobs/{job_id}"): frozenset({INGEST}),
    ("GET", "/v1/workers"): frozenset({INGEST}),
    ("GET", "/v1/store"): frozenset({INGEST}),
    # Prometheus' scrape key (role metrics) or an administrator.
    ("GET", "/metrics"): frozenset({METRICS}),
    ("POST", "/v1/events/s3"): WEBHOOK,
    ("POST", "/v1/search/compare"): frozenset({READER}),
    ("GET", "/v1/collections/{name}/points/{point_id}/image"): frozenset({READER}),
    ("POST", "/v1/render"): frozenset({READER}),
    ("POST", "/v1/collections"): frozenset({ADMIN}),
    ("DELETE", "/v1/collections/{name}"): frozenset({ADMIN}),
    ("POST", "/v1/collections/{name}/backfill"): frozenset({ADMIN}),
    ("GET", "/v1/backfill-jobs"): frozenset({ADMIN}),
    ("GET", "/v1/backfill-jobs/{job_id}"): frozenset({ADMIN}),
    ("GET", "/v1/aliases"): frozenset({ADMIN}),
    ("PUT", "/v1/aliases/{alias}"): frozenset({ADMIN}),
    ("DELETE", "/v1/aliases/{alias}"): frozenset({ADMIN}),
    ("POST", "/v1/collections/{name}/restore"): frozenset({ADMIN}),
    ("POST", "/v1/collections/{name}/calibrate"): frozenset({ADMIN}),
    ("GET", "/v1/trash"): frozenset({ADMIN}),
    ("POST", "/v1/snapshots"): frozenset({ADMIN}),
    ("GET", "/v1/snapshots"): frozenset({ADMIN}),
    ("POST", "/v1/snapshots/{snapshot_id}/restore"): frozenset({ADMIN}),
    # FastAPI's own documentation routes, present only while docs are on.
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/redoc"): PUBLIC,
}

# Role grants: admin also holds ingest and metrics, never reader (see search_api/security.py).
GRANTS = {
    READER: {READER},
    INGEST: {INGEST},
    ADMIN: {ADMIN, INGEST, METRICS},
    METRICS: {METRICS},
    CLINICIAN: {CLINICIAN, READER},
}

CALLERS: dict[str, dict[str, str]] = {
    "anonymous": {},
    "wrong_key": {"X-API-Key": "rs_not-a-configured-key"},
    "reader": key_headers("reader"),
    "ingest": key_headers("ingest"),
    "admin": key_headers("admin"),
    "metrics": key_headers("metrics"),
    "bearer_key_reader": {"Authorization": f"Bearer {KEYS['reader']}"},
}
ROLE_OF = {
    "reader": READER,
    "ingest": INGEST,
    "admin": ADMIN,
    "metrics": METRICS,
    "bearer_key_reader": READER,
}


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _routes(app_routes: list[BaseRoute]) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, included routers flattened."""
    return sorted(
        (method, info.path) for info in iter_routes(app_routes) for method in info.methods if method != "HEAD"
    )


def _request(secured: SecuredApp, method: str, path: str) -> tuple[str, dict[str, Any]]:
    """A plausible request for a route: real ids where they exist, harmless names for writes."""
    point = next(iter(secured.corpus.class_of))
    # Writes and deletions aim at a collection that does not exist, so the admin column cannot
    # destroy the fixture; reads aim at the populated one.
    name = "demo" if method == "GET" or path.endswith("/search") or "search/" in path else "matrix_tmp"
    values = {"name": name, "point_id": point, "field": "modality", "job_id": str(uuid.uuid4())}
    url = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values.get(m.group(1), "matrix_tmp"), path)
    kwargs: dict[str, Any] = {}
    if path.endswith("/search/image"):
        kwargs["files"] = {"file": ("q.png", _png(), "image/png")}
    elif path.endswith("/search"):
        kwargs["json"] = {"point_id": point, "limit": 3}
    elif path == "/v1/ingest-jobs" and method == "POST":
        kwargs["json"] = {"source": "s3://matrix-bucket/prefix/", "collections": ["demo"]}
    elif path == "/v1/events/s3":
        kwargs["json"] = {"Records": []}
    elif method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = {}
    return url, kwargs


def _expected(policy: frozenset[Role] | str, caller: str, headers: dict[str, str]) -> str:
    if policy == PUBLIC:
        return "allowed"
    if policy == WEBHOOK:
        # API keys never open the webhook; only its own token does.
        return "allowed" if headers.get("Authorization") == f"Bearer {WEBHOOK_TOKEN}" else "401"
    assert isinstance(policy, frozenset)
    role = ROLE_OF.get(caller)
    if role is None:
        return "401"
    return "allowed" if GRANTS[role] & policy else "403"


def _classify(status: int) -> str:
    if status in (401, 403):
        return str(status)
    # Allowed callers may still get 404/409/422 (harmless inputs) or 503 (no Redis in this test);
    # never a 500.
    return "allowed" if status < 500 or status == 503 else f"server_error_{status}"


def _matrix(secured: SecuredApp, client: TestClient, routes: list[tuple[str, str]]) -> list[str]:
    callers = {**CALLERS, "webhook": {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}}
    for role in ("reader", "ingest", "admin"):
        callers[f"jwt_{role}"] = {"Authorization": f"Bearer {mint_jwt([role])}"}
        ROLE_OF[f"jwt_{role}"] = Role(role)
    callers["jwt_expired"] = {"Authorization": f"Bearer {mint_jwt(['admin'], expires_in=-3600)}"}
    callers["jwt_wrong_audience"] = {"Authorization": f"Bearer {mint_jwt(['admin'], aud='other-app')}"}
    callers["jwt_no_role"] = {"Authorization": f"Bearer {mint_jwt(['viewer'])}"}
    mismatches: list[str] = []
    cells = 0
    for method, path in routes:
        policy = EXPECTED[(method, path)]
        for caller, headers in callers.items():
            url, kwargs = _request(secured, method, path)
            response = client.request(method, url, headers=headers, **kwargs)
            expected = _expected(policy, caller, headers)
            if caller == "jwt_no_role" and expected != "allowed" and policy not in (PUBLIC, WEBHOOK):
                expected = "403"  # authenticated, but holds no radsearch role
            got = _classify(response.status_code)
            cells += 1
            if got != expected:
                mismatches.append(
                    f"{method} {path} as {caller}: expected {expected}, got {response.status_code}"
                )
    figures = f"routes={len(routes)} callers={len(callers)} cells={cells} mismatches={len(mismatches)}"
    print(f"authz_matrix: {figures}")
    return mismatches


def test_every_route_is_in_the_expected_table_and_has_a_policy(secured: SecuredApp) -> None:
    docs_app = create_app(
        secured.settings.model_copy(update={"api": secured.settings.api.model_copy(update={"docs": True})}),
        index=secured.index,
    )
    routes = _routes(secured.app.routes) + _routes(docs_app.routes)
    unknown = sorted({r for r in routes if r not in EXPECTED})
    assert not unknown, f"routes missing from the authorisation table: {unknown}"
    for info in iter_routes(secured.app.routes):
        if isinstance(info.route, APIRoute):
            assert route_policy(info) is not None, info.path


def test_authorisation_matrix(secured: SecuredApp) -> None:
    routes = _routes(secured.app.routes)
    unknown = [r for r in routes if r not in EXPECTED]
    assert not unknown, f"routes missing from the authorisation table: {unknown}"
    mismatches = _matrix(secured, secured.client, routes)
    assert not mismatches, "\n".join(mismatches)


def test_docs_are_off_once_keys_are_configured_and_switchable(secured: SecuredApp) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert secured.client.get(path, headers=key_headers("admin")).status_code == 404
    on = secured.settings.api.model_copy(update={"docs": True})
    with TestClient(
        create_app(secured.settings.model_copy(update={"api": on}), index=secured.index)
    ) as client:
        spec = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
    # The spec documents both ways to authenticate, and every protected operation requires one.
    schemes = spec["components"]["securitySchemes"]
    assert {"APIKeyHeader", "HTTPBearer"} <= set(schemes)
    protected = [op for item in spec["paths"].values() for op in item.values() if op.get("security")]
    assert len(protected) >= 10


def test_anonymous_upload_is_refused_before_the_body_is_read(secured: SecuredApp) -> None:
    # 20 MiB from nobody: the 401 comes from the access middleware, not after spooling the upload.
    big = b"\0" * (20 * 1024 * 1024)
    response = secured.client.post(
        "/v1/collections/demo/search/image", files={"file": ("q.png", big, "image/png")}
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    # and a malformed JSON body from nobody is a 401 too, not a parse error
    response = secured.client.post(
        "/v1/collections/demo/search", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 401


def test_two_credentials_at_once_are_refused_whichever_would_win(secured: SecuredApp) -> None:
    """Noticed in session 23: with X-API-Key and a bearer token both sent, the key won silently."""
    # A reader's key beside an admin's key as a bearer token (and the other way round): neither
    # passes; the caller is told to send one. The same on the direct search path and a route.
    point = next(iter(secured.corpus.class_of))
    for key, bearer in (("reader", "admin"), ("admin", "reader")):
        headers = {**key_headers(key), "Authorization": f"Bearer {KEYS[bearer]}"}
        for response in (
            secured.client.post("/v1/collections/demo/search", json={"point_id": point}, headers=headers),
            secured.client.get("/v1/collections", headers=headers),
        ):
            assert response.status_code == 401, response.text
            error = response.json()["error"]
            assert error["code"] == "ambiguous_credentials"
            assert "send one credential" in error["message"]
            assert KEYS[key] not in response.text and KEYS[bearer] not in response.text
    # either one alone still passes
    assert secured.client.get("/v1/collections", headers=key_headers("reader")).status_code == 200
    bearer_only = {"Authorization": f"Bearer {KEYS['reader']}"}
    assert secured.client.get("/v1/collections", headers=bearer_only).status_code == 200


def test_open_mode_serves_loopback_clients_only(secured: SecuredApp) -> None:
    open_settings = secured.settings.model_copy(
        update={"security": secured.settings.security.model_copy(update={"api_keys": [], "oidc": None})}
    )
    app = create_app(open_settings, index=secured.index)
    with TestClient(app, client=("127.0.0.1", 50000)) as local:
        assert local.get("/v1/collections").status_code == 200
        assert (
            local.post(
                "/v1/collections/demo/search", json={"point_id": next(iter(secured.corpus.class_of))}
            ).status_code
            == 200
        )
    with TestClient(app, client=("10.1.2.3", 50000)) as remote:
        assert remote.get("/v1/collections").status_code == 401
        assert remote.get("/healthz").status_code == 200


def test_audit_lines_for_ingest_and_admin_actions_and_refusals(
    secured: SecuredApp, caplog: pytest.LogCaptureFixture
) -> None:
    client = secured.client
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        client.post(
            "/v1/ingest-jobs",
            json={"source": "s3://audit-bucket/x/", "collections": ["demo"]},
            headers=key_headers("ingest"),
        )
        client.get("/v1/ingest-jobs", headers=key_headers("reader"))
        client.get("/v1/collections/demo/facets/modality", headers=key_headers("admin"))
        client.get("/v1/ingest-jobs")
        client.get("/v1/collections/demo/facets/modality", headers=key_headers("reader"))
        client.delete("/v1/collections/matrix_tmp", headers=key_headers("admin"))
    lines = [r.getMessage() for r in caplog.records if r.name == AUDIT_LOGGER]
    for line in lines:
        print(line)
    assert any(
        "who=ingest-bot role=ingest action=POST:/v1/ingest-jobs collection=demo result=503" in line
        for line in lines
    ), lines
    assert any(
        "who=reader-bot role=reader action=GET:/v1/ingest-jobs" in line and "result=403" in line
        for line in lines
    )
    assert any(
        "who=admin-bot role=admin" in line and "facets" in line and "result=403" in line for line in lines
    )
    assert any(
        "who=anonymous role=- action=GET:/v1/ingest-jobs" in line and "result=401" in line for line in lines
    )
    assert any(
        "who=admin-bot role=admin action=DELETE:/v1/collections/{name} collection=matrix_tmp" in line
        for line in lines
    )
    # a reader's allowed search-side call is not an ingest/admin action: no audit line
    assert not any("who=reader-bot" in line and "result=200" in line for line in lines)
    # audit lines carry names and route templates only: no keys
    assert not any(key in line for line in lines for key in KEYS.values())
    print(f"audit: lines={len(lines)} key_leaks=0")
