"""``radsearch ingest``: inline in this process, through a server (the store's owner runs it as a
job), or ``--executor celery`` (a job for the workers: `radsearch.commands.jobs`)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from core.config import Settings
from core.errors import ConfigError
from radsearch.commands import remote
from radsearch.commands.common import (
    EXIT_OK,
    LABELS_KEPT,
    MANIFEST_UNMATCHED,
    MODALITY_CONFLICTS,
    TEMPLATE_UNMATCHED,
    print_json,
)
from radsearch.commands.dicomweb import add_selector_options
from radsearch.commands.jobs import ingest_celery, print_job_result
from radsearch.commands.options import add_sync_options, check_prune_args

__all__ = ["add_ingest_command", "print_dry_run", "print_ingest_summary"]


def print_ingest_summary(summary: Mapping[str, Any], *, as_json: bool) -> None:
    """An ingest's summary: ``{"collection", "objects", "frames_indexed", "skipped", "relabelled",
    "labels_kept", "failed", "quarantined", "errors", "quarantined_items", "seconds"}``."""
    if as_json:
        print_json(dict(summary))
        return
    seconds = float(summary["seconds"])
    rate = summary["objects"] / seconds if seconds > 0 else 0.0
    print(
        f"{summary['collection']}: {summary['objects']} objects, {summary['frames_indexed']} frames indexed, "
        f"{summary['skipped']} unchanged skipped, {summary.get('relabelled', 0)} relabelled, "
        f"{summary['failed']} failed, "
        f"{summary['quarantined']} quarantined ({rate:.1f} objects/s)"
    )
    kept = summary.get("labels_kept", 0)
    if kept:
        print(f"  {kept} {LABELS_KEPT}")
    if summary.get("modality_conflicts"):
        from ingest.pipeline import modality_conflicts_text

        shown = modality_conflicts_text(summary.get("modality_conflict_values") or [])
        print(f"  {summary['modality_conflicts']} {MODALITY_CONFLICTS}: {shown}")
    unmatched = summary.get("manifest_unmatched", 0)
    if unmatched:
        shown = ", ".join(summary.get("manifest_unmatched_keys") or [])
        print(f"  {unmatched} {MANIFEST_UNMATCHED} (first: {shown})")
    off_template = summary.get("template_unmatched", 0)
    if off_template:
        shown = ", ".join(summary.get("template_unmatched_keys") or [])
        print(f"  {off_template} {TEMPLATE_UNMATCHED} (first: {shown})")
    for item in summary["errors"][:20]:
        print(f"  failed {item['key']}: {item['reason']}")
    deleted = summary.get("deleted_items") or []
    if deleted:
        print(f"  {len(deleted)} objects gone from the source, their points deleted:")
        for key in deleted[:20]:
            print(f"  deleted {key}")
        if len(deleted) > 20:
            print(f"  ... {len(deleted) - 20} more (--json lists every key)")


def print_dry_run(summary: Mapping[str, Any], *, as_json: bool) -> None:
    """``ingest --dry-run``: ``{"collection", "dry_run": true, "diffs": [SourceDiff.to_dict()]}``
    as JSON, or per collection a count line and the keys that would be added (+), re-embedded (~)
    and deleted (-)."""
    from ingest.prune import diff_lines

    if as_json:
        print_json(dict(summary))
        return
    print("dry run: nothing was written")
    for diff in summary["diffs"]:
        for line in diff_lines(diff):
            print(line)


def _cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "executor", "inline") == "celery":
        return ingest_celery(args, settings)
    from ingest.inline import IngestOptions
    from ingest.sources import open_source
    from radsearch.services import diff_source_inline, ensure_collection, ingest_source, open_catalog

    check_prune_args(args)
    if args.detach:
        raise ConfigError(
            "--detach applies to a job: with --executor celery, or while `radsearch serve` owns the data "
            "dir (the ingest is then its job); with neither, the ingest runs in this command"
        )
    options = IngestOptions(
        manifest=args.manifest,
        path_template=args.path_template,
        skip_unchanged=not args.no_skip_unchanged,
        accept_burned_in=args.accept_burned_in,
        prune=args.prune,
        dry_run=args.dry_run,
        max_delete_fraction=args.max_delete_fraction,
        force=args.force,
        source_name=args.source_name,
    )
    # A bad source (or source name) fails before any collection is created.
    open_source(args.source, settings, name=args.source_name).close()
    with open_catalog(settings, owner="ingest") as catalog:
        if args.dry_run:
            diffs = diff_source_inline(catalog, settings, args.source, [args.collection], options)
            print_dry_run({"collection": args.collection, "dry_run": True, "diffs": diffs}, as_json=args.json)
            return EXIT_OK
        ensure_collection(catalog, args.collection, args.encoder, weights=args.weights)
        if args.accept_burned_in:
            catalog.record_accept_burned_in(args.collection)
        report = ingest_source(
            catalog, settings, args.source, [args.collection], options, progress=not args.json
        )
    summary = {
        "collection": args.collection,
        **report.to_dict(),
        "accept_burned_in": args.accept_burned_in,
        "seconds": round(report.seconds, 3),
    }
    print_ingest_summary(summary, as_json=args.json)
    return EXIT_OK


def _remote_ingest(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """``radsearch ingest`` as a job of the server: the owner runs the inline pipeline on the
    folder or bucket (``--executor celery``: the server queues it for the workers)."""
    from ingest.labels import PathTemplate
    from ingest.sources import load_manifest_ref, open_source

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
            load_manifest_ref(args.manifest, settings)
        if args.path_template:
            PathTemplate(args.path_template)
    body: dict[str, Any] = {
        "executor": "celery" if celery else "owner",
        "source": remote.local_ref(args.source),
        "collections": args.collection.split(",") if celery else [args.collection],
        "manifest": remote.local_ref(args.manifest) if args.manifest is not None else None,
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
    with remote.client(settings, url) as api:
        if args.weights:  # a new collection gets them: created first, as the command run here would
            for name in body["collections"]:
                api.ensure_collection(name, remote.collection_spec(args.encoder or "baseline", args.weights))
        job_id = api.request("POST", "/v1/ingest-jobs", json=body)["id"]
        if args.detach:
            remote.print_job_id(job_id, as_json=args.json)
            return EXIT_OK
        try:
            job = remote.follow(
                api,
                f"/v1/ingest-jobs/{job_id}",
                desc=f"job {job_id}" if celery else "ingest",
                progress=not args.json,
                postfix=not celery,
            )
        except KeyboardInterrupt:
            return remote.interrupted(job_id)
    if celery:
        return print_job_result(remote.as_record(job), as_json=args.json)
    if job["state"] != "done":
        raise remote.job_error(job, url)
    if job["summary"].get("dry_run"):
        print_dry_run(job["summary"], as_json=args.json)
    else:
        print_ingest_summary(job["summary"], as_json=args.json)
    return EXIT_OK


def _ingest_remote_mode(args: argparse.Namespace) -> remote.RemoteMode:
    return "explicit" if args.executor == "celery" else "store"


def add_ingest_command(sub: Any) -> None:
    """Register ``radsearch ingest`` on the ``radsearch`` subparsers."""
    ingest = sub.add_parser("ingest", help="embed and index every image of a source")
    ingest.add_argument(
        "source", help="s3://bucket/prefix, dicomweb+http(s)://HOST/PREFIX (a PACS) or a local folder"
    )
    ingest.add_argument("--collection", required=True)
    ingest.add_argument("--encoder", help="encoder for a new collection (default: baseline)")
    ingest.add_argument("--weights", help="weights for a new collection: path, s3:// URI, hub id or 'random'")
    ingest.add_argument(
        "--manifest", help="CSV or JSONL mapping key → labels: a local file or an s3://bucket/key object"
    )
    ingest.add_argument("--path-template", help="e.g. '{modality}/{anatomy}/{pathology}/{file}'")
    ingest.add_argument("--no-skip-unchanged", action="store_true", help="re-embed objects already indexed")
    ingest.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    ingest.add_argument(
        "--executor",
        choices=("inline", "celery"),
        default="inline",
        help="inline (this process) or celery (submit a job to the workers; --collection A,B fills several)",
    )
    ingest.add_argument(
        "--detach",
        action="store_true",
        help="with --executor celery or through a server: print the job id and return",
    )
    ingest.add_argument(
        "--prune",
        action="store_true",
        help="also delete the points of objects gone from the source (inline or through a server)",
    )
    add_sync_options(ingest)
    add_selector_options(ingest)
    ingest.set_defaults(handler=_cmd_ingest, remote_handler=_remote_ingest, remote_mode=_ingest_remote_mode)
