"""Jobs the store's owner runs itself, in background threads of the API process: backfills
(``POST /v1/collections/{name}/backfill``) and ingests with the owner executor (``POST
/v1/ingest-jobs`` with ``"executor": "owner"``).

The embedded store (Qdrant Edge) is owned by the API process, so such work cannot run in another
process there; it runs here, one job at a time by default. Progress goes through the job-store
interface (`workers.jobs.JobStore`: create, mark_planning, raise_counters, complete_batch,
plan_done, fail, get, recent) and comes back as the same `JobRecord` shape as Celery ingest jobs,
plus what only the owner knows: the job's summary once it is done (the command line's ``--json``
summary) and the HTTP status of its error once it failed. `LocalJobStore` keeps records in memory
(lost on restart, like the jobs themselves); a Redis `JobStore` can be passed instead.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

from starlette.requests import Request

from core.catalog import Catalog
from core.config import Settings
from core.errors import ConfigError, RadsearchError
from core.snapshots import TrashEntry
from ingest.backfill import plan_backfill, run_backfill
from ingest.inline import IngestOptions, build_context, diff_inline, listing_of, plan_prune
from ingest.labels import Labeler, PathTemplate, load_manifest, parse_manifest
from ingest.pipeline import BatchReport, run_pipeline
from ingest.planner import plan_batches
from ingest.prune import SourceDiff, guard_message, prune_gone
from ingest.sources import open_source
from ingest.sources.base import ObjectRef, Source
from ingest.sources.local import LocalSource
from workers.jobs import COUNTERS, JobKind, JobRecord, JobSpec, JobState

__all__ = [
    "JobProgress",
    "JobStoreLike",
    "LocalJobStore",
    "OwnerIngest",
    "OwnerJob",
    "OwnerJobRunner",
    "celery_writers",
    "check_local_path",
    "index_written",
    "manifest_keys",
    "owner_jobs",
]

logger = logging.getLogger(__name__)

OwnerJobKind = Literal["ingest", "backfill"]
# Unfinished Celery jobs of these kinds write to the collections they name (events jobs are
# per-day counters of a subscription, never finished).
_WRITING_KINDS = frozenset({JobKind.INGEST, JobKind.RECONCILE, JobKind.REQUEUE})
# How many of the newest Celery jobs a drop looks through for one still writing.
_CELERY_JOBS_CHECKED = 500


class JobStoreLike(Protocol):
    """The part of `workers.jobs.JobStore` an owner-run job uses."""

    def create(self, kind: JobKind, spec: JobSpec, *, job_id: str | None = None) -> str: ...

    def get(self, job_id: str, *, with_items: bool = True, max_items: int = 1000) -> JobRecord | None: ...

    def recent(self, *, limit: int = 50) -> list[JobRecord]: ...

    def mark_planning(self, job_id: str) -> None: ...

    def raise_counters(self, job_id: str, values: Mapping[str, int]) -> None: ...

    def plan_done(self, job_id: str) -> None: ...

    def fail(self, job_id: str, error: str) -> None: ...

    def complete_batch(
        self, job_id: str, batch_id: str, counts: Mapping[str, int], failed: Sequence[tuple[str, str]] = ()
    ) -> bool: ...


@dataclass
class _Job:
    kind: JobKind
    spec: JobSpec
    created_at: float
    state: JobState = JobState.QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    planned: bool = False
    error: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    batches: set[str] = field(default_factory=set)
    failed: list[dict[str, str]] = field(default_factory=list)


class LocalJobStore:
    """`JobStore`'s semantics in memory: a batch counts once, a job is done when planning is done
    and every planned batch is."""

    def __init__(self, *, max_failed_items: int = 10_000) -> None:
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._max_failed = max_failed_items

    def create(self, kind: JobKind, spec: JobSpec, *, job_id: str | None = None) -> str:
        job_id = job_id or str(uuid.uuid4())
        with self._lock:
            self._jobs[job_id] = _Job(kind=kind, spec=spec, created_at=time.time())
        return job_id

    def get(self, job_id: str, *, with_items: bool = True, max_items: int = 1000) -> JobRecord | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            return JobRecord(
                id=job_id,
                kind=job.kind,
                state=job.state,
                spec=job.spec,
                created_at=job.created_at,
                started_at=job.started_at,
                finished_at=job.finished_at,
                counts=dict(job.counts),
                planned=job.planned,
                error=job.error,
                failed_items=list(job.failed[:max_items]) if with_items else [],
            )

    def recent(self, *, limit: int = 50) -> list[JobRecord]:
        with self._lock:
            ids = sorted(self._jobs, key=lambda i: self._jobs[i].created_at, reverse=True)[:limit]
        return [r for r in (self.get(i, with_items=False) for i in ids) if r is not None]

    def mark_planning(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs[job_id]
            job.started_at = job.started_at or time.time()
            job.state = JobState.PLANNING

    def raise_counters(self, job_id: str, values: Mapping[str, int]) -> None:
        with self._lock:
            job = self._jobs[job_id]
            for name, value in values.items():
                job.counts[name] = max(job.counts.get(name, 0), int(value))

    def _settle(self, job: _Job) -> None:
        if job.state in (JobState.DONE, JobState.FAILED):
            return
        if job.planned and job.counts["batches_done"] >= job.counts["batches_total"]:
            job.state, job.finished_at = JobState.DONE, time.time()
        else:
            job.state = JobState.RUNNING

    def plan_done(self, job_id: str) -> None:
        with self._lock:
            job = self._jobs[job_id]
            job.planned = True
            job.started_at = job.started_at or time.time()
            self._settle(job)

    def fail(self, job_id: str, error: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            now = time.time()
            job.started_at = job.started_at or now
            job.state, job.error, job.finished_at = JobState.FAILED, error, now

    def complete_batch(
        self, job_id: str, batch_id: str, counts: Mapping[str, int], failed: Sequence[tuple[str, str]] = ()
    ) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or batch_id in job.batches:
                return False
            job.batches.add(batch_id)
            for name, value in counts.items():
                job.counts[name] = job.counts.get(name, 0) + int(value)
            room = max(self._max_failed - len(job.failed), 0)
            job.failed.extend({"key": k, "reason": r} for k, r in list(failed)[:room])
            job.counts["batches_done"] += 1
            job.started_at = job.started_at or time.time()
            self._settle(job)
            return True


class JobProgress:
    """What a running job reports to its record: how much is planned so far, then each batch."""

    def __init__(self, store: JobStoreLike, job_id: str) -> None:
        self._store = store
        self._job_id = job_id
        self._batches = 0

    def plan(self, *, objects: int, batches: int) -> None:
        """At least ``objects`` objects in ``batches`` batches are planned (counts only grow)."""
        self._store.raise_counters(
            self._job_id, {"listed": objects, "queued": objects, "batches_total": batches}
        )

    def deleted(self, count: int) -> None:
        """A prune deleted the points of ``count`` objects gone from the source."""
        self._store.raise_counters(self._job_id, {"deleted": count})

    def batch(self, report: BatchReport) -> None:
        """One batch is done: count it, with its failed and quarantined objects."""
        self._batches += 1
        self._store.complete_batch(
            self._job_id,
            f"b{self._batches}",
            {
                "objects_done": report.objects,
                "indexed_frames": report.frames_indexed,
                "skipped_unchanged": report.skipped,
                "failed": len(report.failed),
                "quarantined": len(report.quarantined),
            },
            [(f.key, f.reason) for f in [*report.failed, *report.quarantined]],
        )


Work = Callable[[JobProgress], dict[str, Any]]


@dataclass(frozen=True)
class OwnerJob:
    """An owner-run job: what it is, its record, and once it ended its ``summary`` (done) or the
    HTTP status its error maps to (failed)."""

    kind: OwnerJobKind
    record: JobRecord
    summary: dict[str, Any] | None = None
    error_status: int | None = None

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def created_at(self) -> float:
        return self.record.created_at

    def to_dict(self, *, with_items: bool = True) -> dict[str, Any]:
        """The record in the ingest jobs' public shape, with ``executor``, ``summary`` and
        ``error_status`` (``kind`` is ``backfill`` for backfills)."""
        data = self.record.to_dict(with_items=with_items)
        if self.kind == "backfill":
            data["kind"] = "backfill"
        data.update(executor="owner", summary=self.summary, error_status=self.error_status)
        return data


@dataclass
class _Meta:
    kind: OwnerJobKind
    targets: tuple[str, ...]
    summary: dict[str, Any] | None = None
    error_status: int | None = None


@dataclass(frozen=True)
class OwnerIngest:
    """An ingest the owner runs with the inline pipeline. ``source`` is an ``s3://`` URI or a
    folder the caller has allowed (`check_local_path`); ``manifest`` an ``s3://`` object URI or
    such a file. A missing collection is created with ``encoder`` (default ``baseline``), as
    ``radsearch ingest`` does. ``accept_burned_in``, ``prune``, ``dry_run``,
    ``max_delete_fraction`` and ``force`` as `IngestOptions` has them."""

    source: str
    collections: tuple[str, ...]
    manifest: str | None = None
    path_template: str | None = None
    skip_unchanged: bool = True
    encoder: str | None = None
    batch_size: int | None = None
    accept_burned_in: bool = False
    prune: bool = False
    dry_run: bool = False
    max_delete_fraction: float = 0.1
    force: bool = False


class OwnerJobRunner:
    """Starts owner-run jobs in background threads and records their progress in ``store``."""

    def __init__(
        self, catalog: Catalog, settings: Settings, store: JobStoreLike, *, max_parallel: int = 1
    ) -> None:
        self.catalog = catalog
        self.settings = settings
        self.store = store
        # One job at a time by default: each one already uses every core for embedding.
        self._pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="owner-job")
        self._meta: dict[str, _Meta] = {}
        # Held while a job is registered and while a drop checks for writers: a drop never
        # misses a job registered before it.
        self._lock = threading.Lock()

    # -- submitting ----------------------------------------------------------------------------

    def submit(self, kind: OwnerJobKind, spec: JobSpec, work: Work) -> str:
        """Create the job and start ``work`` (which returns the summary); returns the job id.
        ``spec.collections`` are the collections it writes, by their own names."""
        with self._lock:
            job_id = self.store.create(JobKind.INGEST, spec)
            self._meta[job_id] = _Meta(kind=kind, targets=tuple(spec.collections))
        self._pool.submit(self._run, job_id, work)
        return job_id

    def submit_backfill(self, target: str, origin: str, *, path_template: str | None = None) -> str:
        """Embed every object ``origin`` (a collection, alias or source) knows into ``target``."""
        entry = self.catalog.get(target)
        if path_template:
            PathTemplate(path_template)
        spec = JobSpec(
            source=origin,
            collections=(entry.name,),
            path_template=path_template,
            skip_unchanged=True,
            encoder=entry.encoder.name,
        )
        return self.submit("backfill", spec, partial(self._backfill, entry.name, origin, path_template))

    def submit_ingest(self, request: OwnerIngest) -> str:
        """Check the label rules and the source, create missing collections, start the ingest."""
        labeler = Labeler(
            manifest=read_manifest(request.manifest, self.settings) if request.manifest else {},
            path_template=PathTemplate(request.path_template) if request.path_template else None,
        )
        source = open_source(request.source, self.settings)
        try:
            names = tuple(self.catalog.ensure(name, request.encoder).name for name in request.collections)
            if request.accept_burned_in and not request.dry_run:
                for name in names:
                    self.catalog.record_accept_burned_in(name)
            local_manifest = request.manifest if request.manifest and "://" not in request.manifest else None
            exclude = manifest_keys(source, Path(local_manifest) if local_manifest else None)
            spec = JobSpec(
                source=source.uri,
                collections=names,
                manifest=request.manifest,
                path_template=request.path_template,
                skip_unchanged=request.skip_unchanged,
                encoder=request.encoder,
                batch_size=request.batch_size,
                accept_burned_in=request.accept_burned_in,
                prune=request.prune,
                dry_run=request.dry_run,
                max_delete_fraction=request.max_delete_fraction,
                force=request.force,
            )
            work = partial(self._ingest, source, request, names, labeler, exclude)
            return self.submit("ingest", spec, work)
        except BaseException:
            source.close()
            raise

    # -- reading -------------------------------------------------------------------------------

    def job(self, job_id: str) -> OwnerJob | None:
        """One owner-run job, or None if this process runs no such job."""
        meta = self._meta.get(job_id)
        record = self.store.get(job_id) if meta is not None else None
        if meta is None or record is None:
            return None
        return OwnerJob(meta.kind, record, meta.summary, meta.error_status)

    def recent(self, kind: OwnerJobKind, *, limit: int = 50) -> list[OwnerJob]:
        """This process's jobs of one kind, newest first (without their failed items)."""
        out: list[OwnerJob] = []
        for record in self.store.recent(limit=max(len(self._meta), 1)):
            meta = self._meta.get(record.id)
            if meta is not None and meta.kind == kind:
                out.append(OwnerJob(meta.kind, record, meta.summary, meta.error_status))
                if len(out) >= limit:
                    break
        return out

    def writers(self, collection: str) -> list[str]:
        """The unfinished jobs of this process that write to ``collection`` ("ingest job <id>")."""
        out = []
        for job_id, meta in list(self._meta.items()):
            if collection not in meta.targets:
                continue
            record = self.store.get(job_id, with_items=False)
            if record is not None and not record.finished:
                out.append(f"{meta.kind} job {job_id}")
        return out

    def drop(self, name: str) -> TrashEntry | None:
        """Drop a collection (`Catalog.drop`: to the trash on the embedded store); `CollectionBusy`
        while an alias points at it or a job writes to it (one of this process's, or an
        unfinished Celery job in Redis)."""
        with self._lock:
            return self.catalog.drop(
                name,
                writers=lambda n, aliases: [*self.writers(n), *celery_writers(self.settings, n, aliases)],
            )

    # -- running -------------------------------------------------------------------------------

    def _run(self, job_id: str, work: Work) -> None:
        meta = self._meta[job_id]
        try:
            self.store.mark_planning(job_id)
            meta.summary = work(JobProgress(self.store, job_id))
            # Done only now: after the last batch the collection is still being indexed.
            self.store.plan_done(job_id)
        except RadsearchError as exc:
            from search_api.errors import status_for

            logger.warning("%s job %s failed: %s", meta.kind, job_id, exc)
            meta.error_status = status_for(exc)
            self.store.fail(job_id, str(exc))
        except Exception as exc:
            logger.exception("%s job %s crashed", meta.kind, job_id)
            meta.error_status = 500
            self.store.fail(job_id, f"{type(exc).__name__}: {exc}")

    def _backfill(
        self, target: str, origin: str, path_template: str | None, progress: JobProgress
    ) -> dict[str, Any]:
        plan = plan_backfill(self.catalog, self.settings, origin, target=target)
        batch_size = self.settings.ingest.batch_size
        batches = sum(-(-len(refs) // batch_size) for refs in plan.sources.values())
        progress.plan(objects=plan.objects, batches=batches)
        report = run_backfill(
            self.catalog,
            self.settings,
            plan,
            target=target,
            on_batch=progress.batch,
            path_template=path_template,
        )  # which builds the target's index at its end
        return report.to_dict()

    def _ingest(
        self,
        source: Source,
        request: OwnerIngest,
        names: tuple[str, ...],
        labeler: Labeler,
        exclude: frozenset[str],
        progress: JobProgress,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        batch_size = request.batch_size or self.settings.ingest.batch_size
        options = IngestOptions(
            skip_unchanged=request.skip_unchanged,
            accept_burned_in=request.accept_burned_in,
            prune=request.prune,
            dry_run=request.dry_run,
            max_delete_fraction=request.max_delete_fraction,
            force=request.force,
        )
        try:
            ctx = build_context(source, self.catalog, list(names), options, self.settings, labeler=labeler)
            if request.dry_run:
                listing = listing_of(ctx, exclude)
                diffs = diff_inline(ctx, self.settings, listing, prune=request.prune)
                refusal = guard_message(diffs, max_fraction=request.max_delete_fraction, force=request.force)
                return {
                    "collection": ",".join(request.collections),
                    "dry_run": True,
                    "diffs": [{**d.to_dict(), "would_refuse": refusal} for d in diffs],
                }
            listed: Iterable[ObjectRef] = (r for r in source.list() if r.key not in exclude)
            prune_diffs: list[SourceDiff] = []
            if request.prune:
                # The whole listing first: the deletion guard decides before anything is written.
                listing = listing_of(ctx, exclude)
                prune_diffs = plan_prune(ctx, self.settings, listing, options)
                listed = listing.values()

            def batches() -> Iterator[list[ObjectRef]]:
                # The listing is streamed: the plan grows as it is read.
                objects = 0
                for count, batch in enumerate(plan_batches(listed, batch_size), start=1):
                    objects += len(batch)
                    progress.plan(objects=objects, batches=count)
                    yield batch

            with ThreadPoolExecutor(
                max_workers=self.settings.ingest.decode_workers, thread_name_prefix="decode"
            ) as pool:
                report = run_pipeline(ctx, batches(), pool, on_batch=progress.batch)
            if prune_diffs:
                report.deleted = prune_gone(ctx.index, source, prune_diffs)
                progress.deleted(len(report.deleted))
            index_written(self.catalog, names, report)
        finally:
            source.close()
        return {
            "collection": ",".join(request.collections),
            **report.to_dict(),
            "accept_burned_in": request.accept_burned_in,
            "seconds": round(time.perf_counter() - started, 3),
        }

    def close(self) -> None:
        """Wait for running jobs (the store they write to closes next)."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def owner_jobs(request: Request) -> OwnerJobRunner:
    """The app's runner of owner-run jobs (backfills, owner-executor ingests), made on first use
    where the app's lifespan did not make one."""
    runner: OwnerJobRunner | None = getattr(request.app.state, "backfill", None)
    if runner is None:
        runner = OwnerJobRunner(request.app.state.catalog, request.app.state.settings, LocalJobStore())
        request.app.state.backfill = runner
    return runner


def index_written(catalog: Catalog, collections: Sequence[str], report: BatchReport) -> None:
    """Build the index of collections a run wrote frames into (Qdrant Edge builds its HNSW graph
    only when asked: once, after the bulk load, as the inline executor does)."""
    if report.frames_indexed or report.deleted:
        for name in collections:
            catalog.index.optimize(catalog.resolve(name))


def manifest_keys(source: Source, manifest: Path | None) -> frozenset[str]:
    """A manifest kept inside the local folder being ingested is not an image: its key, to leave
    out of the listing."""
    if manifest is None or not isinstance(source, LocalSource):
        return frozenset()
    resolved = manifest.resolve()
    if resolved.is_relative_to(source.root):
        return frozenset({resolved.relative_to(source.root).as_posix()})
    return frozenset()


def read_manifest(ref: str, settings: Settings) -> dict[str, dict[str, Any]]:
    """A manifest from an ``s3://`` object URI or a local file."""
    if not ref.startswith("s3://"):
        return load_manifest(Path(ref))
    from ingest.sources.factory import parse_s3_uri

    bucket, key = parse_s3_uri(ref)
    if not key:
        raise ConfigError("the manifest URI names a bucket, not an object")
    source = open_source(f"s3://{bucket}", settings)
    try:
        data = source.fetch(key)
    finally:
        source.close()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError("the manifest is not UTF-8 text") from exc
    return parse_manifest(text, name=key.rsplit("/", 1)[-1])


def check_local_path(value: str, *, settings: Settings, open_api: bool, what: str) -> Path:
    """A path on the server's disk that an API caller names (an ingest source or a manifest),
    resolved (symbolic links followed); `ConfigError` unless the API is open (no keys or OIDC:
    loopback clients only, i.e. this machine's users) or the path lies under one of
    ``settings.api.ingest_roots``. The messages never say whether the path exists."""
    path = Path(value)
    if not path.is_absolute() or "\x00" in value:
        raise ConfigError(f"{what} must be an s3:// URI or an absolute path")
    resolved = path.resolve()
    roots = [root.resolve() for root in settings.api.ingest_roots]
    if not open_api and not any(resolved.is_relative_to(root) for root in roots):
        raise ConfigError(
            f"this server reads a {what} on its own disk only under RADSEARCH_API__INGEST_ROOTS "
            "(or while the API is open, without keys, to loopback clients); give an s3:// URI"
        )
    return resolved


def celery_writers(settings: Settings, collection: str, aliases: Mapping[str, str]) -> list[str]:
    """The unfinished Celery jobs in Redis that write to ``collection`` ("ingest job <id>"),
    among the newest few hundred. Redis being down is no reason to refuse a drop: then none."""
    import redis

    from workers.jobs import open_job_store

    store = open_job_store(settings.celery.broker_url or settings.redis.url, settings.celery)
    try:
        records = store.recent(limit=_CELERY_JOBS_CHECKED)
    except (redis.exceptions.RedisError, OSError) as exc:
        logger.warning("cannot check Redis for jobs writing to a collection: %s", type(exc).__name__)
        return []
    finally:
        store.client.close()
    return [
        f"{record.kind.value} job {record.id}"
        for record in records
        if record.kind in _WRITING_KINDS
        and not record.finished
        and collection in {aliases.get(name, name) for name in record.spec.collections}
    ]
