"""``radsearch snapshot create|list|restore`` and ``radsearch collections restore|trash``.

Each command runs here when this process can own the store (it takes the store lock: `open_catalog`),
or through the server that owns it (``POST /v1/snapshots``, ...), which pauses the writes to a
collection while copying it; both print through the same functions.

This module is imported by the parser: heavy imports stay inside the functions.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from core.config import Settings
from radsearch.commands import remote
from radsearch.commands.arg_types import collection_name
from radsearch.commands.common import EXIT_OK, print_json

if TYPE_CHECKING:
    from core.api_client import ApiClient

__all__ = [
    "add_backup_commands",
    "print_restored",
    "print_snapshot",
    "print_snapshots",
    "print_trash",
]


def _client(settings: Settings, url: str) -> ApiClient:
    return remote.client(settings, url, timeout_s=None)  # a large copy takes its time


# -- output shared by both modes -------------------------------------------------------------------


def print_snapshot(manifest: Mapping[str, Any], *, as_json: bool) -> None:
    """A new snapshot's manifest: ``{"id", "created_at", "radsearch_version", "collections"}``."""
    if as_json:
        print_json(dict(manifest))
        return
    print(f"snapshot {manifest['id']} ({manifest['created_at']})")
    for item in manifest["collections"]:
        print(f"  {item['name']:<24} points={item['points']}")


def print_snapshots(manifests: Sequence[Mapping[str, Any]], *, as_json: bool) -> None:
    """Snapshots, oldest first."""
    if as_json:
        print_json({"snapshots": [dict(m) for m in manifests]})
        return
    for manifest in manifests:
        held = ", ".join(f"{c['name']} ({c['points']} points)" for c in manifest["collections"])
        print(f"{manifest['id']}  {manifest['created_at']}  {held}")
    if not manifests:
        print("no snapshots yet: radsearch snapshot create")


def print_restored(restored: Sequence[Mapping[str, Any]], *, origin: str, as_json: bool) -> None:
    """Restored collections, ``{"name", "source", "points"}`` each, from ``origin``."""
    if as_json:
        print_json({"from": origin, "restored": [dict(r) for r in restored]})
        return
    for item in restored:
        renamed = f" as {item['name']}" if item["name"] != item["source"] else ""
        print(f"restored {item['source']}{renamed} from {origin}: {item['points']} points")


def print_trash(entries: Sequence[Mapping[str, Any]], *, as_json: bool) -> None:
    """The trash: ``{"name", "points", "dropped_at", "expires_at"}`` each."""
    if as_json:
        print_json({"trash": [dict(e) for e in entries]})
        return
    for entry in entries:
        points = "?" if entry["points"] is None else entry["points"]  # damaged when dropped
        print(
            f"{entry['name']:<24} points={points:<8} dropped {entry['dropped_at']}, "
            f"expires {entry['expires_at']}"
        )
    if not entries:
        print("the trash is empty")


# -- snapshot --------------------------------------------------------------------------------------


def _cmd_snapshot(args: argparse.Namespace, settings: Settings) -> int:
    from functools import partial

    from core.snapshots import SnapshotStore
    from radsearch.services import open_catalog
    from search_api.backfill_jobs import celery_writers

    store = SnapshotStore(settings)
    if args.snapshot_command == "list":
        print_snapshots([m.model_dump() for m in store.list()], as_json=args.json)
        return EXIT_OK
    with open_catalog(settings, owner="snapshot") as catalog:
        if args.snapshot_command == "create":
            manifest = store.create(catalog.index, args.collection)
            print_snapshot(manifest.model_dump(), as_json=args.json)
            return EXIT_OK
        restored = store.restore(
            catalog.index,
            args.snapshot,
            collection=args.collection,
            as_name=args.as_name,
            force=args.force,
            replace=partial(catalog.drop, writers=partial(celery_writers, settings)),
        )
    print_restored(restored, origin=f"snapshot {args.snapshot}", as_json=args.json)
    return EXIT_OK


