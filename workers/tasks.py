"""Thin Celery tasks around the batch pipeline. They take job ids and object keys, never pixels.

Every task is idempotent: point ids are deterministic (a redelivered batch overwrites), batches are
counted once per job (`RedisJobStore.complete_batch`), deletions re-check that the object is gone.
Errors: a bad object is a failed item of its batch (``BadInput``, no retry); a transient error
(S3, Qdrant, network, Redis) retries the whole batch with exponential backoff and jitter; when the
retries or deliveries run out, or on any other error, the batch goes to the dead-letter list
(``radsearch jobs requeue`` replays it) and counts as failed, so the job still finishes.

A job whose last batch is done is complete, not yet done: the finish task indexes its collections
(through the owner of the embedded store; a Qdrant server indexes by itself), then marks it done,
so a ``done`` job's collections are searched through their index. Whoever completes the job (the
last batch, a dead letter, or the planner when every batch finished first) enqueues it; it is
idempotent, and a redelivered batch enqueues it again.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from celery import Celery, Task
from celery.exceptions import Ignore

from core.calibration import calibrate_loaded
from core.errors import (
    BadInput,
    CollectionNotFound,
    ConfigError,
    EncoderError,
    ObjectNotFound,
    SourceError,
)
from core.jobs import DeadLetter, JobKind, JobSpec, JobState
from core.jobs.redis_store import RedisJobStore
from ingest.inline import RuleNotes
from ingest.pipeline import modality_conflicts_text, process_batch
from ingest.planner import plan_batches
from ingest.prune import delete_keys, indexed_objects, still_gone
from ingest.reconcile import plan_reconcile
from ingest.sources import manifest_keys
from ingest.sources.base import ObjectRef
from workers.context import WorkerResources, resources_for
from workers.names import (
    DELETE_TASK,
    EMBED_QUEUE,
    EMBED_TASK,
    FINISH_TASK,
    PLAN_QUEUE,
    PLAN_TASK,
    RECONCILE_ALL_TASK,
    RECONCILE_TASK,
)

__all__ = ["RadsearchTask", "is_transient", "reconcile_job", "register_tasks", "resend_lost_batches"]

log = logging.getLogger(__name__)


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: the S3 endpoint, the Qdrant server, Redis or the network hiccuped."""
    if isinstance(exc, BadInput):
        return False
    if isinstance(exc, SourceError | ConnectionError | TimeoutError | socket.timeout):
        return True
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return True
    module = type(exc).__module__
    if module.startswith(("httpx", "httpcore", "urllib3", "grpc")):
        return True
    if module.startswith("qdrant_client"):
        status = getattr(exc, "status_code", None)
        # ResponseHandlingException (no status) is a transport failure; 5xx and 429 are the server's.
        return status is None or status >= 500 or status == 429
    return False


class RadsearchTask(Task):  # type: ignore[misc]
    """Base of our tasks: one `WorkerResources` per process, created on the first task."""

    @property
    def resources(self) -> WorkerResources:
        return resources_for(self.app)


def _backoff(task: RadsearchTask) -> float:
    cfg = task.resources.settings.celery
    # A countdown beyond the visibility timeout would be redelivered while it waits.
    cap = min(cfg.retry_backoff_max_s, cfg.visibility_timeout_s / 2)
    delay = min(cap, cfg.retry_backoff_s * 2 ** int(task.request.retries))
    return float(delay * random.uniform(0.5, 1.0))


def _retry_if_transient(task: RadsearchTask, exc: Exception, what: str) -> None:
    """Retry the task later, with exponential backoff and jitter, if ``exc`` is transient
    (`is_transient`) and ``celery.max_retries`` is not reached: raises Celery's ``Retry``.
    Returns otherwise, for the caller to record the failure. ``what`` names the work in the log."""
    cfg = task.resources.settings.celery
    if not is_transient(exc) or task.request.retries >= cfg.max_retries:
        return
    countdown = _backoff(task)
    log.warning(
        "%s: %s: %s; retry %d in %.1f s",
        what,
        type(exc).__name__,
        exc,
        int(task.request.retries) + 1,
        countdown,
    )
    raise task.retry(exc=exc, countdown=countdown, max_retries=cfg.max_retries) from exc


