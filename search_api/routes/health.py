from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response

from core.errors import StoreUnavailable
from search_api.deps import IndexDep
from search_api.offload import in_thread
from search_api.schemas import HealthPublic
from search_api.security import public

# Probes for orchestrators and load balancers: no data, no credentials.
router = APIRouter(tags=["health"], dependencies=[public("liveness/readiness probes")])
logger = logging.getLogger(__name__)


@router.get("/healthz")
async def read_liveness() -> HealthPublic:
    """Liveness: the process answers."""
    return HealthPublic(status="ok")


@router.get("/readyz", responses={503: {"model": HealthPublic}})
async def read_readiness(request: Request, index: IndexDep, response: Response) -> HealthPublic:
    """Readiness: the vector index answers and has opened its collections (after a start, seconds
    at 1 M points; until then ``{"status": "opening collections"}``; ``"store restarting"`` while
    a new store process replaces one that ended)."""
    if not request.app.state.collections_open.is_set():
        response.status_code = 503
        return HealthPublic(status="opening collections")
    try:
        await in_thread(index.list_collections)
    except StoreUnavailable:
        # the store's process is being replaced: logged there once, not at every probe
        response.status_code = 503
        return HealthPublic(status="store restarting")
    except Exception as exc:
        # any failure of the store means "not ready", whatever its type
        logger.warning("readiness check failed: %s", type(exc).__name__)
        response.status_code = 503
        return HealthPublic(status="unavailable")
    return HealthPublic(status="ok")
