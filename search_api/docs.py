"""``/docs`` (Swagger UI) and ``/redoc`` served without a CDN, for air-gapped networks.

FastAPI's own pages load their scripts and styles from a CDN, so they stay blank where the
internet cannot be reached. The same pages are built here around the assets bundled in the
``fastapi-offline`` package (Swagger UI and ReDoc, as published), mounted under ``/docs-assets``.
The assets are public, like the pages: they hold no data, and the pages read ``/openapi.json``.

Each page carries a Content-Security-Policy that lets it load from this server only: Swagger UI's
inline start-up script runs by a per-response nonce, and ReDoc's footer logo, an image it always
asks of Redocly's CDN, is refused by the browser instead of leaking a request out of the network.
"""

from __future__ import annotations

import secrets
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

__all__ = ["ASSETS_PATH", "install_docs"]

ASSETS_PATH = "/docs-assets"


# Inline styles: both UIs set element styles from script (ReDoc through styled-components).
_CSP = (
    "default-src 'none'; script-src 'self'{nonce}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _with_csp(page: HTMLResponse, *, inline_scripts: bool) -> HTMLResponse:
    """``page`` with the CSP header; with ``inline_scripts``, its inline scripts get a fresh nonce."""
    nonce = ""
    if inline_scripts:
        token = secrets.token_urlsafe(16)
        page.body = bytes(page.body).replace(b"<script>", f'<script nonce="{token}">'.encode())
        page.headers["content-length"] = str(len(page.body))
        nonce = f" 'nonce-{token}'"
    page.headers["content-security-policy"] = _CSP.format(nonce=nonce)
    return page


def _assets_dir() -> Path:
    return Path(str(files("fastapi_offline").joinpath("static")))


def install_docs(app: FastAPI, *, docs_url: str = "/docs", redoc_url: str = "/redoc") -> None:
    """Add the two documentation pages and their assets to ``app`` (whose ``openapi_url`` is set)."""
    openapi_url = app.openapi_url
    if openapi_url is None:
        raise ValueError("the documentation pages need the app's OpenAPI document")
    app.mount(ASSETS_PATH, StaticFiles(directory=_assets_dir()), name="docs-assets")

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            # validatorUrl null: no badge image fetched from the public validator.
            swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
        )
        return _with_csp(page, inline_scripts=True)

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )
        return _with_csp(page, inline_scripts=False)

    # Plain routes, as FastAPI adds its own pages: outside the OpenAPI document and the API's
    # access policies (the pages and assets carry no data).
    app.add_route(docs_url, swagger_ui, include_in_schema=False)
    app.add_route(redoc_url, redoc, include_in_schema=False)
