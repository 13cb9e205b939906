"""The broker messages each worker holds, and those of a worker that died given back at once.

With ``acks_late`` a worker holds every message it has taken (running, reserved, or waiting on a
retry countdown) unacknowledged in kombu's ``unacked`` hash until its task ends. A worker killed
outright (kill -9 of its main process, an out-of-memory kill, a lost host) leaves them there, and
kombu brings them back only after the visibility timeout (``celery.visibility_timeout_s``, an hour
by default): its batches, and the job, would wait that long. So each worker's heartbeat also
records the delivery tags it holds::

    worker-messages   hash: worker instance (hostname/pid/start) → JSON {hostname, last_seen, tags}

and every worker, each ``restore_interval_s``, gives back to their queues the messages of an
instance that has not beaten for ``worker_dead_after_s`` (`give_back_dead_workers_messages`): a
killed worker's batch runs again within about ``worker_dead_after_s + restore_interval_s``. An
instance is keyed by its pid and start, so a worker restarted under the same hostname does not
hide what its previous process held. A worker stopped cleanly removes its entry (kombu gives its
messages back itself). One that was only frozen for that long finds its batch run again elsewhere:
harmless, as batches are idempotent and counted once.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, cast

import redis
from celery import Celery

from core.metrics import WORKER_MESSAGES_GIVEN_BACK

__all__ = [
    "HELD_KEY",
    "forget_held",
    "give_back_dead_workers_messages",
    "held_delivery_tags",
    "instance_id",
    "record_held",
]

log = logging.getLogger(__name__)

HELD_KEY = "radsearch:worker-messages"
# The worker's state changes under a threads pool while it is read: tries before giving up a beat.
_READ_TRIES = 3


def instance_id(hostname: str, pid: int, started_at: float) -> str:
    """One worker process's key in `HELD_KEY`: a restart under the same hostname is another."""
    return f"{hostname}/{pid}/{started_at:.6f}"


def held_delivery_tags() -> tuple[str, ...]:
    """The delivery tags of the messages this worker process holds: reserved or running tasks,
    and those waiting on a countdown (celery's worker state; call it in a worker's main process)."""
    from celery.worker import state  # the worker's own machinery: loaded in workers only

    for _ in range(_READ_TRIES):
        try:
            requests = [*state.requests.values(), *state.scheduled_requests]
        except RuntimeError:  # changed size while read (a threads pool): read again
            continue
        tags = {getattr(getattr(request, "message", None), "delivery_tag", None) for request in requests}
        return tuple(sorted(str(tag) for tag in tags if tag))
    return ()


def record_held(pipe: Any, instance: str, hostname: str, last_seen: float, tags: tuple[str, ...]) -> None:
    """Add the write of ``instance``'s held tags to ``pipe`` (the heartbeat's pipeline)."""
    pipe.hset(
        HELD_KEY, instance, json.dumps({"hostname": hostname, "last_seen": last_seen, "tags": list(tags)})
    )


def _queue_of(unacked: Any) -> str:
    """The routing key (our queue's name) of a value of kombu's ``unacked`` hash: JSON
    ``[message, exchange, routing_key]``."""
    try:
        return str(json.loads(unacked)[2])
    except (ValueError, TypeError, IndexError):
        return "unknown"


def forget_held(pipe: Any, instance: str) -> None:
    """Add dropping ``instance``'s entry to ``pipe`` (a clean stop: kombu gives its messages back
    itself)."""
    pipe.hdel(HELD_KEY, instance)


def give_back_dead_workers_messages(
    client: redis.Redis, app: Celery, *, dead_after_s: float, now: float | None = None
) -> int:
    """Put the unacknowledged messages of each worker instance silent for ``dead_after_s`` back
    in their queues; returns how many were still unacknowledged (given back).

    Each entry is taken by one caller (the one whose ``HDEL`` removes it), so two workers sweeping
    at once do not give a message back twice. A tag no longer unacknowledged (its task ended, or
    kombu's own restore came first) is passed over."""
    now = time.time() if now is None else now
    given = 0
    for instance, raw in cast(dict[Any, Any], client.hgetall(HELD_KEY)).items():
        try:
            entry = json.loads(raw)
            last_seen = float(entry["last_seen"])
            tags = [str(tag) for tag in entry["tags"]]
            hostname = str(entry["hostname"])
        except (ValueError, KeyError, TypeError):
            client.hdel(HELD_KEY, instance)  # not ours to read: never restored from
            continue
        if now - last_seen < dead_after_s or not client.hdel(HELD_KEY, instance):
            continue
        if not tags:
            continue
        with app.connection_for_write() as connection:
            qos = connection.default_channel.qos
            held = {
                tag: value
                for tag, value in zip(tags, client.hmget(qos.unacked_key, tags), strict=True)
                if value
            }
            for tag, value in held.items():
                qos.restore_by_tag(tag)
                WORKER_MESSAGES_GIVEN_BACK.labels(_queue_of(value)).inc()
        if held:
            log.warning(
                "worker %s silent for %.0f s (killed?): %d message(s) it held given back to their queues",
                hostname,
                now - last_seen,
                len(held),
            )
        given += len(held)
    return given
