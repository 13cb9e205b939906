"""The command line through a radsearch server: what each command does when the store's owner
serves its HTTP API (or ``--url``/``RADSEARCH_URL`` names a server).

Every handler takes ``(args, settings, url)``, sends the same arguments to the API, and prints
through the same functions as the command run here (`radsearch.cli.print_*`,
`radsearch.admin_commands.print_*`, `workers.commands.print_*`), so the output is the same.
Error answers come back from `core.api_client.ApiClient` as radsearch's own errors, which
`radsearch.cli.main` turns into the same exit codes. Long work (``ingest``, ``collections
backfill``) runs as a job in the server; the command follows it with a progress bar.

This module is imported by the parser: heavy imports stay inside the functions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from core.config import Settings
from core.errors import CollectionNotFound, ConfigError, RadsearchError

__all__ = [
    "alias",
    "aliases",
    "backfill",
    "collections_list",
    "create",
    "drop",
    "ingest",
    "jobs",
    "search",
    "unalias",
]

EXIT_OK = 0
EXIT_RUNTIME_ERROR = 1
EXIT_INTERRUPTED = 130
_POLL_S = 0.25
_FINAL_STATES = ("done", "failed")

if TYPE_CHECKING:
    from core.api_client import ApiClient


def _client(settings: Settings, url: str) -> ApiClient:
    from core.api_client import ApiClient

    return ApiClient.from_settings(url, settings)


def _segment(name: str) -> str:
    return quote(name, safe="")


def _local_ref(value: str | Path) -> str:
    """A source or manifest as the server reads it: URIs as given, local paths made absolute
    (the server runs on this machine, from another working directory)."""
    text = str(value)
    return text if "://" in text else str(Path(text).expanduser().resolve())


def _weights_ref(value: str | None) -> str | None:
    """``--weights`` as the server reads it: a local file or folder made absolute; a hub id, an
    ``s3://`` URI or ``random`` as given."""
    if value is None or "://" in value or not Path(value).expanduser().exists():
        return value
    return str(Path(value).expanduser().resolve())


def _follow(client: ApiClient, path: str, *, desc: str, progress: bool, postfix: bool) -> dict[str, Any]:
    """Poll a job until it ends, with a progress bar like the command run here; its last state.

    Ctrl-C stops following, not the job: `KeyboardInterrupt` goes up with the job left running."""
    from tqdm import tqdm

    bar = tqdm(unit="obj", desc=desc, disable=not progress, dynamic_ncols=True)
    try:
        while True:
            job: dict[str, Any] = client.request("GET", path)
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


def _job_error(job: dict[str, Any], url: str) -> RadsearchError:
    """The error a failed owner-run job stands for, typed as if the command had run here."""
    from core.api_client import error_for

    message = job.get("error") or "the job failed"
    status = job.get("error_status")
    if isinstance(status, int) and (400 <= status < 500 or status == 507):
        return error_for(status, message, url)
    return RadsearchError(f"job {job['id']} failed: {message}")


def _interrupted(job_id: str) -> int:
    sys.stderr.write(
        f"radsearch: stopped following job {job_id}; it goes on in the server "
        f"(radsearch jobs show {job_id})\n"
    )
    return EXIT_INTERRUPTED


def _print_job_id(job_id: str, *, as_json: bool) -> None:
    sys.stdout.write((json.dumps({"job_id": job_id}) if as_json else job_id) + "\n")


# -- ingest and search ---------------------------------------------------------------------------