def _dead_letter(
    store: RedisJobStore,
    job_id: str,
    batch_id: str,
    spec: JobSpec,
    keys: Sequence[str],
    error: str,
    attempts: int,
    kind: str,
) -> None:
    store.dead_letter(DeadLetter(job_id, batch_id, spec, list(keys), error, attempts, time.time(), kind))
    reason = f"dead-lettered after {attempts} attempt(s): {error}"
    store.complete_batch(
        job_id,
        batch_id,
        {"objects_done": len(keys), "failed": len(keys), "dead_lettered": len(keys)},
        [(key, reason) for key in keys],
    )
    log.error("job %s batch %s dead-lettered (%d keys): %s", job_id, batch_id, len(keys), error)


# Jobs of another store this process has said so for (once each), and how long it waits before
# sending such a job's message back: meanwhile a worker of that store is the one waiting for it
# (a copy due later, an ETA, was held and taken again by the same worker, again and again).
_foreign_jobs_told: set[str] = set()
FOREIGN_JOB_PAUSE_S = 1.0


def _leave_foreign(task: RadsearchTask, what: str, store: str | None) -> None:
    """Leave the task unrun if ``what`` (a job, the periodic reconcile) is of another ``store`` than
    this worker's: two deployments share this Redis database, and this worker would write the
    other's objects into its own store, or fail the job where its store lacks the collection.
    After `FOREIGN_JOB_PAUSE_S`, a copy of the message goes back to its queue for the workers of
    that store, and this one is acknowledged (Celery's ``Ignore``; a ``Reject`` would log a
    traceback at every bounce)."""
    if store is None:
        return
    try:
        ours = task.resources.store_id
    except Exception as exc:
        # a worker on another host asks its owner, which may be restarting: later, as any batch
        _retry_if_transient(task, exc, f"{what}: the store this worker writes")
        raise
    if store == ours:
        return
    if what not in _foreign_jobs_told:
        _foreign_jobs_told.add(what)
        log.error(
            "%s writes another store (%s) than this worker's (%s): two radsearch deployments "
            "share the Redis database of their jobs; this worker leaves its messages to that "
            "store's workers. Give each deployment its own (RADSEARCH_REDIS__URL=redis://HOST:6379/1)",
            what,
            store,
            ours,
        )
    time.sleep(FOREIGN_JOB_PAUSE_S)
    task.app.send_task(task.name, args=task.request.args, kwargs=task.request.kwargs)
    raise Ignore()


def _finish_when_complete(app: Celery, store: RedisJobStore, job_id: str) -> None:
    """Enqueue the finish task once every planned batch of the job is done."""
    if store.is_complete(job_id):
        app.send_task(FINISH_TASK, args=[job_id])


def _guarded(
    task: RadsearchTask,
    job_id: str,
    batch_id: str,
    keys: Sequence[str],
    work: Callable[[JobSpec], None],
    kind: str,
) -> None:
    """Run one batch's work with the delivery guard, retries and dead-lettering."""
    store = task.resources.store
    spec = store.spec(job_id)
    if spec is None:
        log.warning("job %s is gone (expired, or Redis lost it); batch %s dropped", job_id, batch_id)
        return
    _leave_foreign(task, f"job {job_id}", spec.store)
    if store.state(job_id) == JobState.FAILED:
        return
    if store.is_batch_done(job_id, batch_id):
        return  # a copy resent as lost (`resend_lost_batches`) that the original beat, or vice versa
    cfg = task.resources.settings.celery
    deliveries = store.count_delivery(job_id, batch_id)
    if deliveries > cfg.max_deliveries:
        _dead_letter(
            store,
            job_id,
            batch_id,
            spec,
            keys,
            f"started {deliveries - 1} times without finishing (worker killed while running it?)",
            deliveries - 1,
            kind,
        )
        _finish_when_complete(task.app, store, job_id)
        return
    try:
        work(spec)
    except CollectionNotFound as exc:
        # Dropped since the job was planned: the job fails, its batches are not dead-lettered
        # (a replay would write into nothing, or re-create it half-filled).
        log.warning("job %s batch %s: %s", job_id, batch_id, exc)
        task.resources.forget_collections()
        store.fail(job_id, _dropped_reason(task, spec, exc))
    except Exception as exc:
        _retry_if_transient(task, exc, f"job {job_id} batch {batch_id}")
        if not is_transient(exc):
            log.exception("job %s batch %s failed on a non-transient error", job_id, batch_id)
        error = f"{type(exc).__name__}: {exc}"
        attempts = int(task.request.retries) + 1
        _dead_letter(store, job_id, batch_id, spec, keys, error, attempts, kind)
        _finish_when_complete(task.app, store, job_id)


