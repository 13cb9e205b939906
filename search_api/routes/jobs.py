"""Ingest jobs: submit, follow, list. Run by the Celery workers (``executor`` celery, the default)
or by the store's owner itself, this API process, with the inline pipeline (``executor`` owner)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Literal, ParamSpec, TypeVar

import redis
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from core.catalog import Catalog
from core.config import Settings
from core.encoders.registry import get_spec
from core.errors import CollectionExists, ConfigError, EncoderNotFound, StoreFull, WeightsUnavailable
from core.jobs import JOB_STATE_LOST, JobKind, JobRecord, JobSpec
from core.s3 import S3_URI
from core.store_identity import store_id
from ingest.labels import PathTemplate
from ingest.sources.base import check_source_name
from search_api import admin_services
from search_api.backfill_jobs import check_local_path, owner_jobs
from search_api.deps import check_job_id, worker_gateway
from search_api.errors import ApiError, UnknownField, error_responses
from search_api.offload import in_thread
from search_api.schemas import CollectionName, IngestJobPublic, IngestJobsPublic
from search_api.security import Role, note_collections, require_role
from workers.client import BrokerUnavailable, WorkerGateway, submit_job
from workers.heartbeat import job_waiting

P = ParamSpec("P")
T = TypeVar("T")

router = APIRouter(prefix="/v1/ingest-jobs", tags=["ingest-jobs"], dependencies=[require_role(Role.INGEST)])


class IngestJobCreate(BaseModel):
    """A bulk ingest of ``s3://bucket/prefix`` into one or more collections (one per encoder).

    ``executor`` owner: this server, the store's owner, runs the inline pipeline itself (no
    workers, no Redis); ``source`` may then also be an absolute folder path and ``manifest`` a file
    on this server's disk, read only while the API is open (no keys: loopback clients) or under
    ``RADSEARCH_API__INGEST_ROOTS``; missing collections are created with ``encoder`` (default
    baseline), and the job ends once the collections are indexed, with ``summary``.
    """

    model_config = ConfigDict(extra="forbid")

    # Before ``source``: its validators read it.
    executor: Literal["celery", "owner"] = Field(
        default="celery", description="celery (the workers) or owner (this server, inline pipeline)"
    )
    source: str = Field(max_length=1100, examples=["s3://raw/ct/"])
    collections: list[CollectionName] = Field(min_length=1, max_length=16)
    manifest: str | None = Field(
        default=None, max_length=1100, description="s3:// URI of a CSV/JSONL manifest"
    )
    path_template: str | None = Field(default=None, max_length=300)
    skip_unchanged: bool = True
    encoder: str | None = Field(
        default=None, max_length=200, description="create missing collections with this encoder"
    )
    batch_size: int | None = Field(default=None, ge=1, le=100_000, description="objects per embed task")
    accept_burned_in: bool = Field(
        default=False,
        description="index objects with burned-in annotation (de-identified upstream) instead of "
        "quarantining them; recorded in the job and in the collections' catalog entries",
    )
    prune: bool = Field(
        default=False, description="owner executor: also delete the points of objects gone from the source"
    )
    dry_run: bool = Field(
        default=False,
        description="owner executor: only compute the diff (keys to add, re-embed, delete: in summary)",
    )
    max_delete_fraction: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="a prune deleting more of a collection's objects is refused (409) unless force",
    )
    force: bool = Field(default=False, description="prune even an empty listing or beyond the fraction")
    source_name: str | None = Field(
        default=None,
        max_length=128,
        description="the source's stable name in payloads and point ids (default: bucket/prefix or "
        "the folder's name)",
    )

    @field_validator("source_name")
    @classmethod
    def _check_source_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check_source_name(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str, info: ValidationInfo) -> str:
        # Only buckets on the configured S3 endpoint: never a URL or a path on the worker's disk.
        # The owner may read a folder, once the route's `check_local_path` allows it.
        # A PACS only if it is the configured one (`check_dicomweb_source`, in the route).
        if S3_URI.match(value) or DICOMWEB_URI.match(value) or (_owner(info) and _absolute_path(value)):
            return value
        raise ValueError(
            "source must be s3://bucket/prefix, the configured PACS (dicomweb+http(s)://...)"
            + (" or an absolute path" if _owner(info) else "")
        )

    @field_validator("manifest")
    @classmethod
    def _check_manifest(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or (S3_URI.match(value) and value.count("/") >= 3):
            return value
        if _owner(info) and _absolute_path(value):
            return value
        raise ValueError(
            "manifest must be the s3:// URI of an object" + (" or an absolute path" if _owner(info) else "")
        )

    @field_validator("collections")
    @classmethod
    def _check_collections(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("collections must not repeat")
        return value

    @model_validator(mode="after")
    def _check_prune(self) -> IngestJobCreate:
        if self.executor == "celery" and (self.prune or self.dry_run):
            raise ValueError(
                "prune and dry_run need executor owner; with the workers, a reconcile job deletes "
                "what is gone (radsearch reconcile)"
            )
        default_fraction = type(self).model_fields["max_delete_fraction"].default
        if not self.prune and (self.force or self.max_delete_fraction != default_fraction):
            raise ValueError("force and max_delete_fraction only apply with prune (they guard its deletions)")
        return self


DICOMWEB_URI = re.compile(r"^dicomweb\+https?://[^\s\x00]+$")


def check_dicomweb_source(source: str, settings: Settings) -> None:
    """A DICOMweb source of a job must be the configured PACS (``dicomweb.url``, selectors
    allowed): a job never makes the server or its workers call an arbitrary URL."""
    from ingest.sources.dicomweb import parse_dicomweb_uri

    allowed = settings.dicomweb.url
    if not allowed:
        raise UnknownField(
            "source",
            "this server has no PACS configured: a DICOMweb job reads only from the PACS of the "
            "server's RADSEARCH_DICOMWEB__URL (dicomweb.url); set it and restart the server",
        )
    if parse_dicomweb_uri(source).base_url != parse_dicomweb_uri(allowed).base_url:
        raise UnknownField(
            "source",
            "a DICOMweb source must be the PACS this server is configured with "
            "(RADSEARCH_DICOMWEB__URL, dicomweb.url); selectors (?modality=, ?since=, ?study=) may narrow it",
        )


def _owner(info: ValidationInfo) -> bool:
    return info.data.get("executor") == "owner"


def _absolute_path(value: str) -> bool:
    return value.startswith("/") and "\x00" not in value


async def _call(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in a worker thread; 503 when the queue's Redis is unreachable."""
    try:
        return await in_thread(fn, *args, **kwargs)
    except (BrokerUnavailable, redis.exceptions.RedisError) as exc:
        raise ApiError(503, "queue_unavailable", "job queue unavailable") from exc


