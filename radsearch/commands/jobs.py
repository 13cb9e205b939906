"""Jobs: ``radsearch jobs list|show|workers|requeue``, ``radsearch reconcile`` and ``ingest
--executor celery`` (jobs for the workers, in Redis), with the jobs the store's owner runs itself
(backfills, owner ingests); here, or ``jobs`` through the serving owner."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import DICOMWEB_SCHEMES, Settings
from core.errors import CollectionNotFound, ConfigError
from radsearch.commands import remote
from radsearch.commands.arg_types import at_least
from radsearch.commands.common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_RUNTIME_ERROR,
    LABELS_KEPT,
    MANIFEST_UNMATCHED,
    MODALITY_CONFLICTS,
    TEMPLATE_UNMATCHED,
)
from radsearch.commands.options import add_sync_options, check_prune_args

if TYPE_CHECKING:
    from core.jobs import JobKind, JobRecord, JobSpec

__all__ = [
    "add_jobs_commands",
    "deletion_refused",
    "ingest_celery",
    "job_line",
    "owner_job_dicts",
    "print_job",
    "print_job_result",
    "print_jobs",
    "print_workers",
]


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _job_store(settings: Settings) -> Any:
    """The workers' job store (Redis); `BrokerUnavailable` if Redis does not answer."""
    import redis

    from core.jobs.redis_store import job_store_for
    from workers.client import BrokerUnavailable

    store = job_store_for(settings)
    try:
        store.client.ping()
    except redis.exceptions.RedisError as exc:
        raise BrokerUnavailable(f"Redis at {settings.broker_url} does not answer: {exc}") from exc
    return store


def _connect(settings: Settings) -> tuple[Any, Any]:
    """(job store, celery app) for submitting work; `BrokerUnavailable` if Redis does not answer.
    Reading jobs needs the store alone (`_job_store`): the app imports the whole pipeline."""
    from workers.app import create_celery

    store = _job_store(settings)
    return store, create_celery(settings)


