"""``/docs`` and ``/redoc`` render in a real browser with the network off (air-gapped hospitals).

Debian's chromium, headless, driven by Playwright; the served app is real (uvicorn on a free
port). Every request to anything but 127.0.0.1 is aborted and recorded, and the browser resolves
no host name, so a page that needs a CDN renders nothing and the test fails. Without chromium the
test is skipped on a developer's machine but fails in CI (``CI`` set): ``.ci/run`` installs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from core.config import ApiSettings, SecuritySettings, Settings
from search_api import create_app
from search_api.docs import ASSETS_PATH
from tests.search_api.browser import OFFLINE_ARGS, TIMEOUT_MS, Served, chromium


@pytest.fixture
def served(settings: Settings) -> Iterator[Served]:
    # API keys configured, docs switched on: the pages and their assets need no credentials.
    secured = settings.model_copy(
        update={
            "api": ApiSettings(docs=True),
            "security": SecuritySettings(
                hash_key="test-hash-key",  # type: ignore[arg-type]
                api_keys=[{"name": "ops", "role": "admin", "sha256": "0" * 64}],  # type: ignore[list-item]
            ),
        }
    )
    with Served(create_app(secured)) as server:
        yield server


def _operations(spec: dict[str, object]) -> list[tuple[str, str, str]]:
    """(method, path, summary) of every operation of the OpenAPI document."""
    paths = spec["paths"]
    assert isinstance(paths, dict)
    return [
        (method.upper(), path, str(op.get("summary", "")))
        for path, item in paths.items()
        for method, op in item.items()
        if method in {"get", "put", "post", "delete", "patch"}
    ]


def test_docs_and_redoc_render_offline(served: Served, tmp_path: Path) -> None:
    from playwright.sync_api import Route, sync_playwright

    executable = chromium()
    spec = httpx.get(f"{served.url}/openapi.json", timeout=10).json()
    operations = _operations(spec)
    assert len(operations) >= 20
    for page_path in ("/docs", "/redoc"):
        response = httpx.get(f"{served.url}{page_path}", timeout=10)
        html = response.text
        # Nothing but this server in the pages themselves, and a policy that keeps it so.
        assert "cdn." not in html and "googleapis" not in html, page_path
        assert f"{ASSETS_PATH}/" in html
        assert "default-src 'none'" in response.headers["content-security-policy"]

    outside: list[str] = []
    local: list[str] = []

    def guard(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1":
            local.append(url)
            route.continue_()
        else:
            outside.append(url)
            route.abort("internetdisconnected")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=executable,
            headless=True,
            # No name resolves: the network is off for the browser itself, not only for the page.
            args=OFFLINE_ARGS,
        )
        try:
            page = browser.new_page()
            page.route("**/*", guard)
            errors: list[str] = []
            refused: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(
                "console",
                lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None,
            )

            page.goto(f"{served.url}/docs", wait_until="load", timeout=TIMEOUT_MS)
            page.wait_for_selector(".opblock", timeout=TIMEOUT_MS)
            page.wait_for_function(
                f"document.querySelectorAll('.opblock').length >= {len(operations)}", timeout=TIMEOUT_MS
            )
            rendered = page.locator(".opblock").count()
            swagger_paths = set(page.locator(".opblock-summary-path").all_inner_texts())

            page.goto(f"{served.url}/redoc", wait_until="load", timeout=TIMEOUT_MS)
            page.wait_for_selector("h2", timeout=TIMEOUT_MS)
            redoc_text = page.locator("body").inner_text(timeout=TIMEOUT_MS)
            page.screenshot(path=str(tmp_path / "redoc.png"))
        finally:
            browser.close()

    assert not outside, f"requests to hosts other than 127.0.0.1: {outside}"
    assert not errors, errors
    # The one thing the policy refuses: the logo ReDoc's footer always asks of Redocly's CDN (the
    # browser blocks it before any request; the footer shows its text without the image).
    assert all("https://cdn.redoc.ly/redoc/logo-mini.svg" in line for line in refused), refused
    assert rendered >= len(operations)
    expected_paths = {path for _, path, _ in operations}
    # Swagger UI breaks long paths with zero-width spaces.
    assert expected_paths <= {p.replace("\u200b", "") for p in swagger_paths}
    missing = [summary for _, _, summary in operations if summary and summary not in redoc_text]
    assert not missing, f"operations ReDoc did not render: {missing}"
    assert any("/swagger-ui-bundle.js" in url for url in local)
    assert any("/redoc.standalone.js" in url for url in local)


def test_docs_assets_are_public_and_absent_when_docs_are_off(settings: Settings) -> None:
    from fastapi.testclient import TestClient

    keys = SecuritySettings(
        hash_key="test-hash-key",  # type: ignore[arg-type]
        api_keys=[{"name": "ops", "role": "admin", "sha256": "0" * 64}],  # type: ignore[list-item]
    )
    on = settings.model_copy(update={"api": ApiSettings(docs=True), "security": keys})
    with TestClient(create_app(on)) as client:
        response = client.get(f"{ASSETS_PATH}/swagger-ui-bundle.js")
        assert response.status_code == 200 and len(response.content) > 100_000
        assert client.get(f"{ASSETS_PATH}/redoc.standalone.js").status_code == 200
        assert client.get("/v1/collections").status_code == 401  # the API itself stays closed
    off = settings.model_copy(update={"api": ApiSettings(docs=False), "security": keys})
    with TestClient(create_app(off)) as client:
        for path in ("/docs", "/redoc", f"{ASSETS_PATH}/swagger-ui-bundle.js"):
            assert client.get(path).status_code == 404, path