def _create(gateway: WorkerGateway, body: IngestJobCreate, catalog: Catalog | None = None) -> JobRecord:
    if body.path_template:
        PathTemplate(body.path_template)
    if body.encoder:
        get_spec(body.encoder)
        if catalog is not None:
            admin_services.ensure_collections(catalog=catalog, names=body.collections, encoder=body.encoder)
    spec = JobSpec(
        source=body.source,
        collections=tuple(body.collections),
        manifest=body.manifest,
        path_template=body.path_template,
        skip_unchanged=body.skip_unchanged,
        encoder=body.encoder,
        batch_size=body.batch_size,
        accept_burned_in=body.accept_burned_in,
        source_name=body.source_name,
        store=store_id(gateway.settings),
    )
    if body.accept_burned_in and catalog is not None:
        for name in body.collections:
            catalog.record_accept_burned_in(name)
    job_id = submit_job(gateway.store, gateway.app, JobKind.INGEST, spec)
    record = gateway.store.get(job_id)
    if record is None:
        raise ConfigError("the job vanished right after it was created")
    return record


def _embedded_catalog(request: Request) -> Catalog | None:
    """This server's catalog when it owns the embedded store: the workers never open that store,
    so their jobs' missing collections are created here (a Qdrant server: by the workers)."""
    settings: Settings = request.app.state.settings
    catalog: Catalog = request.app.state.catalog
    return catalog if settings.store.backend == "edge" else None


