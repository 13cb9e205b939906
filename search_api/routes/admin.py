"""Collections administration: create, drop, backfill, aliases, the trash, snapshots (admin role).

Everything is on ``router`` so the auth layer can attach an admin-role dependency to all of it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from core.calibration import calibrate
from core.catalog import Catalog, CollectionBusy
from core.errors import (
    CollectionExists,
    CollectionNotFound,
    ConfigError,
    EncoderNotFound,
    StoreFull,
    StoreOwned,
    UpstreamUnreachable,
    WeightsUnavailable,
)
from core.index.base import COLLECTION_NAME
from core.jobs import JobRecord
from core.s3 import S3_URI
from core.snapshots import SnapshotStore
from search_api import admin_services
from search_api.backfill_jobs import alias_blockers, owner_jobs
from search_api.deps import CatalogDep, InferenceLimiterDep, check_job_id, check_name
from search_api.errors import ApiError, error_responses
from search_api.offload import in_inference_thread, in_thread
from search_api.schemas import (
    AliasesPublic,
    AliasPublic,
    AliasSwitchedPublic,
    AliasUpdate,
    BackfillCreate,
    BackfillJobPublic,
    CalibrationPublic,
    CollectionCreate,
    CollectionDetailPublic,
    CollectionDropped,
    CollectionRestore,
    CollectionRestored,
    SnapshotCreate,
    SnapshotPublic,
    SnapshotRestore,
    SnapshotRestored,
    SnapshotsPublic,
    TrashEntryPublic,
    TrashPublic,
)
from search_api.security import Role, require_role

router = APIRouter(prefix="/v1", tags=["admin"], dependencies=[require_role(Role.ADMIN)])

# The API reads only buckets on the configured S3 endpoint, never a path on the server's disk
# (owner-run ingest jobs aside: `search_api.backfill_jobs.check_local_path`).


@router.post(
    "/collections",
    status_code=201,
    responses=error_responses(
        ConfigError,
        EncoderNotFound,
        CollectionExists,
        WeightsUnavailable,
        UpstreamUnreachable,
        StoreOwned,
        StoreFull,
    ),
)
async def create_collection(
    body: CollectionCreate, catalog: CatalogDep, limiter: InferenceLimiterDep, response: Response
) -> CollectionDetailPublic:
    """Load the encoder, probe one image, create the collection with payload indexes and its spec."""
    created: CollectionDetailPublic = await in_inference_thread(
        limiter, admin_services.create_collection, catalog=catalog, body=body
    )
    response.headers["Location"] = f"/v1/collections/{created.name}"
    return created


@router.delete(
    "/collections/{name}",
    responses=error_responses(CollectionNotFound, ConfigError, 409),
)
async def delete_collection(name: str, request: Request) -> CollectionDropped:
    """Drop a collection by its own name; 409 while an alias points at it or a job writes to it
    (a backfill or ingest the server runs, or an unfinished Celery ingest job).

    The embedded store moves it to the trash, restorable until ``expires_at``
    (``POST /v1/collections/{name}/restore``); a Qdrant server deletes it for good."""
    check_name(name)
    try:
        entry = await in_thread(owner_jobs(request).drop, name)
    except CollectionBusy as exc:
        raise ApiError(409, "collection_busy", str(exc), field="name") from None
    if entry is None:
        return CollectionDropped(
            name=name, trashed=False, message="deleted for good (a Qdrant server keeps no trash)"
        )
    return CollectionDropped(
        name=name,
        trashed=True,
        points=entry.points,
        dropped_at=entry.dropped_at,
        expires_at=entry.expires_at,
        message=f"moved to the trash until {entry.expires_at}; "
        f"POST /v1/collections/{name}/restore brings it back",
    )


@router.post(
    "/collections/{name}/restore",
    responses=error_responses(CollectionNotFound, CollectionExists, ConfigError),
)
async def restore_collection(
    name: str, catalog: CatalogDep, body: CollectionRestore | None = None
) -> CollectionRestored:
    """Bring a dropped collection back from the trash (under ``as`` if given); 409 while a
    collection or alias has that name again."""
    check_name(name)
    as_name = body.as_ if body is not None else None
    entry = await in_thread(catalog.trash.restore, catalog.index, name, as_name=as_name)
    return CollectionRestored(name=as_name or name, source=entry.name, points=entry.points)


def _calibrate(catalog: Catalog, name: str) -> CalibrationPublic:
    collection = catalog.resolve(name)
    record = calibrate(catalog.index, collection) or {"threshold": None}
    return CalibrationPublic(collection=collection, **record)


@router.post("/collections/{name}/calibrate", responses=error_responses(CollectionNotFound))
async def calibrate_collection(name: str, catalog: CatalogDep) -> CalibrationPublic:
    """Learn the collection's "no close match" threshold from its own scores now (as every load
    does when it ends): the 0.99 quantile of the best score of 200 queries drawn like the
    collection's vectors but depicting nothing in it. Hits below it come back ``weak``."""
    check_name(name)
    return await in_thread(_calibrate, catalog, name)


