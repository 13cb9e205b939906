"""``radsearch collections list|create|drop|backfill|alias|unalias|aliases``, here or through a
server (``collections restore|trash``: `radsearch.commands.backup`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from core.config import Settings
from core.errors import ConfigError, os_reason
from radsearch.commands import remote
from radsearch.commands.arg_types import collection_name
from radsearch.commands.common import EXIT_OK, print_json

if TYPE_CHECKING:
    from ingest.pipeline import BatchReport

__all__ = [
    "add_collections_commands",
    "encoder_arg",
    "print_alias",
    "print_aliases",
    "print_backfill",
    "print_collections",
    "print_created",
    "print_dropped",
    "print_unaliased",
]


def encoder_arg(value: str) -> str | dict[str, Any]:
    """A registry name, or a full spec as inline JSON or ``@file.json``."""
    if value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as handle:
                loaded: dict[str, Any] = json.load(handle)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read the encoder spec {value[1:]}: {os_reason(exc, 'not UTF-8 text')}"
            ) from None
        return loaded
    if value.lstrip().startswith("{"):
        parsed: dict[str, Any] = json.loads(value)
        return parsed
    return value


def _cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from radsearch.services import open_catalog

    with open_catalog(settings) as catalog:
        rows = [
            {
                "name": entry.name,
                "encoder": entry.encoder.name,
                "dim": entry.dim,
                "points": catalog.index.count(entry.name),
                "weights": entry.weights_version,
                "text_search": entry.encoder.text_tower,
                "created_at": entry.created_at,
            }
            for entry in catalog.list()
        ]
    print_collections(rows, as_json=args.json)
    return EXIT_OK


def _cmd_create(args: argparse.Namespace, settings: Settings) -> int:
    from core.encoders.registry import resolve_spec
    from radsearch.services import open_catalog

    try:
        spec = resolve_spec(encoder_arg(args.encoder)).with_weights(args.weights)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid encoder spec: not JSON (line {exc.lineno}, column {exc.colno})") from None
    with open_catalog(settings) as catalog:
        entry = catalog.create(
            args.name, spec, quantization=args.quantization, on_disk=args.on_disk, probe=True
        )
    row = {
        "name": entry.name,
        "encoder": entry.encoder.name,
        "dim": entry.dim,
        "weights": entry.weights_version,
        "quantization": entry.quantization,
        "on_disk": entry.on_disk,
    }
    print_created(row, as_json=args.json)
    return EXIT_OK


def _cmd_drop(args: argparse.Namespace, settings: Settings) -> int:
    from functools import partial

    from radsearch.services import open_catalog
    from search_api.backfill_jobs import celery_writers

    with open_catalog(settings) as catalog:
        # This process owns the store, so no owner-run job can be writing: Celery jobs only.
        entry = catalog.drop(args.name, writers=partial(celery_writers, settings))
    print_dropped(args.name, entry.model_dump() if entry is not None else None)
    return EXIT_OK


def _cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    from core.jobs.sqlite_store import open_owner_store
    from core.progress import progress_bar
    from radsearch.services import open_catalog
    from search_api.backfill_jobs import OwnerJobRunner

    with open_catalog(settings) as catalog:
        bar = progress_bar("backfill", shown=not args.json)

        def on_plan(objects: int) -> None:
            bar.total = objects
            bar.refresh()

        def on_batch(done: BatchReport) -> None:
            bar.update(done.objects)

        # Recorded in the data dir's job store like the server's backfills: killed, it is resumed
        # by the next `radsearch serve`, and `collections alias` waits for it.
        store, close_store = open_owner_store(settings)
        try:
            summary = OwnerJobRunner(catalog, settings, store).run_backfill_here(
                args.name, args.origin, path_template=args.path_template, on_plan=on_plan, on_batch=on_batch
            )  # which builds the target's index at its end
        finally:
            close_store()
            bar.close()
    print_backfill({"collection": args.name, "from": args.origin, **summary}, as_json=args.json)
    return EXIT_OK


def _cmd_alias(args: argparse.Namespace, settings: Settings) -> int:
    from core.jobs.sqlite_store import read_owner_jobs
    from radsearch.services import open_catalog
    from search_api.backfill_jobs import alias_blockers

    with open_catalog(settings) as catalog:
        if not args.force:
            jobs = read_owner_jobs(settings)
            try:
                blockers = alias_blockers(catalog, jobs, args.collection)
            finally:
                if jobs is not None:
                    jobs.close()
            if blockers:
                raise ConfigError(
                    f"collection {args.collection!r} is not ready: {'; '.join(blockers)} "
                    "(wait for it, or give --force)"
                )
        previous = catalog.set_alias(args.alias, args.collection)
    print_alias(args.alias, args.collection, previous)
    return EXIT_OK


def _cmd_unalias(args: argparse.Namespace, settings: Settings) -> int:
    from radsearch.services import open_catalog

    with open_catalog(settings) as catalog:
        catalog.delete_alias(args.alias)
    print_unaliased(args.alias)
    return EXIT_OK


def _cmd_aliases(args: argparse.Namespace, settings: Settings) -> int:
    from radsearch.services import open_catalog

    with open_catalog(settings) as catalog:
        aliases = [
            {"alias": alias, "collection": target} for alias, target in sorted(catalog.aliases().items())
        ]
    print_aliases(aliases, as_json=args.json)
    return EXIT_OK


# -- output shared by the direct mode and the mode through a server (radsearch.commands.remote) --


def print_collections(rows: Sequence[Mapping[str, Any]], *, as_json: bool) -> None:
    """Collections, each as ``GET /v1/collections`` gives it: ``{"name", "encoder", "dim", "points",
    "weights", "text_search", "created_at"}``."""
    if as_json:
        print_json({"collections": [dict(row) for row in rows]})
        return
    for row in rows:
        print(f"{row['name']:<24} {row['encoder']:<14} dim={row['dim']:<5} points={row['points']}")
    if not rows:
        print("no collections yet: radsearch ingest SOURCE --collection NAME")


def print_created(row: Mapping[str, Any], *, as_json: bool) -> None:
    """A new collection: ``{"name", "encoder", "dim", "weights", "quantization", "on_disk"}``."""
    if as_json:
        print_json(dict(row))
        return
    print(
        f"created {row['name']}: encoder {row['encoder']}, dim {row['dim']}, weights {row['weights']}, "
        f"quantization {row['quantization']}" + (", vectors on disk" if row["on_disk"] else "")
    )


def print_dropped(name: str, trashed: Mapping[str, Any] | None) -> None:
    """A drop: moved to the trash (``{"expires_at", ...}``), or deleted for good (None)."""
    if trashed is None:
        print(f"dropped {name} (deleted for good: a Qdrant server keeps no trash)")
        return
    print(
        f"dropped {name}: moved to the trash until {trashed['expires_at']} "
        f"(radsearch collections restore {name})"
    )


def print_backfill(summary: Mapping[str, Any], *, as_json: bool) -> None:
    """A backfill's summary: ``{"collection", "from", "objects", "frames_indexed", "skipped",
    "failed", "quarantined", "errors", "quarantined_items"}``."""
    if as_json:
        print_json(dict(summary))
        return
    print(
        f"{summary['collection']}: {summary['objects']} objects from {summary['from']}, "
        f"{summary['frames_indexed']} frames indexed, {summary['skipped']} already present, "
        f"{summary['failed']} failed"
    )


def print_alias(alias: str, collection: str, previous: str | None) -> None:
    print(f"{alias} -> {collection}" + (f" (was {previous})" if previous else ""))


def print_unaliased(alias: str) -> None:
    print(f"removed alias {alias}")


def print_aliases(aliases: Sequence[Mapping[str, Any]], *, as_json: bool) -> None:
    """Aliases, each as ``GET /v1/aliases`` gives it: ``{"alias", "collection"}``."""
    if as_json:
        print_json({"aliases": [dict(item) for item in aliases]})
        return
    for item in aliases:
        print(f"{item['alias']} -> {item['collection']}")


def _cmd_calibrate(args: argparse.Namespace, settings: Settings) -> int:
    from core.calibration import calibrate
    from radsearch.services import open_catalog

    with open_catalog(settings) as catalog:
        name = catalog.resolve(args.name)
        record = calibrate(catalog.index, name) or {"threshold": None}
    print_calibrated({"collection": name, **record})
    return EXIT_OK


def print_calibrated(record: Mapping[str, Any]) -> None:
    """One line: the collection and its threshold."""
    if record.get("threshold") is None:
        print(f"{record['collection']}: too few points to calibrate (nothing stored)")
        return
    print(
        f"{record['collection']}: weak below {record['threshold']:.4f} "
        f"(q{record['quantile']} of {record['queries']} unrelated queries' best scores)"
    )


# -- through a server ----------------------------------------------------------------------------


def _remote_list(args: argparse.Namespace, settings: Settings, url: str) -> int:
    with remote.client(settings, url) as api:
        listed = api.request("GET", "/v1/collections")["collections"]
    print_collections(listed, as_json=args.json)
    return EXIT_OK


def _remote_create(args: argparse.Namespace, settings: Settings, url: str) -> int:
    body: dict[str, Any] = {
        "name": args.name,
        "encoder": encoder_arg(args.encoder),
        "weights": remote.weights_ref(args.weights),
        "quantization": args.quantization,
        "on_disk": args.on_disk,
    }
    with remote.client(settings, url) as api:
        created = api.request("POST", "/v1/collections", json=body)
    row = {key: created[key] for key in ("name", "encoder", "dim", "weights", "quantization", "on_disk")}
    print_created(row, as_json=args.json)
    return EXIT_OK


def _remote_drop(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """Refused (409, exit 2) while aliased or being written."""
    with remote.client(settings, url) as api:
        dropped = api.request("DELETE", f"/v1/collections/{remote.segment(args.name)}")
    print_dropped(args.name, dropped if dropped["trashed"] else None)
    return EXIT_OK


def _remote_calibrate(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """The server that owns the store calibrates."""
    with remote.client(settings, url) as api:
        record = api.request("POST", f"/v1/collections/{remote.segment(args.name)}/calibrate")
    print_calibrated(record)
    return EXIT_OK


def _remote_backfill(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """A backfill job of the server, followed to its end."""
    # The API backfills from a collection, an alias or a bucket, never from a folder on its disk.
    with remote.client(settings, url) as api:
        job_id = api.request(
            "POST",
            f"/v1/collections/{remote.segment(args.name)}/backfill",
            json={"from": args.origin, "path_template": args.path_template},
        )["id"]
        try:
            job = remote.follow(
                api, f"/v1/backfill-jobs/{job_id}", desc="backfill", progress=not args.json, postfix=False
            )
        except KeyboardInterrupt:
            return remote.interrupted(job_id)
    if job["state"] != "done":
        raise remote.job_error(job, url)
    print_backfill({"collection": args.name, "from": args.origin, **job["summary"]}, as_json=args.json)
    return EXIT_OK


def _remote_alias(args: argparse.Namespace, settings: Settings, url: str) -> int:
    with remote.client(settings, url) as api:
        answer = api.request(
            "PUT",
            f"/v1/aliases/{remote.segment(args.alias)}",
            json={"collection": args.collection, "force": bool(getattr(args, "force", False))},
        )
    print_alias(args.alias, args.collection, answer.get("previous"))
    return EXIT_OK


def _remote_unalias(args: argparse.Namespace, settings: Settings, url: str) -> int:
    with remote.client(settings, url) as api:
        api.request("DELETE", f"/v1/aliases/{remote.segment(args.alias)}")
    print_unaliased(args.alias)
    return EXIT_OK


def _remote_aliases(args: argparse.Namespace, settings: Settings, url: str) -> int:
    with remote.client(settings, url) as api:
        listed = api.request("GET", "/v1/aliases")["aliases"]
    print_aliases(listed, as_json=args.json)
    return EXIT_OK


def add_collections_commands(sub: Any) -> Any:
    """Register ``radsearch collections`` and its subcommands on the ``radsearch`` subparsers;
    the ``collections`` subparsers, for the commands other modules add to it."""
    collections = sub.add_parser("collections", help="manage collections")
    collections_sub = collections.add_subparsers(dest="collections_command", required=True)
    clist = collections_sub.add_parser("list", help="list collections")
    clist.add_argument("--json", action="store_true")
    clist.set_defaults(handler=_cmd_list, remote_handler=_remote_list)
    create = collections_sub.add_parser(
        "create", help="create a collection for an encoder (probes one image)"
    )
    create.add_argument("name", type=collection_name)
    create.add_argument("--encoder", required=True, help="registry name, inline JSON spec or @spec.json")
    create.add_argument("--weights", help="path, s3:// URI, hub id or 'random'")
    create.add_argument(
        "--quantization",
        choices=("none", "int8"),
        help="int8 vectors rescored with the originals, or none (default: store.default_quantization)",
    )
    create.add_argument(
        "--on-disk", action="store_true", help="keep the original vectors on disk (less memory, slower)"
    )
    create.add_argument("--json", action="store_true")
    create.set_defaults(handler=_cmd_create, remote_handler=_remote_create)

    drop = collections_sub.add_parser(
        "drop",
        help="drop a collection: to the trash for store.trash_hours (refused while an alias points at it "
        "or a job writes to it)",
    )
    drop.add_argument("name")
    drop.set_defaults(handler=_cmd_drop, remote_handler=_remote_drop)

    backfill = collections_sub.add_parser(
        "backfill", help="embed every image another collection (or a source) knows into this one"
    )
    backfill.add_argument("name")
    backfill.add_argument("--from", dest="origin", required=True, help="collection, alias or source URI")
    backfill.add_argument("--path-template", help="labels from keys, for a source URI")
    backfill.add_argument("--json", action="store_true")
    backfill.set_defaults(handler=_cmd_backfill, remote_handler=_remote_backfill)

    calibrate = collections_sub.add_parser(
        "calibrate", help='learn the "no close match" score threshold from the collection\'s own scores'
    )
    calibrate.add_argument("name")
    calibrate.set_defaults(handler=_cmd_calibrate, remote_handler=_remote_calibrate)

    alias = collections_sub.add_parser("alias", help="point an alias at a collection (atomic switch)")
    alias.add_argument("alias", type=collection_name)
    alias.add_argument("collection")
    alias.add_argument(
        "--force",
        action="store_true",
        help="switch even while a backfill writes to it or its index is not built",
    )
    alias.set_defaults(handler=_cmd_alias, remote_handler=_remote_alias)

    unalias = collections_sub.add_parser("unalias", help="remove an alias")
    unalias.add_argument("alias")
    unalias.set_defaults(handler=_cmd_unalias, remote_handler=_remote_unalias)

    aliases = collections_sub.add_parser("aliases", help="list aliases")
    aliases.add_argument("--json", action="store_true")
    aliases.set_defaults(handler=_cmd_aliases, remote_handler=_remote_aliases)

    return collections_sub
