"""The live workers, as their heartbeats describe them (``radsearch jobs workers``), and the store
they must write (``GET /v1/store``)."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from core.config import Settings
from core.store_identity import store_id
from search_api.deps import worker_gateway
from search_api.errors import ApiError, error_responses
from search_api.offload import in_thread
from search_api.security import Role, require_role
from workers.client import BrokerUnavailable
from workers.heartbeat import WorkerBeat, live_workers

router = APIRouter(prefix="/v1/workers", tags=["workers"], dependencies=[require_role(Role.INGEST)])
store_router = APIRouter(prefix="/v1", tags=["workers"], dependencies=[require_role(Role.INGEST)])


class WorkerPublic(BaseModel):
    hostname: str = Field(description="the worker's node name (radsearch worker --hostname)")
    pid: int = Field(description="process id of the worker's main process, on its host")
    queues: list[str] = Field(description="the queues it consumes: plan, embed")
    concurrency: int
    active: int = Field(description="tasks running at its last heartbeat")
    started_at: str
    last_seen: str = Field(description="its last heartbeat (ISO 8601, UTC)")
    store: str | None = Field(
        description="the store it writes (GET /v1/store); null where it could not tell at its start"
    )


class WorkersPublic(BaseModel):
    data: list[WorkerPublic]
    count: int


@router.get("", responses=error_responses(503))
async def read_workers(request: Request) -> WorkersPublic:
    """Live workers: those heard from within ``celery.worker_dead_after_s``, by hostname."""
    settings: Settings = request.app.state.settings
    store = worker_gateway(request).store
    try:
        beats: list[WorkerBeat] = await in_thread(
            live_workers, store.client, dead_after_s=settings.celery.worker_dead_after_s
        )
    except (BrokerUnavailable, redis.exceptions.RedisError) as exc:
        raise ApiError(503, "queue_unavailable", "job queue unavailable") from exc
    data = [WorkerPublic.model_validate(beat.to_dict()) for beat in beats]
    return WorkersPublic(data=data, count=len(data))


class StorePublic(BaseModel):
    store_id: str = Field(description="this deployment's store (core.store_identity): jobs carry it")
    backend: str = Field(description="edge (the embedded store this server owns) or qdrant")


@store_router.get("/store")
async def read_store(request: Request) -> StorePublic:
    """The store this server writes, which its workers compare with each job's: a job of another
    store (two deployments sharing one Redis database) is left to that store's workers."""
    settings: Settings = request.app.state.settings
    return StorePublic(store_id=await in_thread(store_id, settings), backend=settings.store.backend)