def _dropped_reason(task: RadsearchTask, spec: JobSpec, exc: CollectionNotFound) -> str:
    """ "collection X was dropped while the job wrote to it", naming the missing collection."""
    catalog = task.resources.catalog
    for name in spec.collections:
        try:
            catalog.resolve(name)
        except CollectionNotFound:
            return f"collection {name!r} was dropped while the job wrote to it"
    return str(exc)


def _embed(
    task: RadsearchTask,
    job_id: str,
    batch_id: str,
    keys: Sequence[str],
    etags: Sequence[str] | None,
    sizes: Sequence[int] | None,
) -> None:
    def work(spec: JobSpec) -> None:
        res = task.resources
        ctx = res.pipeline_context(job_id, spec)
        failed: list[tuple[str, str]] = []
        vanished = 0
        refs: list[ObjectRef] = []
        if etags is not None and sizes is not None:
            refs = [ObjectRef(k, e, s) for k, e, s in zip(keys, etags, sizes, strict=True)]
        else:
            # Events are hints: the object's current state is what counts.
            for key in keys:
                try:
                    refs.append(ctx.source.stat(key))
                except ObjectNotFound:
                    vanished += 1
                except BadInput as exc:
                    failed.append((key, exc.reason))
        report = process_batch(ctx, refs, res.pool)
        if report.modality_conflicts:
            log.warning(
                "job %s batch %s: modality stored other than the DICOM header's: %s",
                job_id,
                batch_id,
                modality_conflicts_text(report.modality_conflict_values()),
            )
        etag_of = {ref.key: ref.etag for ref in refs}
        bad: dict[str, str] = {}
        for item in report.failed:
            if item.vanished:
                vanished += 1
            else:
                failed.append((item.key, item.reason))
                bad[item.key] = etag_of.get(item.key, "")
        failed += [(item.key, item.reason) for item in report.quarantined]
        res.store.mark_bad(spec.collections, ctx.source.name, bad)
        res.store.complete_batch(
            job_id,
            batch_id,
            {
                "objects_done": len(keys),
                "indexed_frames": report.frames_indexed,
                "skipped_unchanged": report.skipped,
                "relabelled": report.relabelled,
                "labels_kept": report.labels_kept,
                "modality_conflicts": report.modality_conflict_count,
                "failed": len(failed) - len(report.quarantined),
                "quarantined": len(report.quarantined),
                "vanished": vanished,
            },
            failed,
        )
        _finish_when_complete(task.app, res.store, job_id)

    _guarded(task, job_id, batch_id, keys, work, "embed")


def _delete(task: RadsearchTask, job_id: str, batch_id: str, keys: Sequence[str]) -> None:
    def work(spec: JobSpec) -> None:
        res = task.resources
        source = res.source(spec.source, spec.source_name)
        index = res.catalog.index
        gone: list[str] = []
        for key in keys:
            try:
                source.stat(key)  # re-created since the event: keep its points
            except BadInput:
                gone.append(key)
        for collection in spec.collections:
            if not index.collection_exists(collection):
                continue
            delete_keys(index, collection, source, gone)
        res.store.complete_batch(job_id, batch_id, {"objects_done": len(keys), "deleted": len(gone)})
        _finish_when_complete(task.app, res.store, job_id)

    _guarded(task, job_id, batch_id, keys, work, "delete")


# Queues longer than this are not searched for a job's messages: they are assumed to hold one.
_SCAN_QUEUE_MAX = 2000


