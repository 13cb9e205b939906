"""Schemathesis against the app's own OpenAPI spec, once per role: generated (and schema-violating)
requests to every operation never produce a server error, and protected operations refuse
anonymous calls (``ignored_auth``)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.python import asgi

from search_api import create_app
from tests.security.conftest import KEYS, SecuredApp

MAX_EXAMPLES = 12
ROLES = ["anonymous", "reader", "ingest", "admin"]


def _headers(role: str) -> dict[str, str]:
    return {} if role == "anonymous" else {"X-API-Key": KEYS[role]}


@pytest.fixture(scope="module")
def docs_app(secured: SecuredApp) -> Any:
    on = secured.settings.api.model_copy(update={"docs": True})
    return create_app(secured.settings.model_copy(update={"api": on}), index=secured.index)


@pytest.mark.slow
@pytest.mark.parametrize("role", ROLES)
def test_schemathesis_per_role(role: str, secured: SecuredApp, docs_app: Any) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", docs_app)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    statuses: Counter[int] = Counter()
    server_errors: list[str] = []
    ignored_auth: list[str] = []
    skipped = 0
    started = time.perf_counter()
    with asgi.get_client(docs_app) as client:

        def check(case: Any, protected: bool) -> None:
            response = case.call(session=client, headers=_headers(role))
            statuses[response.status_code] += 1
            label = f"{case.method} {case.path}"
            if response.status_code >= 500 and response.status_code != 503:
                server_errors.append(f"{label} -> {response.status_code}")
            if role == "anonymous" and protected and response.status_code not in (401, 404, 405):
                ignored_auth.append(f"{label} -> {response.status_code}")

        def make_run(strategy: Any, protected: bool) -> Any:
            @given(case=strategy)
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                check(case, protected)

            return run

        for operation in operations:
            protected = bool(operation.definition.raw.get("security"))
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    make_run(operation.as_strategy(generation_mode=mode), protected)()
                except Unsatisfiable:
                    skipped += 1  # nothing to break (e.g. negative cases of a parameterless GET)
    cases = sum(statuses.values())
    print(
        f"schemathesis[{role}]: operations={len(operations)} cases={cases} "
        f"server_errors={len(server_errors)} ignored_auth={len(ignored_auth)} "
        f"unsatisfiable_skipped={skipped} statuses={dict(sorted(statuses.items()))} "
        f"seconds={time.perf_counter() - started:.1f}"
    )
    assert not server_errors, server_errors[:20]
    assert not ignored_auth, ignored_auth[:20]
