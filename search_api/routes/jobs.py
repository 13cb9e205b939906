"""Ingest jobs run by the Celery workers: submit, follow, list."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from core.encoders.registry import get_spec
from core.errors import ConfigError
from ingest.labels import PathTemplate
from search_api.deps import COLLECTION_NAME, S3_URI, check_job_id, worker_gateway
from search_api.security import Role, note_collections, require_role
from workers.client import BrokerUnavailable, WorkerGateway, submit_job
from workers.jobs import JobKind, JobRecord, JobSpec

router = APIRouter(prefix="/v1/ingest-jobs", tags=["ingest-jobs"], dependencies=[require_role(Role.INGEST)])


class IngestJobCreate(BaseModel):
    """A bulk ingest of ``s3://bucket/prefix`` into one or more collections (one per encoder)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(max_length=1100, examples=["s3://raw/ct/"])
    collections: list[str] = Field(min_length=1, max_length=16)
    manifest: str | None = Field(
        default=None, max_length=1100, description="s3:// URI of a CSV/JSONL manifest"
    )
    path_template: str | None = Field(default=None, max_length=300)
    skip_unchanged: bool = True
    encoder: str | None = Field(default=None, description="create missing collections with this encoder")
    batch_size: int | None = Field(default=None, ge=1, le=100_000, description="objects per embed task")

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str) -> str:
        # Only buckets on the configured S3 endpoint: never a URL or a path on the worker's disk.
        if not S3_URI.match(value):
            raise ValueError("source must be s3://bucket/prefix")
        return value

    @field_validator("manifest")
    @classmethod
    def _check_manifest(cls, value: str | None) -> str | None:
        if value is not None and (not S3_URI.match(value) or value.count("/") < 3):
            raise ValueError("manifest must be the s3:// URI of an object")
        return value

    @field_validator("collections")
    @classmethod
    def _check_collections(cls, value: list[str]) -> list[str]:
        for name in value:
            if not COLLECTION_NAME.match(name):
                raise ValueError(f"invalid collection name {name!r}")
        if len(set(value)) != len(value):
            raise ValueError("collections must not repeat")
        return value


class JobCounts(BaseModel):
    listed: int
    queued: int
    objects_done: int
    indexed_frames: int
    skipped_unchanged: int
    failed: int
    quarantined: int
    vanished: int
    deleted: int
    dead_lettered: int
    batches_total: int
    batches_done: int


class JobOptions(BaseModel):
    manifest: str | None
    path_template: str | None
    skip_unchanged: bool
    encoder: str | None
    batch_size: int | None


class JobThroughput(BaseModel):
    objects_per_s: float | None
    frames_per_s: float | None


class FailedItemPublic(BaseModel):
    key: str
    reason: str


class IngestJobPublic(BaseModel):
    id: str
    kind: Literal["ingest", "reconcile", "events", "requeue"]
    state: Literal["queued", "planning", "running", "done", "failed"]
    source: str
    collections: list[str]
    options: JobOptions
    counts: JobCounts
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    seconds: float | None
    throughput: JobThroughput
    error: str | None = None
    drift: dict[str, dict[str, int]] | None = None
    failed_items: list[FailedItemPublic] = Field(default_factory=list)


class IngestJobsPublic(BaseModel):
    data: list[IngestJobPublic]
    count: int


def _public(record: JobRecord, *, with_items: bool = True) -> IngestJobPublic:
    data: dict[str, Any] = record.to_dict(with_items=with_items)
    return IngestJobPublic.model_validate(data)


async def _call(fn: Any) -> Any:
    try:
        return await run_in_threadpool(fn)
    except (BrokerUnavailable, redis.exceptions.RedisError) as exc:
        raise HTTPException(status_code=503, detail="job queue unavailable") from exc


def _create(gateway: WorkerGateway, body: IngestJobCreate) -> JobRecord:
    if body.path_template:
        PathTemplate(body.path_template)
    if body.encoder:
        get_spec(body.encoder)
    spec = JobSpec(
        source=body.source,
        collections=tuple(body.collections),
        manifest=body.manifest,
        path_template=body.path_template,
        skip_unchanged=body.skip_unchanged,
        encoder=body.encoder,
        batch_size=body.batch_size,
    )
    job_id = submit_job(gateway.store, gateway.app, JobKind.INGEST, spec)
    record = gateway.store.get(job_id)
    if record is None:
        raise ConfigError("the job vanished right after it was created")
    return record


@router.post("", status_code=202)
async def create_ingest_job(body: IngestJobCreate, request: Request, response: Response) -> IngestJobPublic:
    """Submit a bulk ingest job; the workers list the source and embed it in batches."""
    note_collections(request, body.collections)
    record: JobRecord = await _call(partial(_create, worker_gateway(request), body))
    response.headers["Location"] = f"/v1/ingest-jobs/{record.id}"
    return _public(record)


@router.get("")
async def read_ingest_jobs(
    request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> IngestJobsPublic:
    """Recent jobs, newest first (without their failed items)."""
    gateway = worker_gateway(request)
    records: list[JobRecord] = await _call(partial(gateway.store.recent, limit=limit))
    data = [_public(r, with_items=False) for r in records]
    return IngestJobsPublic(data=data, count=len(data))


@router.get("/{job_id}", responses={404: {"description": "No such job"}})
async def read_ingest_job(job_id: str, request: Request) -> IngestJobPublic:
    """One job: state, counts, failed items with reasons, times and throughput."""
    check_job_id(job_id)
    gateway = worker_gateway(request)
    record: JobRecord | None = await _call(partial(gateway.store.get, job_id))
    if record is None:
        raise HTTPException(status_code=404, detail="job not found")
    return _public(record)