def ingest(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """``radsearch ingest`` as a job of the server: the owner runs the inline pipeline on the
    folder or bucket (``--executor celery``: the server queues it for the workers)."""
    from ingest.labels import PathTemplate, load_manifest
    from ingest.sources import open_source
    from radsearch.cli import check_prune_args

    celery = args.executor == "celery"
    check_prune_args(args)
    if celery and (args.prune or args.dry_run):
        raise ConfigError(
            "--prune and --dry-run run inline or through a server; with the workers, "
            "`radsearch reconcile SOURCE --collection NAME [--dry-run]` deletes what is gone"
        )
    if not celery:
        # The same checks, in the same order and words, as the command run here.
        open_source(args.source, settings, name=args.source_name).close()
        if args.manifest is not None:
            load_manifest(args.manifest)
        if args.path_template:
            PathTemplate(args.path_template)
    body: dict[str, Any] = {
        "executor": "celery" if celery else "owner",
        "source": _local_ref(args.source),
        "collections": args.collection.split(",") if celery else [args.collection],
        "manifest": _local_ref(args.manifest) if args.manifest is not None else None,
        "path_template": args.path_template,
        "skip_unchanged": not args.no_skip_unchanged,
        "encoder": (args.encoder or "baseline") if celery else args.encoder,
        "accept_burned_in": args.accept_burned_in,
    }
    if not celery:
        body.update(
            prune=args.prune,
            dry_run=args.dry_run,
            max_delete_fraction=args.max_delete_fraction,
            force=args.force,
        )
    if args.source_name is not None:
        body["source_name"] = args.source_name
    with _client(settings, url) as client:
        if args.weights and not celery:
            _ensure_with_weights(client, args)
        job_id = client.request("POST", "/v1/ingest-jobs", json=body)["id"]
        if args.detach:
            _print_job_id(job_id, as_json=args.json)
            return EXIT_OK
        try:
            job = _follow(
                client,
                f"/v1/ingest-jobs/{job_id}",
                desc=f"job {job_id[:8]}" if celery else "ingest",
                progress=not args.json,
                postfix=not celery,
            )
        except KeyboardInterrupt:
            return _interrupted(job_id)
    if celery:
        from workers.commands import print_job_result

        return print_job_result(_as_record(job), as_json=args.json)
    if job["state"] != "done":
        raise _job_error(job, url)
    from radsearch.cli import print_dry_run, print_ingest_summary

    if job["summary"].get("dry_run"):
        print_dry_run(job["summary"], as_json=args.json)
    else:
        print_ingest_summary(job["summary"], as_json=args.json)
    return EXIT_OK


def _ensure_with_weights(client: ApiClient, args: argparse.Namespace) -> None:
    """``--weights`` for a new collection: create it first, as the command run here would."""
    client.ensure_collection(
        args.collection, {"encoder": args.encoder or "baseline", "weights": _weights_ref(args.weights)}
    )


def search(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """``radsearch search``: the image is uploaded to ``POST /v1/collections/{name}/search/image``."""
    from radsearch.cli import filter_mapping, print_hits
    from radsearch.services import check_limit, open_query_image

    check_limit(args.k, settings)
    form = {"limit": str(args.k)}
    mapping = filter_mapping(args)
    if mapping:
        form["filter"] = json.dumps(mapping)
    # The server names, size-checks and decodes the upload, with the words of the direct mode.
    with open_query_image(args.image) as handle, _client(settings, url) as client:
        answer = client.request(
            "POST",
            f"/v1/collections/{_segment(args.collection)}/search/image",
            files={"file": (args.image.name, handle, "application/octet-stream")},
            data=form,
        )
    print_hits(answer["hits"], as_json=args.json, warnings=answer.get("warnings", []))
    return EXIT_OK


# -- collections ---------------------------------------------------------------------------------


def collections_list(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """``radsearch collections list``."""
    from radsearch.cli import print_collections

    with _client(settings, url) as client:
        listed = client.request("GET", "/v1/collections")["collections"]
    rows = [
        {
            "name": c["name"],
            "encoder": c["encoder"],
            "weights": c["weights"],
            "dim": c["dim"],
            "points": c["points"],
        }
        for c in listed
    ]
    print_collections(rows, as_json=args.json)
    return EXIT_OK


def create(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """``radsearch collections create``."""
    from radsearch.admin_commands import encoder_arg, print_created

    body: dict[str, Any] = {
        "name": args.name,
        "encoder": encoder_arg(args.encoder),
        "weights": _weights_ref(args.weights),
        "quantization": args.quantization,
        "on_disk": args.on_disk,
    }
    with _client(settings, url) as client:
        created = client.request("POST", "/v1/collections", json=body)
    row = {key: created[key] for key in ("name", "encoder", "dim", "weights", "quantization", "on_disk")}
    print_created(row, as_json=args.json)
    return EXIT_OK


def drop(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """``radsearch collections drop``: refused (409, exit 2) while aliased or being written."""
    from radsearch.admin_commands import print_dropped

    with _client(settings, url) as client:
        dropped = client.request("DELETE", f"/v1/collections/{_segment(args.name)}")
    print_dropped(args.name, dropped if dropped["trashed"] else None)
    return EXIT_OK


def calibrate(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """``radsearch collections calibrate`` by the server that owns the store."""
    from radsearch.admin_commands import print_calibrated

    with _client(settings, url) as client:
        record = client.request("POST", f"/v1/collections/{_segment(args.name)}/calibrate")
    print_calibrated(record)
    return EXIT_OK


def backfill(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """``radsearch collections backfill`` as a backfill job of the server, followed to its end."""
    from radsearch.admin_commands import print_backfill

    # The API backfills from a collection, an alias or a bucket, never from a folder on its disk.
    with _client(settings, url) as client:
        job_id = client.request(
            "POST",
            f"/v1/collections/{_segment(args.name)}/backfill",
            json={"from": args.origin, "path_template": args.path_template},
        )["id"]
        try:
            job = _follow(
                client, f"/v1/backfill-jobs/{job_id}", desc="backfill", progress=not args.json, postfix=False
            )
        except KeyboardInterrupt:
            return _interrupted(job_id)
    if job["state"] != "done":
        raise _job_error(job, url)
    print_backfill({"collection": args.name, "from": args.origin, **job["summary"]}, as_json=args.json)
    return EXIT_OK


def alias(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """``radsearch collections alias``."""
    from radsearch.admin_commands import print_alias

    with _client(settings, url) as client:
        answer = client.request(
            "PUT",
            f"/v1/aliases/{_segment(args.alias)}",
            json={"collection": args.collection, "force": bool(getattr(args, "force", False))},
        )
    print_alias(args.alias, args.collection, answer.get("previous"))
    return EXIT_OK


def unalias(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """``radsearch collections unalias``."""
    from radsearch.admin_commands import print_unaliased

    with _client(settings, url) as client:
        client.request("DELETE", f"/v1/aliases/{_segment(args.alias)}")
    print_unaliased(args.alias)
    return EXIT_OK


def aliases(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """``radsearch collections aliases``."""
    from radsearch.admin_commands import print_aliases

    with _client(settings, url) as client:
        listed = client.request("GET", "/v1/aliases")["aliases"]
    print_aliases({item["alias"]: item["collection"] for item in listed}, as_json=args.json)
    return EXIT_OK


# -- jobs ----------------------------------------------------------------------------------------


def _as_record(job: dict[str, Any], *, with_items: bool = True) -> dict[str, Any]:
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


def jobs(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """``radsearch jobs list|show|workers`` through the server: the workers' jobs and its own."""
    from workers.commands import print_job, print_jobs, print_workers

    with _client(settings, url) as client:
        if args.jobs_command == "workers":
            print_workers(client.request("GET", "/v1/workers")["data"], as_json=args.json)
            return EXIT_OK
        if args.jobs_command == "list":
            answer = client.request("GET", "/v1/ingest-jobs", params={"limit": args.limit})
            if answer.get("warning"):
                sys.stderr.write(f"radsearch: warning: {answer['warning']}\n")
            listed = answer["data"]
            print_jobs([_as_record(job, with_items=False) for job in listed], as_json=args.json)
            return EXIT_OK
        try:
            job = client.request("GET", f"/v1/ingest-jobs/{_segment(args.job_id)}")
        except CollectionNotFound:
            try:  # a backfill the server runs (or ran before a restart)
                job = client.request("GET", f"/v1/backfill-jobs/{_segment(args.job_id)}")
            except CollectionNotFound:
                sys.stderr.write(f"radsearch: error: no job {args.job_id}\n")
                return EXIT_RUNTIME_ERROR
        except ConfigError as exc:
            if not str(exc).startswith("job state lost"):
                raise
            sys.stderr.write(f"radsearch: error: job {args.job_id}: {exc}\n")
            return EXIT_RUNTIME_ERROR
    print_job(_as_record(job), as_json=args.json)
    return EXIT_OK
