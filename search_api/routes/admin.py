"""Collections administration: create, drop, backfill, aliases (admin role).

Everything is on ``router`` so the auth layer can attach an admin-role dependency to all of it.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from core.catalog import Catalog, CollectionBusy
from core.errors import (
    CollectionExists,
    CollectionNotFound,
    ConfigError,
    EncoderNotFound,
    StoreFull,
    StoreOwned,
    WeightsUnavailable,
)
from search_api import admin_services
from search_api.backfill_jobs import OwnerJob, owner_jobs
from search_api.deps import COLLECTION_NAME, S3_URI, CatalogDep, InferenceLimiterDep, check_job_id, check_name
from search_api.errors import ApiError, error_responses
from search_api.schemas import (
    AliasesPublic,
    AliasPublic,
    AliasUpdate,
    BackfillCreate,
    BackfillJobPublic,
    CollectionCreate,
    CollectionDetailPublic,
)
from search_api.security import Role, require_role

router = APIRouter(prefix="/v1", tags=["admin"], dependencies=[require_role(Role.ADMIN)])

# The API reads only buckets on the configured S3 endpoint, never a path on the server's disk
# (owner-run ingest jobs aside: `search_api.backfill_jobs.check_local_path`).


@router.post(
    "/collections",
    status_code=201,
    responses=error_responses(
        ConfigError, EncoderNotFound, CollectionExists, WeightsUnavailable, StoreOwned, StoreFull
    ),
)
async def create_collection(
    body: CollectionCreate, catalog: CatalogDep, limiter: InferenceLimiterDep, response: Response
) -> CollectionDetailPublic:
    """Load the encoder, probe one image, create the collection with payload indexes and its spec."""
    created: CollectionDetailPublic = await anyio.to_thread.run_sync(
        partial(admin_services.create_collection, catalog=catalog, body=body), limiter=limiter
    )
    response.headers["Location"] = f"/v1/collections/{created.name}"
    return created


@router.delete(
    "/collections/{name}",
    status_code=204,
    responses=error_responses(CollectionNotFound, ConfigError, 409),
)
async def delete_collection(name: str, request: Request) -> Response:
    """Drop a collection by its own name; 409 while an alias points at it or a job writes to it
    (a backfill or ingest the server runs, or an unfinished Celery ingest job)."""
    check_name(name)
    try:
        await run_in_threadpool(owner_jobs(request).drop, name)
    except CollectionBusy as exc:
        raise ApiError(409, "collection_busy", str(exc), field="name") from None
    return Response(status_code=204)


def _job_public(job: OwnerJob) -> BackfillJobPublic:
    return BackfillJobPublic.model_validate(job.to_dict())


def _check_origin(catalog: Catalog, origin: str) -> None:
    if COLLECTION_NAME.match(origin):
        catalog.get(origin)  # 404 for an unknown collection or alias
    elif not S3_URI.match(origin):
        raise ConfigError("from must be a collection, an alias or an s3://bucket/prefix URI")


@router.post(
    "/collections/{name}/backfill",
    status_code=202,
    responses=error_responses(CollectionNotFound, ConfigError, EncoderNotFound),
)
async def create_backfill(
    name: str, body: BackfillCreate, catalog: CatalogDep, request: Request, response: Response
) -> BackfillJobPublic:
    """Embed every image another collection knows (or an s3:// source holds) into this collection.

    Insert-only: points a concurrent ingest wrote are never overwritten. Returns the job.
    """
    check_name(name)
    runner = owner_jobs(request)

    def submit() -> OwnerJob:
        _check_origin(catalog, body.from_)
        job = runner.job(runner.submit_backfill(name, body.from_, path_template=body.path_template))
        assert job is not None
        return job

    job = await run_in_threadpool(submit)
    response.headers["Location"] = f"/v1/backfill-jobs/{job.record.id}"
    return _job_public(job)


@router.get("/backfill-jobs/{job_id}", responses=error_responses(404))
async def read_backfill_job(job_id: str, request: Request) -> BackfillJobPublic:
    """A backfill job: state, counts, failed items, times and throughput."""
    check_job_id(job_id)
    job = await run_in_threadpool(owner_jobs(request).job, job_id)
    if job is None or job.kind != "backfill":
        raise ApiError(404, "job_not_found", "job not found", field="job_id")
    return _job_public(job)


@router.get("/backfill-jobs")
async def read_backfill_jobs(
    request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[BackfillJobPublic]:
    """Recent backfill jobs of this API process, newest first."""
    jobs = await run_in_threadpool(partial(owner_jobs(request).recent, "backfill", limit=limit))
    return [_job_public(job) for job in jobs]


@router.put("/aliases/{alias}", responses=error_responses(CollectionNotFound, ConfigError))
async def update_alias(alias: str, body: AliasUpdate, catalog: CatalogDep) -> AliasPublic:
    """Point an alias at a collection, atomically; searches through the alias switch at once."""
    previous = await run_in_threadpool(catalog.set_alias, alias, body.collection)
    return AliasPublic(alias=alias, collection=body.collection, previous=previous)


@router.get("/aliases")
async def read_aliases(catalog: CatalogDep) -> AliasesPublic:
    """Every alias and the collection it points at."""
    aliases = await run_in_threadpool(catalog.aliases)
    return AliasesPublic(aliases=[AliasPublic(alias=a, collection=c) for a, c in sorted(aliases.items())])


@router.delete("/aliases/{alias}", status_code=204, responses=error_responses(CollectionNotFound))
async def delete_alias(alias: str, catalog: CatalogDep) -> Response:
    """Remove an alias; its collection stays."""
    if not COLLECTION_NAME.match(alias):
        raise CollectionNotFound("no such alias")  # not echoed: whatever the caller sent
    await run_in_threadpool(catalog.delete_alias, alias)
    return Response(status_code=204)