def _broker_holds(broker: redis.Redis, job_id: str) -> bool:
    """Whether a message of the job may still be with the broker: queued (any of our queues, any
    priority; a long queue counts as holding one) or taken by a worker and not acknowledged
    (kombu's ``unacked`` hash)."""
    from kombu.transport.redis import Channel

    steps = [""] + [f"{Channel.sep}{p}" for p in Channel.priority_steps if p]
    queues = [f"{q}{step}" for q in (EMBED_QUEUE, PLAN_QUEUE) for step in steps]
    with broker.pipeline() as pipe:
        for queue in queues:
            pipe.llen(queue)
        lengths = [int(n) for n in pipe.execute()]
    if sum(lengths) > _SCAN_QUEUE_MAX:
        return True
    needle = job_id.encode()
    for queue, length in zip(queues, lengths, strict=True):
        if length and any(needle in message for message in broker.lrange(queue, 0, -1)):
            return True
    return any(needle in value for value in broker.hvals(Channel.unacked_key))


def resend_lost_batches(app: Celery, store: RedisJobStore, broker: redis.Redis, idle_s: float) -> int:
    """Send again the batches the broker lost; returns how many were sent.

    A batch is lost when its job is unfinished, nothing happened to the job for ``idle_s`` (more
    than the visibility timeout and a restore sweep, so kombu had its chance to bring an
    unacknowledged message back), the batch is not done, and no message of the job is queued or
    unacknowledged (`_broker_holds`). kombu's Redis transport loses a message when the worker
    that popped it is killed before recording it as unacknowledged; the job then waited forever
    for that batch. Batches are idempotent and counted once, so a copy that races the original
    does no harm.
    """
    sent = 0
    for job_id in store.unfinished():
        lost = store.lost_batches(job_id, idle_s)
        if not lost or _broker_holds(broker, job_id) or not store.claim_resend(job_id, idle_s):
            continue
        for batch_id, (name, args) in sorted(lost.items()):
            log.warning(
                "job %s batch %s: lost by the broker (no progress for %.0f s); sent again",
                job_id,
                batch_id,
                idle_s,
            )
            app.send_task(name, args=args)
            sent += 1
        store.touch(job_id)
    return sent


def _send_embed_batches(
    app: Celery,
    store: RedisJobStore,
    job_id: str,
    refs: Iterable[ObjectRef],
    batch_size: int,
    prefix: str,
    *,
    count_listed: bool = False,
) -> int:
    """Enqueue ``refs`` as embed batches with deterministic ids ``{prefix}{i}``; returns batches.
    With ``count_listed`` the ``listed`` counter follows ``queued`` (refs streamed from a listing)."""
    count = 0
    queued = 0
    for i, batch in enumerate(plan_batches(refs, batch_size)):
        queued += len(batch)
        counters = {"queued": queued, "batches_total": i + 1}
        if count_listed:
            counters["listed"] = queued
        store.raise_counters(job_id, counters)
        args = [
            job_id,
            f"{prefix}{i}",
            [r.key for r in batch],
            [r.etag for r in batch],
            [r.size for r in batch],
        ]
        store.track_batch(job_id, f"{prefix}{i}", EMBED_TASK, args)
        app.send_task(EMBED_TASK, args=args)
        count = i + 1
    return count


def _plan(task: RadsearchTask, job_id: str) -> None:
    res = task.resources
    store = res.store
    spec = store.spec(job_id)
    if spec is None or store.state(job_id) in (JobState.DONE, JobState.FAILED):
        return
    _leave_foreign(task, f"job {job_id}", spec.store)
    store.mark_planning(job_id)
    try:
        res.ensure_collections(spec, create=True)
        _record_accept_burned_in(res, spec)
        labeler = res.labeler(job_id, spec)  # a manifest that cannot be read fails the job here
        source = res.source(spec.source, spec.source_name)
        batch_size = spec.batch_size or res.settings.celery.task_batch_size
        manifest = manifest_keys(source, spec.manifest)
        notes = RuleNotes(labeler)
        listed = notes.noting(ref for ref in source.list() if ref.key not in manifest)
        _send_embed_batches(task.app, store, job_id, listed, batch_size, "p", count_listed=True)
        store.raise_counters(job_id, notes.counts())
    except (CollectionNotFound, ConfigError, EncoderError) as exc:
        store.fail(job_id, str(exc))
        return
    except Exception as exc:
        _retry_if_transient(task, exc, f"planning job {job_id}")
        store.fail(job_id, f"planning failed: {type(exc).__name__}: {exc}")
        return
    store.plan_done(job_id)
    _finish_when_complete(task.app, store, job_id)


