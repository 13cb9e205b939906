"""The ``radsearch`` command line. Settings are built here, once, and passed down."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from core.config import Settings
from core.errors import (
    BadInput,
    ConfigError,
    EncoderError,
    IndexStoreError,
    RadsearchError,
    StoreFull,
    StoreOwned,
    WeightsUnavailable,
)
from core.payload import FILTER_FIELDS
from ingest.cli_options import add_sync_options
from ingest.inline import IngestOptions
from radsearch import dicomweb_commands, remote_commands

__all__ = [
    "filter_mapping",
    "main",
    "print_collections",
    "print_dry_run",
    "print_hits",
    "print_ingest_summary",
    "server_url",
]

EXIT_OK = 0
EXIT_RUNTIME_ERROR = 1
EXIT_USAGE = 2
EXIT_STORE_OWNED = 3  # another process owns the embedded store and serves no API to go through
EXIT_STORE_FULL = 4  # free disk below the store's reserve: writes refused, nothing lost


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, sort_keys=False))


# -- output shared by the direct mode and the mode through a server (radsearch.remote_commands) --


def print_ingest_summary(summary: Mapping[str, Any], *, as_json: bool) -> None:
    """An ingest's summary: ``{"collection", "objects", "frames_indexed", "skipped", "relabelled",
    "failed", "quarantined", "errors", "quarantined_items", "seconds"}``."""
    if as_json:
        _print_json(dict(summary))
        return
    seconds = float(summary["seconds"])
    rate = summary["objects"] / seconds if seconds > 0 else 0.0
    print(
        f"{summary['collection']}: {summary['objects']} objects, {summary['frames_indexed']} frames indexed, "
        f"{summary['skipped']} unchanged skipped, {summary.get('relabelled', 0)} relabelled, "
        f"{summary['failed']} failed, "
        f"{summary['quarantined']} quarantined ({rate:.1f} objects/s)"
    )
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
        _print_json(dict(summary))
        return
    print("dry run: nothing was written")
    for diff in summary["diffs"]:
        for line in diff_lines(diff):
            print(line)


def print_hits(
    hits: Sequence[Mapping[str, Any]], *, as_json: bool, warnings: Sequence[Mapping[str, Any]] = ()
) -> None:
    """Search hits, ``{"id", "score", "payload"}`` each, as a table or as ``{"hits": [...],
    "warnings": [...]}``; each filter warning (``{"field", "value", "message", "suggestions"}``)
    also goes to stderr, one line each."""
    for warning in warnings:
        print(f"radsearch: warning: {warning['message']}", file=sys.stderr)
    if as_json:
        _print_json(
            {
                "hits": [{"id": h["id"], "score": h["score"], "payload": h["payload"]} for h in hits],
                "warnings": [dict(w) for w in warnings],
            }
        )
        return
    print(f"{'rank':>4}  {'score':>6}  {'modality':<8} {'anatomy':<10} {'pathology':<14} key")
    for rank, hit in enumerate(hits, start=1):
        p = hit["payload"]
        print(
            f"{rank:>4}  {hit['score']:6.3f}  {p.get('modality', '-'):<8} {p.get('anatomy', '-'):<10} "
            f"{','.join(p.get('pathology', [])) or '-':<14} {p.get('key')}#{p.get('frame', 0)}"
        )


def print_collections(rows: Sequence[Mapping[str, Any]], *, as_json: bool) -> None:
    """Collections, ``{"name", "encoder", "weights", "dim", "points"}`` each."""
    if as_json:
        _print_json({"collections": [dict(row) for row in rows]})
        return
    for row in rows:
        print(f"{row['name']:<24} {row['encoder']:<14} dim={row['dim']:<5} points={row['points']}")
    if not rows:
        print("no collections yet: radsearch ingest SOURCE --collection NAME")


def _cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "executor", "inline") == "celery":
        from workers.commands import ingest_celery

        return ingest_celery(args, settings)
    from ingest.sources import open_source
    from radsearch.services import diff_source_inline, ensure_collection, ingest_source, open_catalog

    check_prune_args(args)
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


def check_prune_args(args: argparse.Namespace) -> None:
    """`ConfigError` for a ``--max-delete-fraction`` outside [0, 1]."""
    if not 0.0 <= args.max_delete_fraction <= 1.0:
        raise ConfigError("--max-delete-fraction must be between 0 and 1")


def filter_mapping(args: argparse.Namespace) -> dict[str, list[str]]:
    """The search filter the ``--modality`` ... options give (any-of within a field)."""
    return {name: list(getattr(args, name)) for name in FILTER_FIELDS if getattr(args, name)}


def _cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from radsearch.services import (
        check_limit,
        hit_rows,
        open_catalog,
        read_query_image,
        search_image,
        search_warnings,
    )

    check_limit(args.k, settings)
    filename, data = read_query_image(args.image, settings)
    with open_catalog(settings) as catalog:
        hits = search_image(
            catalog,
            settings,
            args.collection,
            data=data,
            filename=filename,
            filter=filter_mapping(args),
            limit=args.k,
        )
        warnings = search_warnings(catalog, args.collection, filter_mapping(args))
    print_hits(hit_rows(hits), as_json=args.json, warnings=warnings)
    return EXIT_OK


def _cmd_collections(args: argparse.Namespace, settings: Settings) -> int:
    from radsearch.services import open_catalog

    with open_catalog(settings) as catalog:
        rows = [
            {
                "name": entry.name,
                "encoder": entry.encoder.name,
                "weights": entry.weights_version,
                "dim": entry.dim,
                "points": catalog.index.count(entry.name),
            }
            for entry in catalog.list()
        ]
    print_collections(rows, as_json=args.json)
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from radsearch.services import serve_api
    from search_api.security import check_bind

    host = args.host or settings.api.host
    port = args.port or settings.api.port
    notice = check_bind(host, settings.security)
    if notice:
        print(f"radsearch: {notice}", file=sys.stderr)
    serve_api(settings, host, port)
    return EXIT_OK


def _cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    from core.api_keys import hash_api_key, new_api_key

    if args.keys_command == "create":
        key = new_api_key()
        entry = {"name": args.name, "role": args.role, "sha256": hash_api_key(key)}
        print(f"key (shown once, give it to the client): {key}")
        print("settings entry (add to RADSEARCH_SECURITY__API_KEYS or the keys file):")
        print(json.dumps(entry))
        return EXIT_OK
    # Read from stdin, not argv: a key on the command line lands in shell history and `ps`.
    key = sys.stdin.readline().strip()
    if not key:
        print("radsearch: error: give the key on stdin", file=sys.stderr)
        return EXIT_USAGE
    print(hash_api_key(key))
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from radsearch.demo import run_demo

    return run_demo(
        settings, per_class=args.per_class, serve=not args.no_serve, host=args.host, port=args.port
    )


def _cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from core.evaluation.command import run_eval_command

    return run_eval_command(args, settings, sys.stdout)


def _remote_eval(args: argparse.Namespace, settings: Settings, url: str) -> int:
    from core.evaluation.command import run_remote_eval_command

    return run_remote_eval_command(args, settings, url, sys.stdout)


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


def _ingest_remote_mode(args: argparse.Namespace) -> RemoteMode:
    return "explicit" if args.executor == "celery" else "store"


def _remote_url(args: argparse.Namespace, settings: Settings) -> str | None:
    """The server this command goes through, if it has a remote handler and one applies."""
    if getattr(args, "remote_handler", None) is None:
        return None
    mode: RemoteMode | Callable[[argparse.Namespace], RemoteMode] = getattr(args, "remote_mode", "store")
    return server_url(settings, mode=mode(args) if callable(mode) else mode)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radsearch", description="Content-based image retrieval for radiology."
    )
    parser.add_argument("--data-dir", type=Path, help="where the index and caches live (RADSEARCH_DATA_DIR)")
    parser.add_argument(
        "--url",
        help="send the command to this radsearch server (RADSEARCH_URL; key in RADSEARCH_API_KEY); "
        "by default the server that owns the data dir, if one serves",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", help="embed and index every image of a source")
    ingest.add_argument(
        "source", help="s3://bucket/prefix, dicomweb+http(s)://HOST/PREFIX (a PACS) or a local folder"
    )
    ingest.add_argument("--collection", required=True)
    ingest.add_argument("--encoder", help="encoder for a new collection (default: baseline)")
    ingest.add_argument("--weights", help="weights for a new collection: path, s3:// URI, hub id or 'random'")
    ingest.add_argument("--manifest", type=Path, help="CSV or JSONL mapping key → labels")
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
    dicomweb_commands.add_selector_options(ingest)
    ingest.set_defaults(
        handler=_cmd_ingest, remote_handler=remote_commands.ingest, remote_mode=_ingest_remote_mode
    )

    search = sub.add_parser("search", help="find the images most similar to an image file")
    search.add_argument("image", type=Path)
    search.add_argument("--collection", required=True)
    for name in FILTER_FIELDS:
        search.add_argument(f"--{name}", action="append", metavar=name.upper(), help=f"only this {name}")
    search.add_argument("-k", type=int, default=10, help="number of hits")
    search.add_argument("--json", action="store_true")
    search.set_defaults(handler=_cmd_search, remote_handler=remote_commands.search)

    collections = sub.add_parser("collections", help="manage collections")
    collections_sub = collections.add_subparsers(dest="collections_command", required=True)
    clist = collections_sub.add_parser("list", help="list collections")
    clist.add_argument("--json", action="store_true")
    clist.set_defaults(handler=_cmd_collections, remote_handler=remote_commands.collections_list)
    from radsearch.admin_commands import add_admin_commands

    add_admin_commands(collections_sub, sub)
    from radsearch.backup_commands import add_backup_commands

    add_backup_commands(collections_sub, sub)

    serve = sub.add_parser("serve", help="serve the HTTP API and web page")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(handler=_cmd_serve)

    keys = sub.add_parser("keys", help="API keys: create one, or hash one read from stdin")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="print a new random key and its settings entry")
    create.add_argument("--role", choices=("reader", "ingest", "admin", "clinician"), required=True)
    create.add_argument("--name", required=True, help="who holds the key (shown in audit lines)")
    keys_sub.add_parser("hash", help="print the SHA-256 to store for a key read from stdin")
    keys.set_defaults(handler=_cmd_keys)

    demo = sub.add_parser("demo", help="build a demo archive, index it, run example searches, serve")
    demo.add_argument("--per-class", type=int, default=12)
    demo.add_argument("--no-serve", action="store_true")
    demo.add_argument("--host")
    demo.add_argument("--port", type=int)
    demo.set_defaults(handler=_cmd_demo)

    from core.evaluation.command import add_eval_arguments

    evaluate = sub.add_parser("eval", help="retrieval quality by the reference paper's protocol (P@k, ...)")
    add_eval_arguments(evaluate)
    evaluate.set_defaults(handler=_cmd_eval, remote_handler=_remote_eval)

    from radsearch.admin_commands import owner_job_dicts
    from workers.commands import add_worker_commands

    add_worker_commands(sub, remote_jobs=remote_commands.jobs, owner_jobs=owner_job_dicts)
    dicomweb_commands.add_watch_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        overrides: dict[str, Any] = {"data_dir": args.data_dir, "url": args.url}
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
        dicomweb_commands.apply_selectors(args)
        url = _remote_url(args, settings)
        if url:
            remote_code: int = args.remote_handler(args, settings, url)
            return remote_code
        code: int = args.handler(args, settings)
        return code
    except RadsearchError as exc:
        code = exit_code_for(exc)
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        hint = _CLI_HINTS.get(type(exc), "") if getattr(args, "command", "") != "serve" else ""
        _report(args, f"radsearch: error: {message}{hint}")
        if getattr(args, "json", False):
            # A script reading --json output finds the failure as its last line, too.
            _print_json({"error": {"type": type(exc).__name__, "message": str(exc), "exit_code": code}})
        return code
    except Exception as exc:  # noqa: BLE001 - the CLI's last resort: one line, not a traceback
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        _report(
            args,
            f"radsearch: unexpected error: {type(exc).__name__}"
            + (f": {first}" if first else "")
            + ("" if args.verbose else " (run with -v for the traceback)"),
        )
        if getattr(args, "json", False):
            _print_json(
                {"error": {"type": type(exc).__name__, "message": first, "exit_code": EXIT_RUNTIME_ERROR}}
            )
        return EXIT_RUNTIME_ERROR


# What only the command line can say about an error (its flags); HTTP callers get the message alone.
_CLI_HINTS: dict[type[RadsearchError], str] = {
    WeightsUnavailable: " (here: --weights PATH, --weights s3://BUCKET/KEY or --weights ORG/NAME)",
}


def _report(args: argparse.Namespace, line: str) -> None:
    """One line on stderr; with ``-v`` the traceback of the exception being handled first."""
    if args.verbose:
        traceback.print_exc(file=sys.stderr)
    print(line, file=sys.stderr)


def exit_code_for(exc: RadsearchError) -> int:
    """The exit code of a command that failed with ``exc`` (README, How radsearch runs)."""
    if isinstance(exc, StoreOwned):
        return EXIT_STORE_OWNED
    if isinstance(exc, StoreFull):
        return EXIT_STORE_FULL
    if isinstance(exc, ConfigError | EncoderError | IndexStoreError | BadInput):
        return EXIT_USAGE
    return EXIT_RUNTIME_ERROR


if __name__ == "__main__":
    sys.exit(main())