def _collections(value: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise ConfigError("--collection needs at least one name")
    return names


def _source_uri(value: str) -> str:
    """The source as the workers read it; a folder that is not here is said (the workers may see
    it at this path on a mount of their own; otherwise their job fails naming it)."""
    from ingest.sources.factory import check_folder_uri

    if value.startswith(("s3://", *DICOMWEB_SCHEMES)):
        return value
    check_folder_uri(value)  # a typo of a scheme, or another scheme: refused before anything is queued
    # Workers resolve the path themselves: give them an absolute one.
    path = Path(value.removeprefix("file://")).expanduser().resolve()
    if not path.is_dir():
        print(
            f"radsearch: warning: the source folder {path} is not a folder here; the workers must find it "
            "at this path, or the job fails",
            file=sys.stderr,
        )
    return str(path)


def _source_name(value: str | None) -> str | None:
    """``--source-name``, checked before anything is queued (exit 2 naming the flag)."""
    if value is None:
        return None
    from ingest.sources.base import check_source_name

    return check_source_name(value, field="--source-name")


# How often a followed job's wait for a worker is checked (one read of the live workers).
_WAITING_CHECK_S = 5.0


def _waiting_line(job_id: str, waiting: str) -> str:
    return f"radsearch: job {job_id} is waiting: {waiting} (start `radsearch worker`)"


class _WaitingNotice:
    """Says on stderr, once per reason, why a followed job does not move (no live worker on its
    queue, `workers.heartbeat.job_waiting`): without it the progress bar shows ``queued`` for as
    long as nobody starts a worker."""

    def __init__(
        self, settings: Settings, store: Any, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings, self._store, self._clock = settings, store, clock
        self._checked_at: float | None = None
        self._said: str | None = None

    def check(self, record: JobRecord, write: Callable[[str], Any]) -> None:
        from workers.heartbeat import job_waiting

        now = self._clock()
        if record.finished or (self._checked_at is not None and now - self._checked_at < _WAITING_CHECK_S):
            return
        self._checked_at = now
        waiting = job_waiting(self._store, record, self._settings.celery)
        if waiting and waiting != self._said:
            write(_waiting_line(record.id, waiting))
        self._said = waiting


def _follow(settings: Settings, store: Any, job_id: str, *, progress: bool) -> Any:
    from core.progress import progress_bar
    from workers.client import follow_job

    bar = progress_bar(f"job {job_id}", shown=progress)
    notice = _WaitingNotice(settings, store)

    def update(record: JobRecord) -> None:
        bar.total = max(record.counts["queued"], record.counts["objects_done"]) or None
        bar.n = record.counts["objects_done"]
        bar.set_postfix(
            state=record.state.value,
            frames=record.counts["indexed_frames"],
            failed=record.counts["failed"],
            refresh=False,
        )
        bar.refresh()
        notice.check(record, lambda line: bar.write(line, file=sys.stderr))

    try:
        return follow_job(store, job_id, on_update=update)
    finally:
        bar.close()


# -- output shared with the command line through a server: jobs as `JobRecord.to_dict` gives them


def _summary_line(job: Mapping[str, Any]) -> str:
    counts = job["counts"]
    rate = job["throughput"]["objects_per_s"] or 0.0
    return (
        f"job {job['id']} {job['state']}: {counts['listed']} listed, {counts['queued']} queued, "
        f"{counts['indexed_frames']} frames indexed, {counts['skipped_unchanged']} unchanged skipped, "
        f"{counts.get('relabelled', 0)} relabelled, "
        f"{counts['failed']} failed, {counts['quarantined']} quarantined ({rate:.1f} objects/s)"
    )


def print_job_result(job: Mapping[str, Any], *, as_json: bool) -> int:
    """A finished job (``JobRecord.to_dict()``): JSON, or a summary line with drift, failed items
    and error; exit 0 when it is done, 1 when it failed."""
    if as_json:
        _out(json.dumps(dict(job)))
    else:
        _out(_summary_line(job))
        if job["counts"].get("labels_kept"):
            _out(f"  {job['counts']['labels_kept']} {LABELS_KEPT}")
        if job["counts"].get("modality_conflicts"):
            _out(f"  {job['counts']['modality_conflicts']} {MODALITY_CONFLICTS} (the log names the values)")
        if job["counts"].get("manifest_unmatched"):
            _out(f"  {job['counts']['manifest_unmatched']} {MANIFEST_UNMATCHED}")
        if job["counts"].get("template_unmatched"):
            _out(f"  {job['counts']['template_unmatched']} {TEMPLATE_UNMATCHED}")
        if job.get("drift"):
            for name, drift in job["drift"].items():
                _out(_drift_text(name, drift))
        for item in job.get("failed_items", [])[:20]:
            _out(f"  failed {item['key']}: {item['reason']}")
        if job.get("error"):
            _out(f"  error: {job['error']}")
    if job["state"] == "done":
        return EXIT_OK
    return EXIT_REFUSED if deletion_refused(job) else EXIT_RUNTIME_ERROR


def deletion_refused(job: Mapping[str, Any]) -> bool:
    """Whether a failed job is a reconcile whose deletions the guard refused (nothing deleted)."""
    drift = job.get("drift") or {}
    return job["state"] == "failed" and any(d.get("refused") for d in drift.values())


def _drift_text(name: str, drift: Mapping[str, Any]) -> str:
    """A collection's drift: its counts, then the keys deleted (or, for a dry run, the keys that
    would be added, re-embedded and deleted)."""
    if drift.get("dry_run"):
        from ingest.prune import diff_lines

        return "\n".join(["  dry run: nothing was written", *(f"  {line}" for line in diff_lines(drift))])
    counts = " ".join(f"{k}={v}" for k, v in drift.items() if not k.endswith("_items"))
    lines = [f"  drift {name}: {counts}"]
    deleted = drift.get("deleted_items") or []
    lines += [f"    deleted {key}" for key in deleted[:20]]
    if len(deleted) > 20:
        lines.append(f"    ... {len(deleted) - 20} more (--json lists every key)")
    return "\n".join(lines)


def job_line(job: Mapping[str, Any]) -> str:
    """One line of ``radsearch jobs list``."""
    c = job["counts"]
    return (
        f"{job['id']}  {job['kind']:<9} {job['state']:<8} {job['source']}  "
        f"listed={c['listed']} frames={c['indexed_frames']} failed={c['failed']}"
    )


def print_jobs(jobs: Sequence[Mapping[str, Any]], *, as_json: bool) -> None:
    """``radsearch jobs list``: jobs as ``JobRecord.to_dict(with_items=False)`` gives them."""
    if as_json:
        _out(json.dumps({"data": [dict(j) for j in jobs], "count": len(jobs)}))
        return
    for job in jobs:
        _out(job_line(job))
    if not jobs:
        _out("no jobs")


def print_job(job: Mapping[str, Any], *, as_json: bool) -> None:
    """``radsearch jobs show``: one job as ``JobRecord.to_dict()`` gives it, with ``waiting``
    (why it does not move, or null); said on stderr too, unless ``as_json``."""
    _out(json.dumps(dict(job)) if as_json else json.dumps(dict(job), indent=2))
    if job.get("waiting") and not as_json:
        sys.stderr.write(_waiting_line(job["id"], job["waiting"]) + "\n")


def _ago(iso: str, now: float) -> str:
    from datetime import datetime

    return f"{max(now - datetime.fromisoformat(iso).timestamp(), 0.0):.0f}s ago"


def print_workers(workers: Sequence[Mapping[str, Any]], *, as_json: bool) -> None:
    """``radsearch jobs workers``: live workers as ``WorkerBeat.to_dict`` gives them."""
    if as_json:
        _out(json.dumps({"data": [dict(w) for w in workers], "count": len(workers)}))
        return
    import time

    now = time.time()
    for worker in workers:
        _out(
            f"{worker['hostname']}  queues={','.join(worker['queues'])}  pid={worker['pid']}  "
            f"last_seen={_ago(worker['last_seen'], now)}  active={worker['active']}/{worker['concurrency']}"
        )
    if not workers:
        _out("no live workers")


def _finish(record: Any, job_id: str, *, as_json: bool) -> int:
    if record is None:
        sys.stderr.write(
            f"radsearch: error: job {job_id} disappeared (Redis restarted without persistence?); "
            "run `radsearch reconcile SOURCE --collection NAME` to repair\n"
        )
        return EXIT_RUNTIME_ERROR
    return print_job_result(record.to_dict(), as_json=as_json)


def _create_collections(settings: Settings, spec: JobSpec, weights: str | None) -> None:
    """Create the job's missing collections with its encoder (and ``weights``) before it is
    queued. Embedded store: on the store's owner (the workers cannot: they never open the store;
    `ServerUnavailable` without one). A Qdrant server: here, where ``weights`` are given (the
    workers would create them with the encoder's default weights)."""
    if not spec.encoder:
        return
    if settings.store.backend != "edge":
        if weights is not None:
            from radsearch.services import ensure_collection, open_catalog

            with open_catalog(settings) as catalog:
                for name in spec.collections:
                    ensure_collection(catalog, name, spec.encoder, weights=weights)
        return
    from core.api_client import ApiClient
    from core.index.remote import locate_owner

    with ApiClient.from_settings(locate_owner(settings), settings) as api:
        for name in spec.collections:
            api.ensure_collection(name, remote.collection_spec(spec.encoder, weights))


def _submit_and_follow(
    args: argparse.Namespace, settings: Settings, kind: JobKind, spec: JobSpec, *, weights: str | None = None
) -> int:
    """Queue the job; print its id with ``--detach``, else follow it to the end and summarise."""
    from core.store_identity import served_store_id
    from workers.client import submit_job

    _create_collections(settings, spec, weights)
    spec = spec.model_copy(update={"store": served_store_id(settings)})
    store, app = _connect(settings)
    job_id = submit_job(store, app, kind, spec)
    if args.detach:
        _out(json.dumps({"job_id": job_id}) if args.json else job_id)
        return EXIT_OK
    record = _follow(settings, store, job_id, progress=not args.json)
    return _finish(record, job_id, as_json=args.json)


def ingest_celery(args: argparse.Namespace, settings: Settings) -> int:
    """``radsearch ingest SOURCE --collection A[,B] --executor celery [--detach]``."""
    from core.jobs import JobKind, JobSpec

    spec = JobSpec(
        source=_source_uri(args.source),
        collections=_collections(args.collection),
        manifest=remote.local_ref(args.manifest) if args.manifest else None,
        path_template=args.path_template,
        skip_unchanged=not args.no_skip_unchanged,
        encoder=args.encoder or "baseline",
        accept_burned_in=args.accept_burned_in,
        source_name=_source_name(args.source_name),
    )
    if args.prune or args.dry_run:
        raise ConfigError(
            "--prune and --dry-run run inline or through a server; with the workers, "
            "`radsearch reconcile SOURCE --collection NAME [--dry-run]` deletes what is gone"
        )
    if spec.path_template:
        from ingest.labels import PathTemplate

        PathTemplate(spec.path_template)  # refuse a bad template before anything is queued
    return _submit_and_follow(args, settings, JobKind.INGEST, spec, weights=args.weights)


def _cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    from core.jobs import JobKind, JobSpec

    check_prune_args(args)
    spec = JobSpec(
        source=_source_uri(args.source),
        collections=_collections(args.collection),
        manifest=remote.local_ref(args.manifest) if args.manifest else None,
        path_template=args.path_template,
        skip_unchanged=True,
        encoder=args.encoder,
        accept_burned_in=args.accept_burned_in,
        dry_run=args.dry_run,
        max_delete_fraction=args.max_delete_fraction,
        force=args.force,
        source_name=_source_name(args.source_name),
    )
    return _submit_and_follow(args, settings, JobKind.RECONCILE, spec)


def owner_job_dicts(settings: Settings, job_id: str | None, limit: int) -> list[dict[str, Any]]:
    """Owner-run jobs (backfills, owner ingests) of the data dir, read beside its owner: one
    (``job_id``) or the newest ``limit``, in the shape of ``radsearch jobs show|list``."""
    from core.jobs.sqlite_store import read_owner_jobs

    store = read_owner_jobs(settings)
    if store is None:
        return []
    try:
        if job_id is not None:
            record = store.get(job_id)
            records = [] if record is None else [record]
        else:
            records = store.recent(limit=limit)
        out = []
        for record in records:
            data = record.to_dict(with_items=job_id is not None)
            # an owner-run job's summary and error status only once it has them
            out.append(
                {k: v for k, v in data.items() if v is not None or k not in ("summary", "error_status")}
            )
        return out
    finally:
        store.close()


def _cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    from core.jobs import JOB_STATE_LOST
    from core.store_identity import store_id
    from workers.client import BrokerUnavailable, requeue_dead_letters

    if args.jobs_command == "show":
        owned = owner_job_dicts(settings, args.job_id, 1)  # the data dir's own: no Redis needed
        if owned:
            print_job(owned[0], as_json=args.json)
            return EXIT_OK
    if args.jobs_command == "list":
        records = owner_job_dicts(settings, None, args.limit)
        try:
            store = _job_store(settings)
        except BrokerUnavailable:
            if not records:
                raise
            sys.stderr.write("radsearch: warning: Redis does not answer; the server's own jobs only\n")
        else:
            if store.was_reset():
                sys.stderr.write(f"radsearch: warning: {JOB_STATE_LOST}\n")
            records += [
                r.to_dict(with_items=False)
                for r in store.recent(limit=args.limit, for_store=store_id(settings))
            ]
        records.sort(key=lambda r: str(r.get("created_at") or ""), reverse=True)
        print_jobs(records[: args.limit], as_json=args.json)
        return EXIT_OK
    store = _job_store(settings)
    record = store.get(args.job_id) if getattr(args, "job_id", None) is not None else None
    if record is None and getattr(args, "job_id", None) is not None:  # show, or requeue of one job
        if store.lost(args.job_id):
            sys.stderr.write(f"radsearch: error: job {args.job_id}: {JOB_STATE_LOST}\n")
            return EXIT_RUNTIME_ERROR
        sys.stderr.write(f"radsearch: error: no job {args.job_id}\n")
        return EXIT_RUNTIME_ERROR
    if args.jobs_command == "show":
        assert record is not None
        from workers.heartbeat import job_waiting

        job = record.to_dict()
        job["waiting"] = job_waiting(store, record, settings.celery)
        print_job(job, as_json=args.json)
        return EXIT_OK
    if args.jobs_command == "workers":
        from workers.heartbeat import live_workers

        beats = live_workers(store.client, dead_after_s=settings.celery.worker_dead_after_s)
        print_workers([beat.to_dict() for beat in beats], as_json=args.json)
        return EXIT_OK
    # requeue
    from workers.app import create_celery

    ours = store_id(settings)
    letters = store.dead_letters(job_id=args.job_id, for_store=ours)
    new_ids = requeue_dead_letters(store, create_celery(settings), job_id=args.job_id, for_store=ours)
    if args.json:
        _out(json.dumps({"requeued_batches": len(letters), "jobs": new_ids}))
    elif not letters:
        _out(
            "nothing to requeue: the dead-letter list is empty"
            if args.job_id is None
            else f"nothing to requeue: job {args.job_id} has no dead-lettered batch"
        )
    else:
        _out(f"requeued {len(letters)} dead-lettered batch(es) as job(s): {' '.join(new_ids)}")
    return EXIT_OK


def _remote_jobs(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """``radsearch jobs list|show|workers`` through the server: the workers' jobs and its own."""
    with remote.client(settings, url) as api:
        if args.jobs_command == "workers":
            print_workers(api.request("GET", "/v1/workers")["data"], as_json=args.json)
            return EXIT_OK
        if args.jobs_command == "list":
            answer = api.request("GET", "/v1/ingest-jobs", params={"limit": args.limit})
            if answer.get("warning"):
                sys.stderr.write(f"radsearch: warning: {answer['warning']}\n")
            listed = answer["data"]
            print_jobs([remote.as_record(job, with_items=False) for job in listed], as_json=args.json)
            return EXIT_OK
        try:
            job = api.request("GET", f"/v1/ingest-jobs/{remote.segment(args.job_id)}")
        except CollectionNotFound:
            try:  # a backfill the server runs (or ran before a restart)
                job = api.request("GET", f"/v1/backfill-jobs/{remote.segment(args.job_id)}")
            except CollectionNotFound:
                sys.stderr.write(f"radsearch: error: no job {args.job_id}\n")
                return EXIT_RUNTIME_ERROR
        except ConfigError as exc:
            if not str(exc).startswith("job state lost"):
                raise
            sys.stderr.write(f"radsearch: error: job {args.job_id}: {exc}\n")
            return EXIT_RUNTIME_ERROR
    print_job(remote.as_record(job), as_json=args.json)
    return EXIT_OK


def add_jobs_commands(sub: Any) -> None:
    """Register ``jobs`` and ``reconcile`` on the ``radsearch`` subparsers.

    ``jobs list|show|workers`` run through a radsearch server (``--url``, or the store's serving
    owner, which also runs jobs of its own); they run here otherwise, with the owner-run jobs
    (backfills) read from the data dir."""
    through_server = {"remote_handler": _remote_jobs, "remote_mode": "optional"}
    jobs = sub.add_parser("jobs", help="ingest jobs run by the workers")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    jlist = jobs_sub.add_parser("list", help="recent jobs, newest first")
    jlist.add_argument("--limit", type=at_least(1), default=20, help="at most this many jobs (default 20)")
    jlist.add_argument("--json", action="store_true")
    jlist.set_defaults(handler=_cmd_jobs, **through_server)
    jshow = jobs_sub.add_parser("show", help="one job: state, counts, failed items, throughput")
    jshow.add_argument("job_id")
    jshow.add_argument("--json", action="store_true")
    jshow.set_defaults(handler=_cmd_jobs, **through_server)
    jworkers = jobs_sub.add_parser(
        "workers", help="live workers: hostname, queues, pid, last heartbeat, running tasks"
    )
    jworkers.add_argument("--json", action="store_true")
    jworkers.set_defaults(handler=_cmd_jobs, **through_server)
    jrequeue = jobs_sub.add_parser("requeue", help="replay dead-lettered batches (all, or one job's)")
    jrequeue.add_argument("job_id", nargs="?")
    jrequeue.add_argument("--json", action="store_true")
    jrequeue.set_defaults(handler=_cmd_jobs)

    reconcile = sub.add_parser(
        "reconcile",
        help="repair drift between a source and collections (missing, changed, deleted objects)",
    )
    reconcile.add_argument("source", help="s3://bucket/prefix or a local folder")
    reconcile.add_argument("--collection", required=True, help="one name or a comma-separated list")
    reconcile.add_argument("--encoder", help="create missing collections with this encoder")
    reconcile.add_argument(
        "--manifest", help="CSV/JSONL manifest (path or s3:// URI) for re-ingested objects"
    )
    reconcile.add_argument("--path-template")
    add_sync_options(reconcile)
    reconcile.add_argument("--detach", action="store_true", help="print the job id and return")
    reconcile.add_argument("--json", action="store_true")
    reconcile.set_defaults(handler=_cmd_reconcile)