def _record_accept_burned_in(res: WorkerResources, spec: JobSpec) -> None:
    """Record the job's opt-in to burned-in objects in its collections' catalog entries (with the
    embedded store its owner records it, when the job is submitted through the API)."""
    if spec.accept_burned_in and not res.embedded:
        for name in spec.collections:
            res.catalog.record_accept_burned_in(name)


def reconcile_job(app: Celery, res: WorkerResources, job_id: str) -> dict[str, Any] | None:
    """Diff the source listing with each collection; enqueue missing/changed, delete gone objects
    (refused by `check_deletions` unless the job forces it; nothing written with ``dry_run``).

    Returns the drift per collection (also stored on the job, with the keys deleted, or with
    every key of the diff for a dry run), None if the job does not exist or failed.
    """
    store = res.store
    spec = store.spec(job_id)
    if spec is None:
        return None
    store.mark_planning(job_id)
    try:
        res.ensure_collections(spec, create=True)
        _record_accept_burned_in(res, spec)
        labeler = res.labeler(job_id, spec)  # as in planning: an unreadable manifest fails the job once
    except (CollectionNotFound, ConfigError, EncoderError) as exc:
        store.fail(job_id, str(exc))
        return None
    source = res.source(spec.source, spec.source_name)
    index = res.catalog.index
    manifest = manifest_keys(source, spec.manifest)
    listing = {ref.key: ref for ref in source.list() if ref.key not in manifest}
    max_frames = res.settings.ingest.max_frames_per_object
    plan = plan_reconcile(
        listing,
        {c: indexed_objects(index, c, source, max_frames=max_frames) for c in spec.collections},
        {c: store.bad_objects(c, source.name) for c in spec.collections},
        max_fraction=spec.max_delete_fraction,
        force=spec.force,
    )
    # The guard (`check_deletions`): a dry run reports what it would say, a real run stops here.
    if plan.refusal is not None and not spec.dry_run:
        store.set_drift(job_id, plan.refused_drift())
        store.fail(job_id, plan.refusal)
        log.warning("reconcile job %s refused: %s", job_id, plan.refusal)
        return None
    drift: dict[str, Any] = {}
    deleted_total = 0
    for part in plan.collections:
        diff = part.diff
        diff.deleted = still_gone(source, diff.deleted)
        if spec.dry_run:
            drift[diff.collection] = {
                **part.counts(),
                **diff.to_dict(),
                "dry_run": True,
                "would_refuse": plan.refusal,
            }
            continue
        delete_keys(index, diff.collection, source, diff.deleted)
        deleted_total += len(diff.deleted)
        drift[diff.collection] = {
            **part.counts(),
            "deleted": len(diff.deleted),
            "deleted_items": list(diff.deleted),
        }
    notes = RuleNotes(labeler)
    for key in listing:
        notes.note(key)
    store.raise_counters(job_id, {"listed": len(listing), "deleted": deleted_total, **notes.counts()})
    store.set_drift(job_id, drift)
    refs = [] if spec.dry_run else plan.to_embed(listing)
    batch_size = spec.batch_size or res.settings.celery.task_batch_size
    _send_embed_batches(app, store, job_id, refs, batch_size, "r")
    store.plan_done(job_id)
    _finish_when_complete(app, store, job_id)
    log.info(
        "reconcile job %s: %s",
        job_id,
        {c: {k: v for k, v in d.items() if not k.endswith("_items")} for c, d in drift.items()},
    )
    return drift


def _reconcile(task: RadsearchTask, job_id: str) -> None:
    spec = task.resources.store.spec(job_id)
    if spec is not None:
        _leave_foreign(task, f"job {job_id}", spec.store)
    try:
        reconcile_job(task.app, task.resources, job_id)
    except Exception as exc:
        _retry_if_transient(task, exc, f"reconcile job {job_id}")
        task.resources.store.fail(job_id, f"reconcile failed: {type(exc).__name__}: {exc}")