def _create_owner(request: Request, body: IngestJobCreate) -> JobRecord:
    if body.encoder:
        get_spec(body.encoder)
    settings = request.app.state.settings
    open_api: bool = request.app.state.authenticator.open
    source, manifest = body.source, body.manifest
    if not S3_URI.match(source) and not DICOMWEB_URI.match(source):
        folder = check_local_path(source, settings=settings, open_api=open_api, what="source folder")
        if not folder.is_dir():
            raise ConfigError("the source folder does not exist or is not a folder")
        source = str(folder)
    if manifest is not None and not S3_URI.match(manifest):
        path = check_local_path(manifest, settings=settings, open_api=open_api, what="manifest")
        if not path.is_file():
            raise ConfigError("the manifest file does not exist or is not a file")
        manifest = str(path)
    runner = owner_jobs(request)
    job_id = runner.submit_ingest(
        JobSpec(
            source=source,
            collections=tuple(body.collections),
            manifest=manifest,
            path_template=body.path_template,
            skip_unchanged=body.skip_unchanged,
            encoder=body.encoder,
            batch_size=body.batch_size,
            accept_burned_in=body.accept_burned_in,
            prune=body.prune,
            dry_run=body.dry_run,
            max_delete_fraction=body.max_delete_fraction,
            force=body.force,
            source_name=body.source_name,
        )
    )
    job = runner.job(job_id)
    if job is None:
        raise ConfigError("the job vanished right after it was created")
    return job


@router.post(
    "",
    status_code=202,
    responses=error_responses(
        ConfigError, EncoderNotFound, CollectionExists, WeightsUnavailable, StoreFull, 503
    ),
)
async def create_ingest_job(body: IngestJobCreate, request: Request, response: Response) -> IngestJobPublic:
    """Submit a bulk ingest job: the workers list the source and embed it in batches, or with
    ``executor`` owner this server runs it (collections are created first, as needed)."""
    note_collections(request, body.collections)
    if DICOMWEB_URI.match(body.source):
        check_dicomweb_source(body.source, request.app.state.settings)
    job: JobRecord
    if body.executor == "owner":
        job = await in_thread(_create_owner, request, body)
    else:
        job = await _call(_create, worker_gateway(request), body, _embedded_catalog(request))
    response.headers["Location"] = f"/v1/ingest-jobs/{job.id}"
    return IngestJobPublic.from_record(job)


@router.get("", responses=error_responses(503))
async def read_ingest_jobs(
    request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> IngestJobsPublic:
    """Recent jobs, newest first (without their failed items): the workers' and this server's.
    While Redis is down, this server's own jobs alone (503 when it has none)."""
    owned = owner_jobs(request).recent("ingest", limit=limit)
    gateway = worker_gateway(request)
    warning: str | None = None
    try:
        records: list[JobRecord] = await _call(
            gateway.store.recent, limit=limit, for_store=store_id(request.app.state.settings)
        )
        if await _call(gateway.store.was_reset):
            warning = JOB_STATE_LOST
    except ApiError:
        if not owned:
            raise
        records = []
    jobs: list[JobRecord] = [*owned, *records]
    jobs.sort(key=lambda j: j.created_at, reverse=True)
    data = [IngestJobPublic.from_record(j, with_items=False) for j in jobs[:limit]]
    return IngestJobsPublic(data=data, count=len(data), warning=warning)


@router.get("/{job_id}", responses=error_responses(404, 410, 503))
async def read_ingest_job(job_id: str, request: Request) -> IngestJobPublic:
    """One job: state, counts, failed items with reasons, times and throughput."""
    check_job_id(job_id)
    owned = owner_jobs(request).job(job_id)
    if owned is not None and owned.kind == "ingest":
        return IngestJobPublic.from_record(owned)
    gateway = worker_gateway(request)
    record: JobRecord | None = await _call(gateway.store.get, job_id)
    if record is None:
        if await _call(gateway.store.lost, job_id):
            raise ApiError(410, "job_state_lost", JOB_STATE_LOST, field="job_id")
        raise ApiError(404, "job_not_found", "job not found", field="job_id")
    settings: Settings = request.app.state.settings
    public = IngestJobPublic.from_record(record)
    public.waiting = await _call(job_waiting, gateway.store, record, settings.celery)
    return public
