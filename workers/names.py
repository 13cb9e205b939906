"""The workers' wire contract and the app's settings: task names, queues, and `settings_of`.

A leaf module (it imports no other ``workers`` module): the Celery app (`workers.app`), the tasks,
the heartbeat and the clients that enqueue by name all read these from here.

Queues: ``plan`` (CPU: list a source, reconcile, delete, finish a complete job by indexing its
collections) and ``embed`` (GPU or CPU: a batch of object keys → the batch pipeline → upsert).
"""

from __future__ import annotations

from typing import cast

from celery import Celery

from core.config import Settings

__all__ = [
    "DELETE_TASK",
    "EMBED_QUEUE",
    "EMBED_TASK",
    "FINISH_TASK",
    "PLAN_QUEUE",
    "PLAN_TASK",
    "RECONCILE_ALL_TASK",
    "RECONCILE_TASK",
    "SETTINGS_KEY",
    "TASK_QUEUES",
    "settings_of",
]

PLAN_QUEUE = "plan"
EMBED_QUEUE = "embed"

# Task names are the wire contract: the API and the command line enqueue by name.
PLAN_TASK = "radsearch.plan_job"
EMBED_TASK = "radsearch.embed_batch"
DELETE_TASK = "radsearch.delete_objects"
RECONCILE_TASK = "radsearch.reconcile"
RECONCILE_ALL_TASK = "radsearch.reconcile_subscriptions"
FINISH_TASK = "radsearch.finish_job"

#: The queue each task is routed to.
TASK_QUEUES: dict[str, str] = {
    PLAN_TASK: PLAN_QUEUE,
    RECONCILE_TASK: PLAN_QUEUE,
    RECONCILE_ALL_TASK: PLAN_QUEUE,
    DELETE_TASK: PLAN_QUEUE,
    FINISH_TASK: PLAN_QUEUE,
    EMBED_TASK: EMBED_QUEUE,
}

#: Where `workers.app.create_celery` keeps the `Settings` in the app's configuration.
SETTINGS_KEY = "radsearch_settings"


def settings_of(app: Celery) -> Settings:
    """The `Settings` the app was built from (`workers.app.create_celery`)."""
    return cast(Settings, app.conf[SETTINGS_KEY])
