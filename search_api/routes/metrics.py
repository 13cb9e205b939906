"""``GET /metrics``: Prometheus' text format, for a scraper holding the ``metrics`` (or admin) role."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from search_api.deps import worker_gateway
from search_api.metrics import render_metrics
from search_api.offload import in_thread
from search_api.security import Role, require_role

router = APIRouter(tags=["metrics"], dependencies=[require_role(Role.METRICS)])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def read_metrics(request: Request) -> Response:
    """Request latency per route, search time and count per filter kind, ingest stage times and
    images per collection, queue depth, live workers, jobs by state and free disk (Prometheus text
    format). With keys on, a key of role ``metrics`` (or ``admin``) reads it."""
    worker_gateway(request)  # connects lazily: the queue gauges need it
    body = await in_thread(render_metrics, request.app.state)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
