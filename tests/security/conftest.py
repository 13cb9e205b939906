"""Shared fixtures of the security tests: keys for each role, OIDC tokens, a populated secured app."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from core.config import (
    ApiKeyEntry,
    ApiSettings,
    EventSettings,
    OidcSettings,
    RedisSettings,
    RuntimeSettings,
    SecuritySettings,
    Settings,
)
from core.index.base import VectorIndex
from core.index.factory import open_index
from search_api import create_app
from search_api.security import hash_api_key
from tests.conftest import free_port
from tests.search_api.test_api import Corpus, populate

KEYS: dict[str, str] = {
    "reader": "rs_test-reader-key-0123456789abcdefghijklmnopqrstuv",
    "ingest": "rs_test-ingest-key-0123456789abcdefghijklmnopqrstuv",
    "admin": "rs_test-admin-key-0123456789abcdefghijklmnopqrstuvw",
    "metrics": "rs_test-metrics-key-0123456789abcdefghijklmnopqrst",
}
WEBHOOK_TOKEN = "test-webhook-token-0123456789"
JWT_KEY = "test-oidc-shared-key-0123456789abcdef0123456789"
ISSUER = "https://keycloak.test/realms/radiology"
AUDIENCE = "radsearch"


def mint_jwt(roles: list[str], *, subject: str = "dr-who", expires_in: float = 300, **overrides: Any) -> str:
    """An HS256 token as the test OIDC issuer would sign it (Keycloak's realm_access.roles)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "iat": now,
        "exp": now + int(expires_in),
        "realm_access": {"roles": roles},
    }
    claims.update(overrides)
    return jwt.encode(claims, JWT_KEY, algorithm="HS256")


def secured_settings(data_dir: Path, **api: Any) -> Settings:
    """Settings with one key per role, an OIDC issuer (shared key), a webhook token, no Redis."""
    return Settings(
        data_dir=data_dir,
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(
            hash_key=SecretStr("test-hash-key"),
            api_keys=[
                ApiKeyEntry(name=f"{role}-bot", role=role, sha256=hash_api_key(key))
                for role, key in KEYS.items()
            ],
            oidc=OidcSettings(
                issuer=ISSUER,
                audience=AUDIENCE,
                role_claim="realm_access.roles",
                shared_key=SecretStr(JWT_KEY),
                algorithms=["HS256"],
            ),
        ),
        events=EventSettings(webhook_token=SecretStr(WEBHOOK_TOKEN)),
        # Nothing listens there: job routes answer 503 quickly instead of touching a real Redis.
        redis=RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0"),
        api=ApiSettings(**api),
    )


@dataclass
class SecuredApp:
    app: FastAPI
    client: TestClient
    corpus: Corpus
    settings: Settings
    index: VectorIndex


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredApp]:
    """The API with keys configured over a populated ``demo`` collection (docs off: the default)."""
    settings = secured_settings(tmp_path_factory.mktemp("data"))
    index = open_index(settings)
    corpus = populate(index, settings, tmp_path_factory.mktemp("images"))
    app = create_app(settings, index=index)
    with TestClient(app) as client:
        yield SecuredApp(app, client, corpus, settings, index)
    index.close()


def key_headers(role: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[role]}