def _remote_snapshot(args: argparse.Namespace, settings: Settings, url: str) -> int:
    with _client(settings, url) as client:
        if args.snapshot_command == "list":
            print_snapshots(client.request("GET", "/v1/snapshots")["snapshots"], as_json=args.json)
            return EXIT_OK
        if args.snapshot_command == "create":
            manifest = client.request("POST", "/v1/snapshots", json={"collections": args.collection or None})
            print_snapshot(manifest, as_json=args.json)
            return EXIT_OK
        body = {"collection": args.collection, "as": args.as_name, "force": args.force}
        answer = client.request("POST", f"/v1/snapshots/{remote.segment(args.snapshot)}/restore", json=body)
    print_restored(answer["restored"], origin=f"snapshot {args.snapshot}", as_json=args.json)
    return EXIT_OK


# -- the trash -------------------------------------------------------------------------------------


def _cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from radsearch.services import open_catalog

    with open_catalog(settings) as catalog:
        entry = catalog.trash.restore(catalog.index, args.name, as_name=args.as_name)
    restored = [{"name": args.as_name or args.name, "source": entry.name, "points": entry.points}]
    print_restored(restored, origin="the trash", as_json=args.json)
    return EXIT_OK


def _remote_restore(args: argparse.Namespace, settings: Settings, url: str) -> int:
    with _client(settings, url) as client:
        answer = client.request(
            "POST", f"/v1/collections/{remote.segment(args.name)}/restore", json={"as": args.as_name}
        )
    print_restored([answer], origin="the trash", as_json=args.json)
    return EXIT_OK


def _cmd_trash(args: argparse.Namespace, settings: Settings) -> int:
    from radsearch.services import open_catalog

    with open_catalog(settings) as catalog:
        entries = catalog.trash.list()
    print_trash([e.model_dump() for e in entries], as_json=args.json)
    return EXIT_OK


def _remote_trash(args: argparse.Namespace, settings: Settings, url: str) -> int:
    with _client(settings, url) as client:
        entries = client.request("GET", "/v1/trash")["trash"]
    print_trash(entries, as_json=args.json)
    return EXIT_OK


def add_backup_commands(collections_sub: Any, sub: Any) -> None:
    """Add ``radsearch collections restore|trash`` and ``radsearch snapshot``."""
    restore = collections_sub.add_parser("restore", help="bring a dropped collection back from the trash")
    restore.add_argument("name")
    restore.add_argument(
        "--as", dest="as_name", metavar="NEW_NAME", type=collection_name, help="restore under another name"
    )
    restore.add_argument("--json", action="store_true")
    restore.set_defaults(handler=_cmd_restore, remote_handler=_remote_restore)

    trash = collections_sub.add_parser("trash", help="list dropped collections and when they expire")
    trash.add_argument("--json", action="store_true")
    trash.set_defaults(handler=_cmd_trash, remote_handler=_remote_trash)

    snapshot = sub.add_parser("snapshot", help="snapshots of embedded collections: create, list, restore")
    snapshot_sub = snapshot.add_subparsers(dest="snapshot_command", required=True)
    create = snapshot_sub.add_parser("create", help="snapshot collections (default: all), consistently")
    create.add_argument("--collection", action="append", metavar="NAME", help="this collection (repeatable)")
    create.add_argument("--json", action="store_true")
    listed = snapshot_sub.add_parser("list", help="list snapshots")
    listed.add_argument("--json", action="store_true")
    restore_snapshot = snapshot_sub.add_parser("restore", help="recreate collections from a snapshot")
    restore_snapshot.add_argument("snapshot", help="the snapshot id (radsearch snapshot list)")
    restore_snapshot.add_argument("--collection", metavar="NAME", help="only this collection of the snapshot")
    restore_snapshot.add_argument(
        "--as", dest="as_name", metavar="NEW_NAME", type=collection_name, help="restore under another name"
    )
    restore_snapshot.add_argument(
        "--force", action="store_true", help="replace a collection of the same name (it goes to the trash)"
    )
    restore_snapshot.add_argument("--json", action="store_true")
    snapshot.set_defaults(handler=_cmd_snapshot, remote_handler=_remote_snapshot, remote_mode=_snapshot_mode)


def _snapshot_mode(args: argparse.Namespace) -> remote.RemoteMode:
    # Listing reads files only: through the serving owner if there is one, else here.
    return "optional" if args.snapshot_command == "list" else "store"
