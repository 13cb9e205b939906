"""The command line through a radsearch server: which server a command goes through, and what
every command run that way shares.

A command goes through a server when the store's owner serves its HTTP API (or
``--url``/``RADSEARCH_URL`` names one): its module's remote handler, ``(args, settings, url)``,
sends the same arguments to the API and prints through the same functions as the command run
here, so the output is the same. Error answers come back from `core.api_client.ApiClient` as
radsearch's own errors, which `radsearch.commands.main.main` turns into the same exit codes. Long
work (``ingest``, ``collections backfill``) runs as a job in the server; the command follows it
with a progress bar.

This module is imported by the parser: heavy imports stay inside the functions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from core.config import Settings
from core.errors import RadsearchError, StoreOwned
from radsearch.commands.common import EXIT_INTERRUPTED

if TYPE_CHECKING:
    from core.api_client import ApiClient

__all__ = [
    "STORE_RESTART_WAIT_S",
    "RemoteMode",
    "as_record",
    "client",
    "collection_spec",
    "follow",
    "interrupted",
    "job_error",
    "local_ref",
    "print_job_id",
    "remote_url",
    "segment",
    "server_url",
    "weights_ref",
]

_POLL_S = 0.25
_FINAL_STATES = ("done", "failed")
# A server replacing its store process answers 503 for seconds (~5 s at 1 M points, a minute at
# most between tries of a new process that keeps ending): a command waits this long, then fails.
STORE_RESTART_WAIT_S = 30.0

# When a command goes through a radsearch server instead of running here:
# - "store": it needs the store: through ``--url``/``RADSEARCH_URL`` or the serving owner, and
#   `StoreOwned` when another process owns the store without serving;
# - "optional": it can run here without the store (``jobs``), but the serving owner knows more
#   (the jobs it runs itself): through ``--url`` or the serving owner, else here;
# - "explicit": it never needs the store (``ingest --executor celery`` talks to Redis): through
#   ``--url`` only.
RemoteMode = Literal["store", "optional", "explicit"]


def server_url(settings: Settings, *, mode: RemoteMode = "store") -> str | None:
    """The radsearch server a command goes through: ``--url``/``RADSEARCH_URL``, else (``mode``
    store or optional) the owner of the embedded store's data dir while it serves; None to run
    here.

    `StoreOwned` (``mode`` store) when another process owns the store and serves nothing: the
    command stops before touching the store, and the owner is not disturbed."""
    if settings.url:
        return settings.url
    if mode == "explicit" or settings.store.backend != "edge":
        return None
    from core.ownership import current_owner

    owner = current_owner(settings.index_dir)
    if owner is None or owner.pid == os.getpid():
        return None
    if owner.url:
        return owner.url
    if mode == "optional":
        return None
    raise StoreOwned(settings.index_dir, owner)


def remote_url(args: argparse.Namespace, settings: Settings) -> str | None:
    """The server this command goes through, if it has a remote handler and one applies."""
    if getattr(args, "remote_handler", None) is None:
        return None
    mode: RemoteMode | Callable[[argparse.Namespace], RemoteMode] = getattr(args, "remote_mode", "store")
    return server_url(settings, mode=mode(args) if callable(mode) else mode)


def client(settings: Settings, url: str, **options: Any) -> ApiClient:
    """An API client for the server at ``url`` (``timeout_s=None``: no client-side limit). While
    the server replaces its store process (seconds) a command waits, up to `STORE_RESTART_WAIT_S`.
    A data dir's owner that stops before it answered raises `ServerGone` (the command then runs
    here: `radsearch.commands.main`), not after a wait for it."""
    from core.api_client import ApiClient

    options.setdefault("store_restart_wait_s", STORE_RESTART_WAIT_S)
    if not settings.url:
        options.setdefault("serves", lambda: _owner_serves(settings, url))
    return ApiClient.from_settings(url, settings, **options)


def _owner_serves(settings: Settings, url: str) -> bool:
    """Whether the data dir's owner is still the server at ``url``."""
    from core.ownership import current_owner

    owner = current_owner(settings.index_dir)
    return owner is not None and owner.url == url


def segment(name: str) -> str:
    """A name as one URL path segment."""
    return quote(name, safe="")


def local_ref(value: str | Path) -> str:
    """A source or manifest as the server reads it: URIs as given, local paths made absolute
    (the server runs on this machine, from another working directory)."""
    text = str(value)
    return text if "://" in text else str(Path(text).expanduser().resolve())


def weights_ref(value: str | None) -> str | None:
    """``--weights`` as the server reads it: a local file or folder made absolute; a hub id, an
    ``s3://`` URI or ``random`` as given."""
    if value is None or "://" in value or not Path(value).expanduser().exists():
        return value
    return str(Path(value).expanduser().resolve())


def collection_spec(encoder: str, weights: str | None) -> dict[str, Any]:
    """The body of ``POST /v1/collections`` (less the name) for ``--encoder`` and ``--weights``."""
    return {"encoder": encoder} if weights is None else {"encoder": encoder, "weights": weights_ref(weights)}


def follow(api: ApiClient, path: str, *, desc: str, progress: bool, postfix: bool) -> dict[str, Any]:
    """Poll a job until it ends, with a progress bar like the command run here; its last state.

    Ctrl-C stops following, not the job: `KeyboardInterrupt` goes up with the job left running."""
    from core.progress import progress_bar

    bar = progress_bar(desc, shown=progress)
    try:
        while True:
            job: dict[str, Any] = api.request("GET", path)
            counts = job["counts"]
            bar.total = max(counts["queued"], counts["objects_done"]) or None
            bar.n = counts["objects_done"]
            if postfix:
                errors = counts["failed"] + counts["quarantined"]
                bar.set_postfix(frames=counts["indexed_frames"], errors=errors, refresh=False)
            bar.refresh()
            if job["state"] in _FINAL_STATES:
                return job
            time.sleep(_POLL_S)
    finally:
        bar.close()


def job_error(job: dict[str, Any], url: str) -> RadsearchError:
    """The error a failed owner-run job stands for, typed as if the command had run here."""
    from core.api_client import error_for

    message = job.get("error") or "the job failed"
    status = job.get("error_status")
    if isinstance(status, int) and (400 <= status < 500 or status == 507):
        return error_for(status, message, url)
    return RadsearchError(f"job {job['id']} failed: {message}")


def interrupted(job_id: str) -> int:
    """Ctrl-C while following a job of the server: say so, exit 130."""
    sys.stderr.write(
        f"radsearch: stopped following job {job_id}; it goes on in the server "
        f"(radsearch jobs show {job_id})\n"
    )
    return EXIT_INTERRUPTED


def print_job_id(job_id: str, *, as_json: bool) -> None:
    """``--detach``: the job id alone, or ``{"job_id"}``."""
    sys.stdout.write((json.dumps({"job_id": job_id}) if as_json else job_id) + "\n")


def as_record(job: dict[str, Any], *, with_items: bool = True) -> dict[str, Any]:
    """A job of the API as ``JobRecord.to_dict`` gives it; what only owner-run jobs have
    (``executor`` owner, ``summary``, ``error_status``) is kept for them."""
    out = dict(job)
    if out.get("executor") == "celery":
        del out["executor"]
    for key in ("summary", "error_status"):
        if out.get(key) is None:
            out.pop(key, None)
    if not with_items:
        out.pop("failed_items", None)
    return out
