"""Which store a job writes: an id per deployment, so that workers never write another's jobs.

Jobs and their queues live in Redis. Two deployments given the same Redis database (two data dirs
on one workstation, both on the default ``redis://127.0.0.1:6379/0``; a staging and a production
stack sharing a Redis) share the ``plan`` and ``embed`` queues, and a worker of one would take
the other's batches and write them into its own store, or fail the job when its store lacks the
collection. So every job names its store (`core.jobs.JobSpec.store`), and a worker leaves a job
of another store to the workers of that store (`workers.tasks`).

The id: ``edge:<random hex>`` for the embedded store, kept in ``<index dir>/store-id`` (made the
first time it is asked for; a copy of the data dir restored elsewhere keeps it), and
``qdrant:<url>`` for a Qdrant server, which every process using it names alike. Workers of the
embedded store ask its owner (``GET /v1/store``): they may run on other hosts. ``store.id``
(RADSEARCH_STORE__ID) pins it: to run the jobs queued under an id that changed (the file removed,
an index dir restored from before store ids), or to tell two copies of one data dir apart.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid

from core.config import Settings
from core.errors import ConfigError

__all__ = ["served_store_id", "store_id"]

_ID_FILE = "store-id"


def store_id(settings: Settings) -> str:
    """This deployment's store id: ``store.id`` where it is pinned, else from the data dir
    (embedded store) or the Qdrant server's URL."""
    if settings.store.id:
        return settings.store.id
    if settings.store.backend == "qdrant":
        return f"qdrant:{(settings.store.url or '').rstrip('/')}"
    path = settings.index_dir / _ID_FILE
    with contextlib.suppress(FileNotFoundError):
        return _read(path)
    fresh = f"edge:{uuid.uuid4().hex}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".store-id.", delete=False) as handle:
            handle.write(fresh + "\n")
        try:
            # a link is made whole or not at all: two processes asking at once agree on the first's id
            os.link(handle.name, path)
        except FileExistsError:
            return _read(path)
        finally:
            os.unlink(handle.name)
    except OSError as exc:
        raise ConfigError(f"cannot write the store id {path}: {exc.strerror}") from exc
    return fresh


def _read(path: os.PathLike[str]) -> str:
    with open(path) as handle:
        value = handle.read().strip()
    if not value.startswith("edge:"):
        raise ConfigError(f"{path} is damaged (not a store id); remove it and restart the server")
    return value


def served_store_id(settings: Settings, *, timeout_s: float = 120.0) -> str:
    """The id of the store a client with these settings writes (a worker, a command queueing a
    job): the server's at ``RADSEARCH_URL`` where one is set for the embedded store (a worker on
    another host), else `store_id`. `ServerUnavailable` while that server does not answer."""
    if settings.store.id or settings.store.backend != "edge" or not settings.url:
        return store_id(settings)
    from core.api_client import ApiClient

    with ApiClient.from_settings(settings.url, settings, timeout_s=timeout_s) as api:
        answer = api.request("GET", "/v1/store")
    return str(answer["store_id"])