@router.get("/trash")
async def read_trash(catalog: CatalogDep) -> TrashPublic:
    """The dropped collections the trash holds, and when each expires."""
    entries = await in_thread(catalog.trash.list)
    return TrashPublic(trash=[TrashEntryPublic.model_validate(e.model_dump()) for e in entries])


def _snapshots(catalog: Catalog) -> SnapshotStore:
    return SnapshotStore(catalog.settings)


@router.post("/snapshots", status_code=201, responses=error_responses(CollectionNotFound, ConfigError))
async def create_snapshot(catalog: CatalogDep, body: SnapshotCreate | None = None) -> SnapshotPublic:
    """Snapshot collections of the embedded store (default: all) under ``<data>/snapshots/<id>``;
    each is copied while its writes wait, so it holds exactly what was written before."""
    names = body.collections if body is not None else None
    manifest = await in_thread(_snapshots(catalog).create, catalog.index, names)
    return SnapshotPublic.model_validate(manifest.model_dump())


@router.get("/snapshots")
async def read_snapshots(catalog: CatalogDep) -> SnapshotsPublic:
    """Every snapshot, oldest first."""
    manifests = await in_thread(_snapshots(catalog).list)
    return SnapshotsPublic(snapshots=[SnapshotPublic.model_validate(m.model_dump()) for m in manifests])


@router.post(
    "/snapshots/{snapshot_id}/restore",
    responses=error_responses(CollectionNotFound, CollectionExists, ConfigError, 409),
)
async def restore_snapshot(
    snapshot_id: str, catalog: CatalogDep, request: Request, body: SnapshotRestore | None = None
) -> SnapshotRestored:
    """Recreate a snapshot's collections (or one, under ``as``); 409 for a taken name unless
    ``force``: the collection there is dropped first, as ``DELETE`` would (to the trash; 409
    while an alias points at it or a job writes to it)."""
    body = body or SnapshotRestore()
    restored = await in_thread(
        _snapshots(catalog).restore,
        catalog.index,
        snapshot_id,
        collection=body.collection,
        as_name=body.as_,
        force=body.force,
        replace=owner_jobs(request).drop,  # refused while aliased or written; to the trash
    )
    return SnapshotRestored(
        snapshot=snapshot_id, restored=[CollectionRestored.model_validate(r) for r in restored]
    )


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

    def submit() -> JobRecord:
        _check_origin(catalog, body.from_)
        job = runner.job(runner.submit_backfill(name, body.from_, path_template=body.path_template))
        assert job is not None
        return job

    job = await in_thread(submit)
    response.headers["Location"] = f"/v1/backfill-jobs/{job.id}"
    return BackfillJobPublic.from_record(job)


@router.get("/backfill-jobs/{job_id}", responses=error_responses(404))
async def read_backfill_job(job_id: str, request: Request) -> BackfillJobPublic:
    """A backfill job: state, counts, failed items, times and throughput."""
    check_job_id(job_id)
    job = await in_thread(owner_jobs(request).job, job_id)
    if job is None or job.kind != "backfill":
        raise ApiError(404, "job_not_found", "job not found", field="job_id")
    return BackfillJobPublic.from_record(job)


@router.get("/backfill-jobs")
async def read_backfill_jobs(
    request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[BackfillJobPublic]:
    """Recent backfill jobs of this server (those of its earlier runs on the data dir included),
    newest first."""
    jobs = await in_thread(owner_jobs(request).recent, "backfill", limit=limit)
    return [BackfillJobPublic.from_record(job) for job in jobs]


@router.put(
    "/aliases/{alias}",
    responses=error_responses(CollectionNotFound, ConfigError, 409),
)
async def update_alias(
    alias: str, body: AliasUpdate, catalog: CatalogDep, request: Request
) -> AliasSwitchedPublic:
    """Point an alias at a collection, atomically; searches through the alias switch at once.

    409 naming what is missing while a backfill (or owner-run ingest) still writes to the
    collection or its index is not built, unless ``force``."""
    runner = owner_jobs(request)

    def switch() -> str | None:
        if not body.force:
            blockers = alias_blockers(catalog, runner.store, body.collection)
            if blockers:
                raise ApiError(
                    409,
                    "collection_not_ready",
                    f"collection {body.collection!r} is not ready: {'; '.join(blockers)} "
                    '(wait for it, or send "force": true)',
                    field="collection",
                )
        return catalog.set_alias(alias, body.collection)

    previous = await in_thread(switch)
    return AliasSwitchedPublic(alias=alias, collection=body.collection, previous=previous)


@router.get("/aliases")
async def read_aliases(catalog: CatalogDep) -> AliasesPublic:
    """Every alias and the collection it points at."""
    aliases = await in_thread(catalog.aliases)
    return AliasesPublic(aliases=[AliasPublic(alias=a, collection=c) for a, c in sorted(aliases.items())])


@router.delete("/aliases/{alias}", status_code=204, responses=error_responses(CollectionNotFound))
async def delete_alias(alias: str, catalog: CatalogDep) -> Response:
    """Remove an alias; its collection stays."""
    if not COLLECTION_NAME.match(alias):
        raise CollectionNotFound("no such alias")  # not echoed: whatever the caller sent
    await in_thread(catalog.delete_alias, alias)
    return Response(status_code=204)
