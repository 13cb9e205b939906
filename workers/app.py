"""The Celery app, built from `Settings` (never at import time).

Delivery is at-least-once and tasks are idempotent (deterministic point ids, batches counted once):
``acks_late`` + ``task_reject_on_worker_lost`` put the message of a killed worker back in the queue,
prefetch 1 keeps a long batch from holding others hostage, the other workers give back the
messages of a worker that vanished altogether once its heartbeat stops (`workers.held_messages`),
and Redis' visibility timeout returns those of a worker that died before its heartbeat named them.
JSON only: a task argument is never unpickled.

Task names and queues: `workers.names`.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import redis
from celery import Celery, bootsteps

from core.config import Settings
from core.jobs.redis_store import open_job_store
from workers.heartbeat import HeartbeatStep
from workers.held_messages import give_back_dead_workers_messages
from workers.names import EMBED_QUEUE, RECONCILE_ALL_TASK, SETTINGS_KEY, TASK_QUEUES, settings_of
from workers.request_headers import install_request_id_propagation
from workers.tasks import register_tasks, resend_lost_batches

__all__ = ["create_celery"]

log = logging.getLogger(__name__)


def _patch_kombu_closed_connection() -> None:
    """Make kombu's Redis channel report a closed broker connection as a connection error.

    kombu 5.7 builds a channel's connection parameters from ``channel.connection.client``, and
    that is None once the connection has been closed. A threads-pool worker that loses Redis can
    get there from two threads at once. The consumer restores unacked messages while closing the
    channel, and a task thread acks its message. kombu then raises ``AttributeError: 'NoneType'
    object has no attribute 'hostname'``. Celery treats that as an unrecoverable error and stops
    consuming. As a redis ``ConnectionError``, Celery reconnects instead, and the ack that could
    not be made leaves its message to be delivered again (task ids are deterministic). Seen in
    about one Redis-restart test in four under load.
    """
    import redis.exceptions
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._connparams
    if getattr(original, "radsearch_patched", False):
        return

    def connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection is closed")
        return original(self, asynchronous)  # type: ignore[no-untyped-call]

    connparams.radsearch_patched = True  # type: ignore[attr-defined]
    kombu_redis.Channel._connparams = connparams  # type: ignore[method-assign]


def create_celery(settings: Settings, *, beat_store: str | None = None) -> Celery:
    """A configured Celery app with the radsearch tasks registered. ``beat_store``: the store id
    its periodic reconcile names (`core.store_identity`), so that only that store's workers run it
    where two deployments share the Redis database."""
    _patch_kombu_closed_connection()

    cfg = settings.celery
    broker = settings.broker_url
    backend = settings.result_backend_url
    app = Celery("radsearch", broker=broker, backend=backend, set_as_current=False)
    transport_options: dict[str, Any] = {
        "visibility_timeout": cfg.visibility_timeout_s,
        "unacked_restore_interval": cfg.restore_interval_s,
        "unacked_restore_throttle": 1,
        # The restore mutex of a worker killed mid-sweep must not block others for long.
        "unacked_mutex_expire": min(300, cfg.visibility_timeout_s),
        "socket_timeout": cfg.publish_timeout_s,
        "socket_connect_timeout": min(cfg.publish_timeout_s, 5.0),
        "health_check_interval": 10,
    }
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=False,
        task_ignore_result=True,
        result_expires=timedelta(days=1),
        broker_transport_options=transport_options,
        result_backend_transport_options=transport_options,
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_connection_timeout=min(cfg.publish_timeout_s, 5.0),
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 3,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 2.0,
        },
        task_default_queue=EMBED_QUEUE,
        task_routes={name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        timezone="UTC",
        enable_utc=True,
    )
    install_request_id_propagation()
    if cfg.reconcile_interval_s > 0 and settings.events.subscriptions:
        app.conf.beat_schedule = {
            "reconcile-subscriptions": {
                "task": RECONCILE_ALL_TASK,
                "schedule": timedelta(seconds=cfg.reconcile_interval_s),
                "kwargs": {"store": beat_store},
            }
        }
    app.conf[SETTINGS_KEY] = settings
    register_tasks(app)
    # Every worker of this app says it is alive (radsearch jobs workers, a job's `waiting`).
    app.steps["worker"].add(HeartbeatStep)
    app.steps["worker"].add(_LostBatchWatch)
    return app


class _LostBatchWatch(bootsteps.StartStopStep):  # type: ignore[misc]
    """In each worker's main process, every ``restore_interval_s``: give back to their queues the
    messages of workers that died holding them (`workers.held_messages`), and send again the
    batches the broker lost (`workers.tasks.resend_lost_batches`), once their job has been idle
    for longer than the visibility timeout plus a few restore sweeps."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None
        self.clients: tuple[Any, Any] | None = None

    def start(self, parent: Any) -> None:
        cfg = settings_of(parent.app).celery
        self.tref = parent.timer.call_repeatedly(cfg.restore_interval_s, self.tick, (parent,), priority=10)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def tick(self, parent: Any) -> None:
        settings = settings_of(parent.app)
        cfg = settings.celery
        broker_url = settings.broker_url
        if not broker_url.startswith(("redis://", "rediss://", "unix://")):
            return  # the loss this repairs is the Redis transport's
        try:
            if self.clients is None:
                broker = redis.Redis.from_url(
                    broker_url,
                    socket_timeout=cfg.publish_timeout_s,
                    socket_connect_timeout=min(cfg.publish_timeout_s, 5.0),
                )
                self.clients = (open_job_store(settings.broker_url, cfg), broker)
            store, broker = self.clients
            give_back_dead_workers_messages(broker, parent.app, dead_after_s=cfg.worker_dead_after_s)
            idle_s = cfg.visibility_timeout_s + 3 * cfg.restore_interval_s + 5
            resend_lost_batches(parent.app, store, broker, idle_s)
        except Exception as exc:  # Redis away: the next tick tries again
            log.warning("lost-message check failed: %s", type(exc).__name__)
