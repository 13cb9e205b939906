"""The app factory: no module-level app or settings; the CLI calls ``create_app(settings)``."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from anyio import CapacityLimiter
from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute
from starlette.types import Scope

from core.catalog import Catalog
from core.config import Settings
from core.index.base import VectorIndex
from core.index.factory import open_index
from core.jobs.sqlite_store import open_owner_store
from core.snapshots import Trash
from core.store_claim import claim_store
from search_api.backfill_jobs import OwnerJobRunner
from search_api.body_limit import BodyLimitMiddleware
from search_api.deps import reject_unknown_query
from search_api.direct_search import DirectSearchMiddleware
from search_api.docs import install_docs
from search_api.errors import install_exception_handlers
from search_api.metrics import MetricsMiddleware
from search_api.offload import in_thread
from search_api.openapi import install_openapi
from search_api.request_id import RequestIdMiddleware
from search_api.routes import (
    admin,
    collections,
    compare,
    dicomweb,
    evaluation,
    events,
    health,
    jobs,
    metrics,
    points,
    render,
    search,
    web,
    workers,
)
from search_api.routing import RouteTable, is_upload_route
from search_api.security import AccessMiddleware, Authenticator, check_route_policies

__all__ = ["create_app"]

# Encoders serialise on their own lock; a few threads let decoding overlap with inference.
_INFERENCE_THREADS = 4
# Multipart framing and form fields around an upload of at most ``max_upload_bytes``.
_BODY_OVERHEAD_BYTES = 256 * 1024

logger = logging.getLogger(__name__)


def _unique_id(route: APIRoute) -> str:
    """The operation id: the endpoint's name (``search_by_image``), unique across the app (a test
    checks), which generated clients turn into their function names."""
    return route.name


def _open_collections(index: VectorIndex, done: threading.Event) -> None:
    try:
        index.open_collections()
    except Exception:  # the server still answers: a collection opens, or fails, at its first use
        logger.exception("opening the collections ahead of their first use failed")
    finally:
        done.set()


def create_app(settings: Settings, *, index: VectorIndex | None = None) -> FastAPI:
    """The search API over ``index`` (or the index the settings name, opened in the lifespan)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as started:  # what was started is stopped in reverse order
            try:
                await _start(app, started)
            except Exception as exc:
                # uvicorn ends a failed start with its own exit code; `serve_api` reads this.
                app.state.startup_error = exc
                raise
            yield

    async def _start(app: FastAPI, started: AsyncExitStack) -> None:
        if index is None and settings.store.backend == "edge":
            # A copy of this data dir served beside it on the same Redis would share its jobs. Let
            # go here, not after uvicorn returns: it ends a SIGTERM-ed process by the signal.
            claim = await in_thread(claim_store, settings)
            started.push_async_callback(in_thread, claim.close)
        opened = (
            index
            if index is not None
            else await in_thread(open_index, settings, child_process=settings.api.index_process)
        )
        if index is None:
            started.push_async_callback(in_thread, opened.close)
        app.state.index = opened
        if opened.supports_files:  # the owner starts: what expired in the trash goes
            await in_thread(Trash(settings).purge)
        # Loading the collections takes seconds at 1 M points: /readyz says so until it is done,
        # instead of the first searches waiting for it.
        app.state.collections_open = threading.Event()
        opening = threading.Thread(
            target=_open_collections,
            args=(opened, app.state.collections_open),
            name="open-collections",
            daemon=True,
        )
        opening.start()
        # A stop right after the start: no load races the close.
        started.push_async_callback(in_thread, opening.join)
        app.state.catalog = Catalog(opened, settings)
        app.state.inference_limiter = CapacityLimiter(_INFERENCE_THREADS)
        job_store, close_job_store = await in_thread(open_owner_store, settings)
        started.push_async_callback(in_thread, close_job_store)
        app.state.backfill = OwnerJobRunner(app.state.catalog, settings, job_store)
        started.push_async_callback(in_thread, app.state.backfill.close)
        # Jobs an earlier owner of this data dir left unfinished (killed mid-backfill) run again.
        await in_thread(app.state.backfill.resume)

    authenticator = Authenticator(settings.security)
    docs = settings.api.docs if settings.api.docs is not None else authenticator.open
    app = FastAPI(
        title="radsearch",
        summary="Content-based image retrieval for radiology",
        version="0.1.0",
        lifespan=lifespan,
        generate_unique_id_function=_unique_id,
        # The pages are added by `install_docs` (self-hosted assets, no CDN).
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        dependencies=[Depends(reject_unknown_query)],
    )
    if docs:
        install_docs(app)
    app.state.settings = settings
    app.state.authenticator = authenticator
    install_exception_handlers(app)
    app.include_router(health.router)
    # FastAPI tries the routes in this order, ~1.3 us each (behind the other routers, a search
    # paid 46 us per request): searches first. No other route takes their method and paths.
    app.include_router(search.router)
    app.include_router(collections.router)
    app.include_router(points.router)
    app.include_router(admin.router)
    app.include_router(compare.router)
    app.include_router(render.router)
    app.include_router(evaluation.router)
    app.include_router(jobs.router)
    app.include_router(workers.router)
    app.include_router(workers.store_router)
    app.include_router(events.router)
    app.include_router(metrics.router)
    app.include_router(dicomweb.router)
    app.include_router(dicomweb.search_router)
    app.include_router(web.router)
    check_route_policies(app)
    install_openapi(app, settings)

    upload_limit = settings.api.max_upload_bytes + _BODY_OVERHEAD_BYTES
    route_table = RouteTable(app.routes)

    def body_limit(scope: Scope) -> int:
        route = route_table.match(scope)
        # Image uploads, and batches of points (256 x 768-d vectors are ~4 MB of JSON).
        if route is not None and (
            is_upload_route(route) or points.takes_batches(route) or dicomweb.takes_uploads(route)
        ):
            return upload_limit
        return settings.api.max_json_bytes

    if settings.api.direct_search:
        # Innermost: a plain search is answered after the access check, within the body limit.
        app.add_middleware(DirectSearchMiddleware)
    # Added last = outermost: the access check runs before the body limit, which runs before parsing.
    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit)
    app.add_middleware(AccessMiddleware, routes=app.routes, authenticator=authenticator)
    # Outermost: a request refused by the access check or the body limit is timed too.
    app.add_middleware(MetricsMiddleware, routes=route_table)
    app.add_middleware(RequestIdMiddleware)
    return app
