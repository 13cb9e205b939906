"""Jobs the store's owner runs itself, in background threads of the API process: backfills
(``POST /v1/collections/{name}/backfill``) and ingests with the owner executor (``POST
/v1/ingest-jobs`` with ``"executor": "owner"``).

The embedded store (Qdrant Edge) is owned by the API process, so such work cannot run in another
process there; it runs here, one job at a time by default. Progress goes through the job-store
contract (`core.jobs.store.OwnerJobStore`) and comes back as the same `JobRecord` as Celery ingest
jobs, with what only the owner knows (`core.jobs.records.JobMeta`): the job's summary once it is
done (the command line's ``--json`` summary) and the HTTP status of its error once it failed. The
records are kept by `core.jobs.sqlite_store` (durable in the data dir), so a job outlives the
process: on start-up the owner resumes its unfinished jobs (`OwnerJobRunner.resume`; a backfill is
insert-only with deterministic point ids, an owner ingest skips unchanged objects, so re-running is
idempotent) or marks them failed with the reason. Like a Celery job, an owner-run job is done
(`finish`) only once the collections it wrote are indexed.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from starlette.requests import Request

from core.calibration import calibrate_loaded
from core.catalog import Catalog, CollectionEntry
from core.config import Settings
from core.errors import CollectionNotFound, ConfigError, RadsearchError, StoreUnavailable
from core.jobs import JobKind, JobMeta, JobRecord, JobSpec, OwnerJobKind, OwnerJobStore
from core.jobs.memory_store import MemoryJobStore
from core.snapshots import TrashEntry
from core.store_identity import store_id
from ingest.backfill import plan_backfill, run_backfill
from ingest.inline import IngestOptions, RuleNotes, build_context, diff_inline, listing_of, plan_prune
from ingest.labels import Labeler, PathTemplate
from ingest.pipeline import BatchReport, modality_conflicts_text, run_pipeline
from ingest.planner import plan_batches
from ingest.prune import SourceDiff, guard_message, prune_gone
from ingest.sources import load_manifest_ref, manifest_keys, open_source
from ingest.sources.base import ObjectRef, Source

__all__ = [
    "JobProgress",
    "OwnerJobRunner",
    "alias_blockers",
    "celery_writers",
    "check_local_path",
    "index_written",
    "owner_jobs",
]

logger = logging.getLogger(__name__)

# Unfinished Celery jobs of these kinds write to the collections they name (events jobs are
# per-day counters of a subscription, never finished).
_WRITING_KINDS = frozenset({JobKind.INGEST, JobKind.RECONCILE, JobKind.REQUEUE})
# Jobs some runner of this process is running (two apps on one data dir in one process: tests).
_RUNNING: set[str] = set()
_NOT_RESUMED = "the server stopped while the job ran, and it cannot be resumed"
# A job whose store process ended runs again once a new one answers: within this long (a new
# process that keeps ending is retried up to a minute apart), and this many times at most.
_STORE_WAIT_S = 300.0
_STORE_RERUNS = 3
# How many of the newest Celery jobs a drop looks through for one still writing.
_CELERY_JOBS_CHECKED = 500


class JobProgress:
    """What a running job reports to its record: how much is planned so far, then each batch."""

    def __init__(
        self,
        store: OwnerJobStore,
        job_id: str,
        *,
        on_plan: Callable[[int], None] | None = None,
        on_batch: Callable[[BatchReport], None] | None = None,
    ) -> None:
        self._store = store
        self._job_id = job_id
        self._batches = 0
        self._on_plan = on_plan
        self._on_batch = on_batch

    def plan(self, *, objects: int, batches: int) -> None:
        """At least ``objects`` objects in ``batches`` batches are planned (counts only grow)."""
        self._store.raise_counters(
            self._job_id, {"listed": objects, "queued": objects, "batches_total": batches}
        )
        if self._on_plan is not None:
            self._on_plan(objects)

    def deleted(self, count: int) -> None:
        """A prune deleted the points of ``count`` objects gone from the source."""
        self._store.raise_counters(self._job_id, {"deleted": count})

    def batch(self, report: BatchReport) -> None:
        """One batch is done: count it, with its failed and quarantined objects."""
        self._batches += 1
        if report.modality_conflicts:
            logger.warning(
                "job %s: modality stored other than the DICOM header's: %s",
                self._job_id,
                modality_conflicts_text(report.modality_conflict_values()),
            )
        self._store.complete_batch(
            self._job_id,
            f"b{self._batches}",
            {
                "objects_done": report.objects,
                "indexed_frames": report.frames_indexed,
                "skipped_unchanged": report.skipped,
                "relabelled": report.relabelled,
                "labels_kept": report.labels_kept,
                "modality_conflicts": report.modality_conflict_count,
                "failed": len(report.failed),
                "quarantined": len(report.quarantined),
            },
            [(f.key, f.reason) for f in [*report.failed, *report.quarantined]],
        )
        if self._on_batch is not None:
            self._on_batch(report)


Work = Callable[[JobProgress], dict[str, Any]]


class OwnerJobRunner:
    """Starts owner-run jobs in background threads and records their progress in ``store``."""

    def __init__(
        self, catalog: Catalog, settings: Settings, store: OwnerJobStore, *, max_parallel: int = 1
    ) -> None:
        self.catalog = catalog
        self.settings = settings
        self.store = store
        # One job at a time by default: each one already uses every core for embedding.
        self._pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix="owner-job")
        self._meta: dict[str, JobMeta] = {}
        # Held while a job is registered and while a drop checks for writers: a drop never
        # misses a job registered before it.
        self._lock = threading.Lock()

    # -- submitting ----------------------------------------------------------------------------

    def submit(
        self, kind: OwnerJobKind, spec: JobSpec, work: Work, *, resume: Mapping[str, Any] | None = None
    ) -> str:
        """Create the job and start ``work`` (which returns the summary); returns the job id.
        ``spec.collections`` are the collections it writes, by their own names; ``resume`` what
        `resume` needs to run it again after a restart."""
        with self._lock:
            job_id = self.store.create(JobKind(kind), spec)
            meta = JobMeta(kind=kind, targets=tuple(spec.collections), resume=dict(resume or {}))
            self.store.save_meta(job_id, meta)
            self._meta[job_id] = meta
            _RUNNING.add(job_id)
        self._pool.submit(self._run, job_id, work)
        return job_id

    def resume(self) -> list[str]:
        """Run again the unfinished jobs a previous owner left (killed, or the machine went down);
        a job that cannot run again is marked failed with the reason. Returns the resumed ids."""
        resumed: list[str] = []
        for job_id in self.store.unfinished():
            if job_id in _RUNNING:
                continue
            meta = self.store.load_meta(job_id)
            if meta is None:
                self.store.fail(job_id, _NOT_RESUMED)
                continue
            meta.resumed += 1
            try:
                work = self._work_for(meta)
            except RadsearchError as exc:
                self.store.save_meta(job_id, meta)
                self.store.fail(job_id, f"{_NOT_RESUMED}: {exc}")
                logger.warning("%s job %s not resumed: %s", meta.kind, job_id, exc)
                continue
            with self._lock:
                self.store.restart(job_id)
                self.store.save_meta(job_id, meta)
                self._meta[job_id] = meta
                _RUNNING.add(job_id)
            self._pool.submit(self._run, job_id, work)
            # a warning: the owner before this one ended with the job unfinished (killed, or the
            # machine went down), which an operator wants to hear of without -v
            logger.warning(
                "%s job %s resumed: the previous owner of the store left it unfinished", meta.kind, job_id
            )
            resumed.append(job_id)
        return resumed

    def _work_for(self, meta: JobMeta) -> Work:
        """The work of a job to run again; `RadsearchError` if it cannot be (a collection it
        wrote was dropped since: never re-created here)."""
        for name in meta.targets:
            try:
                self.catalog.get(name)
            except CollectionNotFound:
                raise CollectionNotFound(f"collection {name!r} no longer exists") from None
        params = meta.resume
        if meta.kind == "backfill" and params.get("target") and params.get("origin"):
            target, origin = str(params["target"]), str(params["origin"])
            return partial(self._backfill, target, origin, params.get("path_template"))
        if meta.kind == "ingest" and params.get("source"):
            request = JobSpec.model_validate(params)
            source, labeler, exclude = self._prepare_ingest(request)
            return partial(self._ingest, source, request, request.collections, labeler, exclude)
        raise ConfigError("the job's record does not say how to run it")

    def _backfill_target(self, target: str) -> CollectionEntry:
        """The collection a backfill fills; `CollectionNotFound` says how to create it (a backfill
        chooses no encoder)."""
        try:
            return self.catalog.get(target)
        except CollectionNotFound as exc:
            raise CollectionNotFound(
                f"{exc}: a backfill fills a collection created first with the encoder wanted "
                f"(radsearch collections create {target} --encoder NAME, or POST /v1/collections)"
            ) from None

    def run_backfill_here(
        self,
        target: str,
        origin: str,
        *,
        path_template: str | None = None,
        on_plan: Callable[[int], None] | None = None,
        on_batch: Callable[[BatchReport], None] | None = None,
    ) -> dict[str, Any]:
        """`submit_backfill` run by the calling thread (the command line owning the store), recorded
        the same way: a killed command leaves a job the next owner resumes. Returns the summary;
        the error is raised (and recorded) if it fails."""
        entry = self._backfill_target(target)
        if path_template:
            PathTemplate(path_template)
        spec = JobSpec(
            source=origin, collections=(entry.name,), path_template=path_template, encoder=entry.encoder.name
        )
        meta = JobMeta(
            kind="backfill",
            targets=(entry.name,),
            resume={"target": entry.name, "origin": origin, "path_template": path_template},
        )
        with self._lock:
            job_id = self.store.create(JobKind.BACKFILL, spec)
            self.store.save_meta(job_id, meta)
            self._meta[job_id] = meta
            _RUNNING.add(job_id)
        try:
            self.store.mark_planning(job_id)
            progress = JobProgress(self.store, job_id, on_plan=on_plan, on_batch=on_batch)
            summary = self._backfill(entry.name, origin, path_template, progress)
            meta.summary = summary
            self.store.save_meta(job_id, meta)
            self.store.plan_done(job_id)
            self.store.finish(job_id)
            return summary
        except KeyboardInterrupt:
            self.store.fail(job_id, "interrupted")
            raise
        except Exception as exc:
            self.store.fail(job_id, self._dropped(meta) or str(exc))
            raise
        finally:
            _RUNNING.discard(job_id)

    def submit_backfill(self, target: str, origin: str, *, path_template: str | None = None) -> str:
        """Embed every object ``origin`` (a collection, alias or source) knows into ``target``."""
        entry = self._backfill_target(target)
        if path_template:
            PathTemplate(path_template)
        spec = JobSpec(
            source=origin,
            collections=(entry.name,),
            path_template=path_template,
            skip_unchanged=True,
            encoder=entry.encoder.name,
        )
        return self.submit(
            "backfill",
            spec,
            partial(self._backfill, entry.name, origin, path_template),
            resume={"target": entry.name, "origin": origin, "path_template": path_template},
        )

    def _prepare_ingest(self, request: JobSpec) -> tuple[Source, Labeler, frozenset[str]]:
        labeler = Labeler(
            manifest=load_manifest_ref(request.manifest, self.settings) if request.manifest else {},
            path_template=PathTemplate(request.path_template) if request.path_template else None,
        )
        source = open_source(request.source, self.settings, name=request.source_name)
        try:
            exclude = manifest_keys(source, request.manifest)
        except BaseException:
            source.close()
            raise
        return source, labeler, exclude

    def submit_ingest(self, request: JobSpec) -> str:
        """Check the label rules and the source, create missing collections, start the ingest.

        ``request.source`` is an ``s3://`` URI or a folder the caller has allowed
        (`check_local_path`); ``manifest`` an ``s3://`` object URI or such a file. A missing
        collection is created with ``encoder`` (default ``baseline``), as ``radsearch ingest`` does."""
        source, labeler, exclude = self._prepare_ingest(request)
        try:
            names = tuple(self.catalog.ensure(name, request.encoder).name for name in request.collections)
            if request.accept_burned_in and not request.dry_run:
                for name in names:
                    self.catalog.record_accept_burned_in(name)
            spec = request.model_copy(
                update={"source": source.uri, "collections": names, "source_name": source.name}
            )
            work = partial(self._ingest, source, request, names, labeler, exclude)
            resume = request.model_dump(mode="json") | {"collections": list(names)}
            return self.submit("ingest", spec, work, resume=resume)
        except BaseException:
            source.close()
            raise

    # -- reading -------------------------------------------------------------------------------

    def job(self, job_id: str) -> JobRecord | None:
        """One owner-run job (this process's, or one an earlier owner of the data dir ran), or None."""
        record = self.store.get(job_id)
        return record if record is not None and record.executor == "owner" else None

    def recent(self, kind: OwnerJobKind, *, limit: int = 50) -> list[JobRecord]:
        """Owner-run jobs of one kind, newest first (without their failed items)."""
        out: list[JobRecord] = []
        for record in self.store.recent(limit=max(limit * 4, 200)):
            if record.executor == "owner" and record.kind == kind:
                out.append(record)
                if len(out) >= limit:
                    break
        return out

    def writers(self, collection: str) -> list[str]:
        """The unfinished owner-run jobs that write to ``collection`` ("ingest job <id>")."""
        return unfinished_writers(self.store, collection)

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
            for rerun in itertools.count():
                try:
                    self.store.mark_planning(job_id)
                    meta.summary = work(JobProgress(self.store, job_id))
                    break
                except StoreUnavailable:
                    if rerun == _STORE_RERUNS or not self._store_back(job_id, meta):
                        raise
                # From the start, as after a server restart: what the first run stored is skipped
                # (ingest, unless skip_unchanged is off) or written again (backfill).
                meta.resumed += 1
                self.store.restart(job_id)
                self.store.save_meta(job_id, meta)
            self.store.save_meta(job_id, meta)
            # Done only now: after the last batch the collection is still being indexed.
            self.store.plan_done(job_id)
            self.store.finish(job_id)
        except RadsearchError as exc:
            from search_api.errors import status_for

            logger.warning("%s job %s failed: %s", meta.kind, job_id, exc)
            meta.error_status = status_for(exc)
            self.store.save_meta(job_id, meta)
            self.store.fail(job_id, self._dropped(meta) or str(exc))
        except Exception as exc:
            logger.exception("%s job %s crashed", meta.kind, job_id)
            meta.error_status = 500
            self.store.save_meta(job_id, meta)
            self.store.fail(job_id, self._dropped(meta) or f"{type(exc).__name__}: {exc}")
        finally:
            _RUNNING.discard(job_id)

    def _store_back(self, job_id: str, meta: JobMeta) -> bool:
        """Wait, up to `_STORE_WAIT_S`, for the store's new process after its old one ended
        mid-job (killed out of memory): True once it answers."""
        logger.warning(
            "%s job %s: the store's process ended; the job runs again once a new one answers",
            meta.kind,
            job_id,
        )
        deadline = time.monotonic() + _STORE_WAIT_S
        while time.monotonic() < deadline:
            time.sleep(1.0)
            try:
                self.catalog.index.list_collections()
                return True
            except StoreUnavailable:
                continue
        return False

    def _dropped(self, meta: JobMeta) -> str | None:
        """The reason a job failed if a collection it wrote is gone (dropped meanwhile)."""
        for name in meta.targets:
            try:
                self.catalog.get(name)
            except CollectionNotFound:
                return f"collection {name!r} was dropped while the job wrote to it"
            except Exception:  # noqa: BLE001 - the store itself failing: the job's own error says it
                return None
        return None

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
        request: JobSpec,
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

            notes = RuleNotes(labeler)

            def batches() -> Iterator[list[ObjectRef]]:
                # The listing is streamed: the plan grows as it is read.
                objects = 0
                for count, batch in enumerate(plan_batches(notes.noting(listed), batch_size), start=1):
                    objects += len(batch)
                    progress.plan(objects=objects, batches=count)
                    yield batch

            with ThreadPoolExecutor(
                max_workers=self.settings.ingest.decode_workers, thread_name_prefix="decode"
            ) as pool:
                report = run_pipeline(ctx, batches(), pool, on_batch=progress.batch)
            notes.record(report)
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


def unfinished_writers(store: OwnerJobStore, collection: str) -> list[str]:
    """The unfinished owner-run jobs in ``store`` that write to ``collection`` ("backfill job <id>")."""
    out = []
    for job_id in store.unfinished():
        meta = store.load_meta(job_id)
        if meta is not None and collection in meta.targets:
            out.append(f"{meta.kind} job {job_id}")
    return out


def alias_blockers(catalog: Catalog, store: OwnerJobStore | None, collection: str) -> list[str]:
    """Why ``collection`` is not ready to serve searches through an alias: unfinished owner-run
    jobs writing to it ("backfill <id> is running (224/600)"), an index not built ("index not
    built: 600 unindexed vectors"). Empty when it is ready."""
    name = catalog.resolve(collection)
    out: list[str] = []
    if store is not None:
        for job_id in store.unfinished():
            meta = store.load_meta(job_id)
            if meta is None or name not in meta.targets:
                continue
            record = store.get(job_id, with_items=False)
            counts = record.counts if record is not None else {}
            out.append(
                f"{meta.kind} {job_id} is running ({counts.get('objects_done', 0)}/{counts.get('listed', 0)})"
            )
    info = catalog.index.collection_info(name)
    if info.get("status") not in ("green", "unknown") or info.get("optimizing"):
        points = int(info.get("points") or 0)
        indexed = info.get("indexed_vectors")
        unindexed = info.get("unindexed_vectors", points - int(indexed or 0))
        out.append(f"index not built: {unindexed} unindexed vectors")
    return out


def owner_jobs(request: Request) -> OwnerJobRunner:
    """The app's runner of owner-run jobs (backfills, owner-executor ingests), made on first use
    where the app's lifespan did not make one."""
    runner: OwnerJobRunner | None = getattr(request.app.state, "backfill", None)
    if runner is None:
        runner = OwnerJobRunner(request.app.state.catalog, request.app.state.settings, MemoryJobStore())
        request.app.state.backfill = runner
    return runner


def index_written(catalog: Catalog, collections: Sequence[str], report: BatchReport) -> None:
    """Build the index of collections a run wrote frames into (Qdrant Edge builds its HNSW graph
    only when asked: once, after the bulk load, as the inline executor does)."""
    if report.frames_indexed or report.deleted:
        for name in collections:
            catalog.index.optimize(catalog.resolve(name))
            calibrate_loaded(catalog.index, catalog.resolve(name))


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

    from core.jobs.redis_store import open_job_store

    store = open_job_store(settings.broker_url, settings.celery)
    try:
        records = store.recent(limit=_CELERY_JOBS_CHECKED, for_store=store_id(settings))
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