def _finish(task: RadsearchTask, job_id: str) -> None:
    """Index a complete job's collections, then mark it done (nothing if it is not complete:
    finished already, or a batch was added meanwhile and its completion enqueues another)."""
    res = task.resources
    store = res.store
    spec = store.spec(job_id)
    if spec is None or not store.is_complete(job_id):
        return
    _leave_foreign(task, f"job {job_id}", spec.store)
    try:
        catalog = res.catalog
        for name in spec.collections:
            try:
                collection = catalog.resolve(name)
            except CollectionNotFound:
                store.fail(job_id, f"collection {name!r} was dropped while the job wrote to it")
                return
            started = time.monotonic()
            catalog.index.optimize(collection)
            calibrate_loaded(catalog.index, collection)
            log.info("job %s: %s indexed in %.1f s", job_id, collection, time.monotonic() - started)
    except Exception as exc:
        _retry_if_transient(task, exc, f"indexing job {job_id}")
        store.fail(job_id, f"indexing the job's collections failed: {type(exc).__name__}: {exc}")
        return
    store.finish(job_id)


def _reconcile_subscriptions(task: RadsearchTask, store: str | None) -> list[str]:
    _leave_foreign(task, "the periodic reconcile of the subscriptions", store)
    res = task.resources
    job_ids: list[str] = []
    for sub in res.settings.events.subscriptions:
        spec = JobSpec(
            source=sub.source,
            collections=tuple(sub.collections),
            manifest=sub.manifest,
            path_template=sub.path_template,
            store=res.store_id,
        )
        job_id = res.store.create(JobKind.RECONCILE, spec)
        job_ids.append(job_id)
        task.app.send_task(RECONCILE_TASK, args=[job_id])
    return job_ids


def register_tasks(app: Celery) -> None:
    """Register the radsearch tasks on ``app`` (called by `create_celery`)."""

    @app.task(bind=True, base=RadsearchTask, name=PLAN_TASK)  # type: ignore[untyped-decorator]
    def plan_job(self: RadsearchTask, job_id: str) -> None:
        """List the job's source and enqueue its embed batches."""
        _plan(self, job_id)

    @app.task(bind=True, base=RadsearchTask, name=EMBED_TASK)  # type: ignore[untyped-decorator]
    def embed_batch(
        self: RadsearchTask,
        job_id: str,
        batch_id: str,
        keys: list[str],
        etags: list[str] | None = None,
        sizes: list[int] | None = None,
    ) -> None:
        """Fetch, decode, embed and upsert one batch of object keys (stat first without ETags)."""
        _embed(self, job_id, batch_id, keys, etags, sizes)

    @app.task(bind=True, base=RadsearchTask, name=DELETE_TASK)  # type: ignore[untyped-decorator]
    def delete_objects(self: RadsearchTask, job_id: str, batch_id: str, keys: list[str]) -> None:
        """Delete the points of objects that no longer exist."""
        _delete(self, job_id, batch_id, keys)

    @app.task(bind=True, base=RadsearchTask, name=RECONCILE_TASK)  # type: ignore[untyped-decorator]
    def reconcile(self: RadsearchTask, job_id: str) -> None:
        """Repair the drift between a source and its collections."""
        _reconcile(self, job_id)

    @app.task(bind=True, base=RadsearchTask, name=FINISH_TASK)  # type: ignore[untyped-decorator]
    def finish_job(self: RadsearchTask, job_id: str) -> None:
        """Index a complete job's collections, then mark the job done."""
        _finish(self, job_id)

    @app.task(bind=True, base=RadsearchTask, name=RECONCILE_ALL_TASK)  # type: ignore[untyped-decorator]
    def reconcile_subscriptions(self: RadsearchTask, store: str | None = None) -> list[str]:
        """Start a reconcile job per configured subscription (Celery beat); ``store``: the beat's,
        whose workers alone know its subscriptions."""
        return _reconcile_subscriptions(self, store)
