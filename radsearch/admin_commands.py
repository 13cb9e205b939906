"""``radsearch collections create|drop|backfill|alias|unalias|aliases`` and ``radsearch encoders``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from core.config import Settings
from core.errors import ConfigError
from radsearch import remote_commands

if TYPE_CHECKING:
    from ingest.pipeline import BatchReport

__all__ = [
    "add_admin_commands",
    "encoder_arg",
    "owner_job_dicts",
    "print_alias",
    "print_aliases",
    "print_backfill",
    "print_created",
    "print_dropped",
    "print_unaliased",
]


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, sort_keys=False))


def encoder_arg(value: str) -> str | dict[str, Any]:
    """A registry name, or a full spec as inline JSON or ``@file.json``."""
    if value.startswith("@"):
        with open(value[1:], encoding="utf-8") as handle:
            loaded: dict[str, Any] = json.load(handle)
        return loaded
    if value.lstrip().startswith("{"):
        parsed: dict[str, Any] = json.loads(value)
        return parsed
    return value


def _cmd_create(args: argparse.Namespace, settings: Settings) -> int:
    from pydantic import ValidationError

    from core.encoders.registry import resolve_spec
    from radsearch.services import open_catalog

    try:
        spec = resolve_spec(encoder_arg(args.encoder)).with_weights(args.weights)
    except (ValidationError, json.JSONDecodeError) as exc:
        raise ConfigError(f"invalid encoder spec: {exc}") from None
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
    return 0


def _cmd_drop(args: argparse.Namespace, settings: Settings) -> int:
    from functools import partial

    from radsearch.services import open_catalog
    from search_api.backfill_jobs import celery_writers

    with open_catalog(settings) as catalog:
        # This process owns the store, so no owner-run job can be writing: Celery jobs only.
        entry = catalog.drop(args.name, writers=partial(celery_writers, settings))
    print_dropped(args.name, entry.model_dump() if entry is not None else None)
    return 0


def _cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from radsearch.services import open_catalog
    from search_api.backfill_jobs import OwnerJobRunner
    from search_api.owner_job_store import open_owner_store

    with open_catalog(settings) as catalog:
        bar = tqdm(unit="obj", desc="backfill", disable=args.json, dynamic_ncols=True)

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
    return 0


def _cmd_alias(args: argparse.Namespace, settings: Settings) -> int:
    from radsearch.services import open_catalog
    from search_api.backfill_jobs import alias_blockers
    from search_api.owner_job_store import read_owner_jobs

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
    return 0


def _cmd_unalias(args: argparse.Namespace, settings: Settings) -> int:
    from radsearch.services import open_catalog

    with open_catalog(settings) as catalog:
        catalog.delete_alias(args.alias)
    print_unaliased(args.alias)
    return 0


def _cmd_aliases(args: argparse.Namespace, settings: Settings) -> int:
    from radsearch.services import open_catalog

    with open_catalog(settings) as catalog:
        aliases = catalog.aliases()
    print_aliases(aliases, as_json=args.json)
    return 0


# -- output shared by the direct mode and the mode through a server (radsearch.remote_commands) --


def print_created(row: Mapping[str, Any], *, as_json: bool) -> None:
    """A new collection: ``{"name", "encoder", "dim", "weights", "quantization", "on_disk"}``."""
    if as_json:
        _print_json(dict(row))
        return
    print(
        f"created {row['name']}: encoder {row['encoder']}, dim {row['dim']}, weights {row['weights']}, "
        f"quantization {row['quantization']}" + (", vectors on disk" if row["on_disk"] else "")
    )


def owner_job_dicts(settings: Settings, job_id: str | None, limit: int) -> list[dict[str, Any]]:
    """Owner-run jobs (backfills, owner ingests) of the data dir, read beside its owner: one
    (``job_id``) or the newest ``limit``, in the shape of ``radsearch jobs show|list``."""
    from search_api.backfill_jobs import OwnerJob
    from search_api.owner_job_store import read_owner_jobs

    store = read_owner_jobs(settings)
    if store is None:
        return []
    try:
        if job_id is not None:
            record = store.get(job_id)
            records = [] if record is None else [record]
        else:
            records = store.recent(limit=limit)
        out = []
        for record in records:
            meta = store.load_meta(record.id)
            if meta is None:
                out.append(record.to_dict(with_items=job_id is not None))
                continue
            job = OwnerJob(meta.kind, record, meta.summary, meta.error_status, meta.resumed)
            data = job.to_dict(with_items=job_id is not None)
            out.append(
                {k: v for k, v in data.items() if v is not None or k not in ("summary", "error_status")}
            )
        return out
    finally:
        store.close()


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
        _print_json(dict(summary))
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


def print_aliases(aliases: Mapping[str, str], *, as_json: bool) -> None:
    """alias → collection."""
    if as_json:
        _print_json({"aliases": dict(aliases)})
        return
    for alias, target in sorted(aliases.items()):
        print(f"{alias} -> {target}")


def _cmd_calibrate(args: argparse.Namespace, settings: Settings) -> int:
    from core.calibration import calibrate
    from radsearch.services import open_catalog

    with open_catalog(settings) as catalog:
        name = catalog.resolve(args.name)
        record = calibrate(catalog.index, name) or {"threshold": None}
    print_calibrated({"collection": name, **record})
    return 0


def print_calibrated(record: Mapping[str, Any]) -> None:
    """One line (or JSON with ``--json``-free callers): the collection and its threshold."""
    if record.get("threshold") is None:
        print(f"{record['collection']}: too few points to calibrate (nothing stored)")
        return
    print(
        f"{record['collection']}: weak below {record['threshold']:.4f} "
        f"(q{record['quantile']} of {record['queries']} unrelated queries' best scores)"
    )


def _cmd_encoders(args: argparse.Namespace, settings: Settings) -> int:
    from core.encoders.registry import list_specs

    specs = list_specs()
    if args.json:
        _print_json({"encoders": [s.model_dump(mode="json") for s in specs]})
        return 0
    for spec in specs:
        text = "text" if spec.text_tower else "    "
        size = f"{spec.input_size}px"
        print(f"{spec.name:<16} {spec.family.value:<12} dim={spec.dim:<5} {size:>6} {text} {spec.license}")
    return 0


def add_admin_commands(collections_sub: Any, sub: Any) -> None:
    """Add the administration subcommands to ``radsearch collections`` and ``radsearch encoders``."""
    create = collections_sub.add_parser(
        "create", help="create a collection for an encoder (probes one image)"
    )
    create.add_argument("name")
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
    create.set_defaults(handler=_cmd_create, remote_handler=remote_commands.create)

    drop = collections_sub.add_parser(
        "drop",
        help="drop a collection: to the trash for store.trash_hours (refused while an alias points at it "
        "or a job writes to it)",
    )
    drop.add_argument("name")
    drop.set_defaults(handler=_cmd_drop, remote_handler=remote_commands.drop)

    backfill = collections_sub.add_parser(
        "backfill", help="embed every image another collection (or a source) knows into this one"
    )
    backfill.add_argument("name")
    backfill.add_argument("--from", dest="origin", required=True, help="collection, alias or source URI")
    backfill.add_argument("--path-template", help="labels from keys, for a source URI")
    backfill.add_argument("--json", action="store_true")
    backfill.set_defaults(handler=_cmd_backfill, remote_handler=remote_commands.backfill)

    calibrate = collections_sub.add_parser(
        "calibrate", help='learn the "no close match" score threshold from the collection\'s own scores'
    )
    calibrate.add_argument("name")
    calibrate.set_defaults(handler=_cmd_calibrate, remote_handler=remote_commands.calibrate)

    alias = collections_sub.add_parser("alias", help="point an alias at a collection (atomic switch)")
    alias.add_argument("alias")
    alias.add_argument("collection")
    alias.add_argument(
        "--force",
        action="store_true",
        help="switch even while a backfill writes to it or its index is not built",
    )
    alias.set_defaults(handler=_cmd_alias, remote_handler=remote_commands.alias)

    unalias = collections_sub.add_parser("unalias", help="remove an alias")
    unalias.add_argument("alias")
    unalias.set_defaults(handler=_cmd_unalias, remote_handler=remote_commands.unalias)

    aliases = collections_sub.add_parser("aliases", help="list aliases")
    aliases.add_argument("--json", action="store_true")
    aliases.set_defaults(handler=_cmd_aliases, remote_handler=remote_commands.aliases)

    encoders = sub.add_parser("encoders", help="list the registered encoders")
    encoders.add_argument("--json", action="store_true")
    encoders.set_defaults(handler=_cmd_encoders)
