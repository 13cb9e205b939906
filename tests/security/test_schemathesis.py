"""Schemathesis against the app's own OpenAPI spec, once per role, with all its default checks:
generated (and schema-violating) requests to every operation get answers that conform to the
document (documented statuses, content types, response schemas, the error model), valid data is
accepted and invalid data rejected, no server error, and protected operations refuse anonymous
calls (``ignored_auth``)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup
from schemathesis.python import asgi

from search_api import create_app
from tests.security.conftest import KEYS, SecuredApp

# Cases per operation and generation mode. Admin reaches every operation's handler; the other roles
# mostly check where they are refused, which fewer cases cover (the four took 2.4 min at 12 each on
# the slowest host seen).
MAX_EXAMPLES = {"admin": 12, "anonymous": 6, "reader": 6, "ingest": 6}
ROLES = ["anonymous", "reader", "ingest", "admin"]

# Where the defaults of two checks do not fit this API, by design and documented per operation:
# - an image's content cannot be expressed in a schema: a schema-valid upload of random bytes is
#   refused 400/415 (not an image; STOW-RS: not multipart/related DICOM), so the upload routes may
#   answer those to valid data;
# - rules no schema states: an encoder name the registry lacks or a spec that cannot load (400
#   invalid_request/encoder_not_found), a backfill origin that is neither a collection nor s3://,
#   an alias named like a collection, an ingest source whose form depends on the executor (422);
# - 502/503/507 are documented answers (no job queue in this test: Redis is not running; weights
#   that cannot be had; a full disk), never 500;
# - invalid data may also be refused 413: a body over the route's limit (an over-long list of
#   points) is refused by its size before it is parsed.
CONFIG = {
    "checks": {
        "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "502", "503", "507"]},
        "negative_data_rejection": {
            "expected-statuses": [
                "400",
                "401",
                "403",
                "404",
                "405",
                "406",
                "409",
                "413",
                "415",
                "422",
                "428",
                "429",
                "5xx",
            ]
        },
    },
    "operations": [
        {
            "include-operation-id": ["create_collection", "create_backfill", "update_alias"],
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "429", "5xx"]
                }
            },
        },
        {
            "include-operation-id": ["create_ingest_job"],
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "422", "429", "5xx"]
                }
            },
        },
        {
            "include-operation-id": [
                "search_by_image",
                "compare_collections",
                "render_upload",
                "stow_instances",
                "stow_study_instances",
            ],
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "400", "401", "403", "404", "409", "415", "429"]
                }
            },
        },
    ],
}


def _headers(role: str) -> dict[str, str]:
    return {} if role == "anonymous" else {"X-API-Key": KEYS[role]}


@pytest.fixture(scope="module")
def docs_app(secured: SecuredApp) -> Any:
    on = secured.settings.api.model_copy(update={"docs": True})
    return create_app(secured.settings.model_copy(update={"api": on}), index=secured.index)


@pytest.mark.slow
@pytest.mark.parametrize("role", ROLES)
def test_schemathesis_per_role(role: str, secured: SecuredApp, docs_app: Any) -> None:
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", docs_app, config=SchemathesisConfig.from_dict(CONFIG)
    )
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    checked = 0
    skipped = 0
    started = time.perf_counter()
    headers = _headers(role)
    with asgi.get_client(docs_app) as client:

        def check(case: Any) -> None:
            nonlocal checked
            response = case.call(session=client, headers=headers)
            statuses[response.status_code] += 1
            try:
                case.validate_response(response, headers=headers, transport_kwargs={"session": client})
            except FailureGroup as group:  # one exception per failing check
                for exc in group.exceptions:
                    failures.append(f"{case.method} {case.path} -> {response.status_code}: {str(exc)[:700]}")
            checked += 1

        def make_run(strategy: Any) -> Any:
            @given(case=strategy)
            @settings(
                max_examples=MAX_EXAMPLES[role],
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                check(case)

            return run

        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    make_run(operation.as_strategy(generation_mode=mode))()
                except Unsatisfiable:
                    skipped += 1  # nothing to break (e.g. negative cases of a parameterless GET)
    print(
        f"schemathesis[{role}]: operations={len(operations)} cases={checked} failures={len(failures)} "
        f"unsatisfiable_skipped={skipped} statuses={dict(sorted(statuses.items()))} "
        f"seconds={time.perf_counter() - started:.1f}"
    )
    assert not failures, "\n".join(failures[:15])
