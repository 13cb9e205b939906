"""The app factory: no module-level app or settings; the CLI calls ``create_app(settings)``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import CapacityLimiter
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from core.catalog import Catalog
from core.config import Settings
from core.index.base import VectorIndex
from core.index.factory import open_index
from search_api.errors import install_exception_handlers
from search_api.routes import collections, health, search, web

__all__ = ["create_app"]

# Encoders serialise on their own lock; a few threads let decoding overlap with inference.
_INFERENCE_THREADS = 4
# Multipart framing and form fields around an upload of at most ``max_upload_bytes``.
_BODY_OVERHEAD_BYTES = 256 * 1024


def _unique_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}"


def create_app(settings: Settings, *, index: VectorIndex | None = None) -> FastAPI:
    """The search API over ``index`` (or the index the settings name, opened in the lifespan)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        opened = index if index is not None else await run_in_threadpool(open_index, settings)
        app.state.index = opened
        app.state.catalog = Catalog(opened, settings)
        app.state.inference_limiter = CapacityLimiter(_INFERENCE_THREADS)
        try:
            yield
        finally:
            if index is None:
                await run_in_threadpool(opened.close)

    app = FastAPI(
        title="radsearch",
        summary="Content-based image retrieval for radiology",
        version="0.1.0",
        lifespan=lifespan,
        generate_unique_id_function=_unique_id,
        max_body_size=settings.api.max_upload_bytes + _BODY_OVERHEAD_BYTES,
    )
    app.state.settings = settings
    install_exception_handlers(app)
    app.include_router(health.router)
    app.include_router(collections.router)
    app.include_router(search.router)
    app.include_router(web.router)
    return app
