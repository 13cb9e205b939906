"""``radsearch worker``: a Celery worker of the ingest pipeline (one per GPU)."""

from __future__ import annotations

import argparse
import os
import socket
from typing import Any

from core.config import Settings
from core.errors import ConfigError, ServerUnavailable
from core.suggest import named_with_suggestions
from radsearch.commands.arg_types import at_least, port_number
from radsearch.commands.common import EXIT_OK

__all__ = ["add_worker_command"]

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from core.store_identity import served_store_id
    from workers.app import create_celery
    from workers.names import EMBED_QUEUE, PLAN_QUEUE

    queues = args.queues.split(",")
    known = (PLAN_QUEUE, EMBED_QUEUE)
    unknown = [queue for queue in queues if queue not in known]
    if unknown:
        raise ConfigError(
            f"--queues {args.queues!r}: no queue {named_with_suggestions(unknown, known)}; "
            f"the queues are {' and '.join(known)}, comma-separated"
        )
    if args.device:
        settings = settings.model_copy(
            update={"runtime": settings.runtime.model_copy(update={"device": args.device})}
        )
    if EMBED_QUEUE in queues:  # a device it cannot use would fail every batch, not the start
        from core.encoders.device import select_device

        select_device(settings.runtime, setting="--device" if args.device else "runtime.device")
    # Workers never open the embedded store (its owner writes what they send), so any pool and
    # any number of processes will do.
    pool = args.pool or "prefork"
    # The beat's reconcile names this store: another deployment's workers sharing the Redis
    # database would reconcile their own subscriptions instead.
    beat_store = None
    if args.beat:
        try:
            beat_store = served_store_id(settings)
        except ServerUnavailable as exc:
            raise ServerUnavailable(
                f"{exc} (--beat asks it which store the reconcile is for: start it first)"
            ) from None
    app = create_celery(settings, beat_store=beat_store)
    if args.metrics_port:
        from workers.metrics import serve_worker_metrics

        serve_worker_metrics(settings.celery.metrics_host, args.metrics_port, pool=pool)
    # the pid: two workers of one host on the same queues (one per GPU) would share a name, and
    # the second one's heartbeat would hide the first from `jobs workers`
    hostname = args.hostname or f"radsearch-{'-'.join(queues)}-{os.getpid()}@{socket.gethostname()}"
    argv = [
        "worker",
        f"--queues={args.queues}",
        f"--concurrency={args.concurrency}",
        f"--pool={pool}",
        f"--loglevel={args.loglevel}",
        f"--hostname={hostname}",
        "--without-gossip",
        "--without-mingle",
    ]
    if args.max_tasks_per_child:
        argv.append(f"--max-tasks-per-child={args.max_tasks_per_child}")
    if args.beat:
        schedule = settings.data_dir / "celerybeat-schedule"
        schedule.parent.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", f"--schedule={schedule}"]
    app.worker_main(argv=argv)
    return EXIT_OK


def add_worker_command(sub: Any) -> None:
    """Register ``radsearch worker`` on the ``radsearch`` subparsers."""
    worker = sub.add_parser(
        "worker",
        help="start a Celery worker (one per GPU)",
        description=(
            "Start a worker: it fetches, decodes and embeds batches, then writes them to the Qdrant "
            "server or, with the embedded store, sends them to the store's owner (`radsearch serve` "
            "on the data dir, or RADSEARCH_URL). Start as many as you like."
        ),
    )
    worker.add_argument("--queues", default="plan,embed", help="comma-separated: plan, embed (default both)")
    worker.add_argument("--device", help="encoder device for this worker, e.g. cuda:0 or cpu")
    worker.add_argument("--concurrency", type=at_least(1), default=1, help="pool size (1 per GPU)")
    worker.add_argument("--pool", choices=("prefork", "threads", "solo"), help="default: prefork")
    worker.add_argument("--loglevel", type=str.upper, choices=_LOG_LEVELS, default="INFO")
    worker.add_argument(
        "--hostname", help="worker node name, one per worker (default radsearch-QUEUES-PID@HOST)"
    )
    worker.add_argument("--beat", action="store_true", help="also run the periodic reconcile schedule")
    worker.add_argument(
        "--max-tasks-per-child",
        type=at_least(0),
        default=0,
        help="replace a pool process after this many tasks (default 0: never)",
    )
    worker.add_argument(
        "--metrics-port",
        type=port_number,
        help="serve Prometheus metrics on this port (host: RADSEARCH_CELERY__METRICS_HOST); the "
        "prefork pool needs PROMETHEUS_MULTIPROC_DIR set to an empty folder",
    )
    worker.set_defaults(handler=_cmd_worker)
