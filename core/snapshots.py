"""Backups of the embedded store: snapshots of collections, and the trash dropped collections go to.

Layout under the data dir::

    snapshots/<id>/manifest.json                 what the snapshot holds (`SnapshotManifest`)
    snapshots/<id>/collections/<name>/           the collection's files (collection.json, shard/)
    trash/<entry>/trash.json                     the dropped collection (`TrashEntry`)
    trash/<entry>/collection/                    its files, moved there whole

A snapshot is written under ``snapshots/.<id>.partial`` and renamed when complete, so a listed
snapshot is always whole. Each collection is copied by the process that owns the store
(`VectorIndex.export_collection`), with that collection's writes paused: the copy holds exactly
the points written before it started. The catalog entry (encoder spec, weights version) travels in
the collection's own metadata and in the manifest, so a restore recreates the collection as it was.

Only the embedded store keeps collections as files; a Qdrant server has its own snapshot API
(README, "Backups, snapshots and the trash").
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from core.config import Settings
from core.errors import (
    CollectionExists,
    CollectionNotFound,
    ConfigError,
    StoreDamaged,
)
from core.index._shared import read_config_file, read_json_record
from core.index.base import CollectionConfig, VectorIndex, check_collection_name
from core.suggest import did_you_mean

__all__ = [
    "SnapshotCollection",
    "SnapshotManifest",
    "SnapshotStore",
    "Trash",
    "TrashEntry",
    "radsearch_version",
]

Clock = Callable[[], datetime]

log = logging.getLogger(__name__)

_Record = TypeVar("_Record", bound=BaseModel)
_MANIFEST = "manifest.json"
_TRASH_RECORD = "trash.json"
_COLLECTIONS = "collections"
_TRASHED = "collection"
_CONFIG_FILE = "collection.json"
_SNAPSHOT_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$")
# One trash or snapshot change at a time in this process (the owner): a purge never races a restore.
_lock = threading.RLock()


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def radsearch_version() -> str:
    """The installed radsearch's version (recorded in each snapshot)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("radsearch")
    except PackageNotFoundError:
        return "unknown"


def _require_files(index: VectorIndex) -> None:
    if not index.supports_files:
        raise ConfigError(
            "snapshots and the trash are for the embedded store; a Qdrant server keeps its own "
            "snapshots (its /collections/{name}/snapshots API)"
        )


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _renamed(config: CollectionConfig, name: str) -> CollectionConfig:
    """``config`` for the collection ``name``: its catalog entry renamed too."""
    metadata = dict(config.metadata)
    catalog = metadata.get("catalog")
    if isinstance(catalog, dict):
        metadata["catalog"] = {**catalog, "name": name}
    return dataclasses.replace(config, name=name, metadata=metadata)


def _read_record(model: type[_Record], path: Path, what: str, advice: str) -> _Record:
    """The JSON record at ``path`` as ``model``; `StoreDamaged` naming ``what``, the file and
    why it cannot be read (fields by name, never what the file holds), then ``advice``."""
    return read_json_record(path, model.model_validate, what, advice, kind="its record")


def _read_config(directory: Path, what: str) -> CollectionConfig:
    return read_config_file(directory / _CONFIG_FILE, what, "it cannot be restored")


# -- snapshots -------------------------------------------------------------------------------------


class SnapshotCollection(BaseModel):
    """One collection in a snapshot: its name, points at snapshot time and catalog entry."""

    name: str
    points: int
    catalog: dict[str, Any]


class SnapshotManifest(BaseModel):
    """``snapshots/<id>/manifest.json``."""

    id: str
    created_at: str
    radsearch_version: str
    collections: list[SnapshotCollection]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.collections]


class SnapshotStore:
    """Snapshots under ``<data>/snapshots``, made and restored through the store's owner's index."""

    def __init__(self, settings: Settings, *, clock: Clock = _utcnow) -> None:
        self.root = settings.snapshots_dir
        self.settings = settings
        self._clock = clock

    def _ids(self) -> builtins.list[str]:
        """The ids of the snapshot folders here (complete or not)."""
        if not self.root.is_dir():
            return []
        return sorted(entry.name for entry in self.root.iterdir() if _SNAPSHOT_ID.match(entry.name))

    def _dir(self, snapshot_id: str) -> Path:
        if not _SNAPSHOT_ID.match(snapshot_id):  # also keeps ids from naming a path elsewhere
            raise CollectionNotFound(
                f"snapshot not found{did_you_mean(snapshot_id, self._ids())} (radsearch snapshot list)"
            )
        return self.root / snapshot_id

    def create(self, index: VectorIndex, collections: Sequence[str] | None = None) -> SnapshotManifest:
        """Snapshot ``collections`` (an alias stands for its collection; default every
        collection), each copied consistently by the index while its writes wait."""
        _require_files(index)
        if collections is not None and not collections:
            raise ConfigError(
                "collections is empty: name at least one collection, or leave it out for every collection"
            )
        aliases = _aliases(index)
        for name in collections or ():
            check_collection_name(name, "a collection name")
        names = (
            sorted(index.list_collections())
            if collections is None
            else list(dict.fromkeys(aliases.get(name, name) for name in collections))
        )
        for name in names:
            if not index.collection_exists(name):
                known = [*index.list_collections(), *aliases]
                raise CollectionNotFound(f"collection {name!r} does not exist{did_you_mean(name, known)}")
        if not names:
            raise ConfigError("there is no collection to snapshot")
        with _lock:  # one snapshot at a time: what another left partial is a crash's leftover
            return self._create(index, names)

    def _create(self, index: VectorIndex, names: Sequence[str]) -> SnapshotManifest:
        now = self._clock()
        snapshot_id = f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.glob(".*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)
        partial = self.root / f".{snapshot_id}.partial"
        (partial / _COLLECTIONS).mkdir(parents=True)
        try:
            entries = []
            for name in names:
                points = index.export_collection(name, str(partial / _COLLECTIONS / name))
                config = _read_config(partial / _COLLECTIONS / name, f"the copy of collection {name!r}")
                entries.append(
                    SnapshotCollection(
                        name=name, points=points, catalog=dict(config.metadata.get("catalog") or {})
                    )
                )
            manifest = SnapshotManifest(
                id=snapshot_id,
                created_at=_iso(now),
                radsearch_version=radsearch_version(),
                collections=entries,
            )
            _write_json(partial / _MANIFEST, manifest.model_dump(mode="json"))
            os.rename(partial, self.root / snapshot_id)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return manifest

    def list(self) -> builtins.list[SnapshotManifest]:
        """Every complete snapshot, oldest first."""
        manifests = []
        for snapshot_id in self._ids():
            if (self.root / snapshot_id / _MANIFEST).is_file():
                try:
                    manifests.append(self.get(snapshot_id))
                except StoreDamaged as exc:  # listed around, not hidden
                    log.warning("%s", exc)
        return manifests

    def get(self, snapshot_id: str) -> SnapshotManifest:
        """The manifest of ``snapshot_id``; `CollectionNotFound`, or `StoreDamaged` where it
        cannot be read."""
        path = self._dir(snapshot_id) / _MANIFEST
        if not path.is_file():
            raise CollectionNotFound(
                f"snapshot {snapshot_id!r} not found{did_you_mean(snapshot_id, self._ids())}"
            )
        return _read_record(
            SnapshotManifest,
            path,
            f"snapshot {snapshot_id!r}",
            "it cannot be restored through radsearch; its collection files are under its folder",
        )

    def restore(
        self,
        index: VectorIndex,
        snapshot_id: str,
        *,
        collection: str | None = None,
        as_name: str | None = None,
        force: bool = False,
        replace: Callable[[str], object] | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """Recreate the snapshot's collections (or ``collection`` alone, as ``as_name``).

        A name that is taken is refused (`CollectionExists`, HTTP 409) unless ``force``: the
        collection there is then dropped first by ``replace`` (the caller's drop: `Catalog.drop`
        with its alias and writer checks, to the trash), or deleted for good without one.
        Returns ``{"name", "source", "points"}`` per restored collection."""
        _require_files(index)
        manifest = self.get(snapshot_id)
        chosen = manifest.names if collection is None else [collection]
        if collection is not None:
            check_collection_name(collection, "--collection")
        if collection is not None and collection not in manifest.names:
            raise CollectionNotFound(
                f"snapshot {snapshot_id} holds no collection {collection!r}"
                f"{did_you_mean(collection, manifest.names)}; it holds {', '.join(manifest.names) or 'none'}"
            )
        if as_name is not None:
            if len(chosen) != 1:
                raise ConfigError('"as" (--as) names one collection: give "collection" (--collection) too')
            check_collection_name(as_name, "--as")
        targets = {name: as_name or name for name in chosen}
        with _lock:
            taken = [target for target in targets.values() if index.collection_exists(target)]
            aliases = _aliases(index)
            taken += [target for target in targets.values() if target in aliases]
            if taken and not force:
                raise CollectionExists(
                    f"collection {', '.join(repr(name) for name in sorted(set(taken)))} exists: restore "
                    'under another name ("as", --as NEW_NAME) or replace it ("force", --force; the one '
                    "there goes to the trash)"
                )
            restored = []
            for name, target in targets.items():
                if target in aliases:
                    raise ConfigError(f'{target!r} is an alias; restore under another name ("as", --as)')
                if index.collection_exists(target):
                    (replace or index.drop_collection)(target)
                source = self._dir(snapshot_id) / _COLLECTIONS / name
                index.attach_collection(
                    str(source), _renamed(_read_config(source, f"the snapshot's collection {name!r}"), target)
                )
                restored.append({"name": target, "source": name, "points": index.count(target)})
        return restored


def _aliases(index: VectorIndex) -> dict[str, str]:
    try:
        return index.aliases()
    except Exception:
        return {}


# -- the trash ------------------------------------------------------------------------------------


class TrashEntry(BaseModel):
    """A dropped collection in ``trash/<id>/``, restorable until ``expires_at``; ``points`` is
    None where the collection was damaged when it was dropped (`StoreDamaged`)."""

    id: str
    name: str
    points: int | None
    dropped_at: str
    expires_at: str


class Trash:
    """Dropped embedded collections, kept ``store.trash_hours`` under ``<data>/trash``."""

    def __init__(self, settings: Settings, *, clock: Clock = _utcnow) -> None:
        self.root = settings.trash_dir
        self.keep = timedelta(hours=settings.store.trash_hours)
        self._clock = clock

    def put(self, index: VectorIndex, name: str) -> TrashEntry:
        """Move the collection ``name`` out of the store into the trash, then purge what expired."""
        _require_files(index)
        now = self._clock()
        with _lock:
            try:
                points: int | None = index.count(name)
            except StoreDamaged:
                points = None
            entry = TrashEntry(
                id=f"{name}--{now.astimezone(UTC):%Y%m%dT%H%M%S%fZ}",
                name=name,
                points=points,
                dropped_at=_iso(now),
                expires_at=_iso(now + self.keep),
            )
            directory = self.root / entry.id
            directory.mkdir(parents=True)
            try:
                _write_json(directory / _TRASH_RECORD, entry.model_dump(mode="json"))
                index.detach_collection(name, str(directory / _TRASHED))
            except BaseException:
                if not (directory / _TRASHED).exists():
                    shutil.rmtree(directory, ignore_errors=True)
                raise
            self.purge()
        return entry

    def list(self) -> builtins.list[TrashEntry]:
        """What the trash holds, oldest first (expired entries not yet purged included)."""
        if not self.root.is_dir():
            return []
        entries = []
        for directory in sorted(self.root.iterdir()):
            record = directory / _TRASH_RECORD
            if record.is_file() and (directory / _TRASHED).is_dir():
                try:
                    entries.append(
                        _read_record(
                            TrashEntry,
                            record,
                            f"the trash entry {directory.name!r}",
                            "it cannot be restored or expire; remove its folder by hand once not needed",
                        )
                    )
                except StoreDamaged as exc:  # listed around, not hidden
                    log.warning("%s", exc)
        return sorted(entries, key=lambda e: e.dropped_at)

    def purge(self) -> builtins.list[TrashEntry]:
        """Delete the entries whose time is up (and leftovers of interrupted drops); what went."""
        if not self.root.is_dir():
            return []
        now = self._clock()
        gone = []
        with _lock:
            entries = self.list()
            kept = {e.id for e in entries}
            for entry in entries:
                if datetime.fromisoformat(entry.expires_at) <= now:
                    shutil.rmtree(self.root / entry.id, ignore_errors=True)
                    gone.append(entry)
            for directory in self.root.iterdir():
                if directory.name not in kept and not (directory / _TRASHED).exists():
                    shutil.rmtree(directory, ignore_errors=True)  # a drop interrupted before the move
        return gone

    def restore(self, index: VectorIndex, name: str, *, as_name: str | None = None) -> TrashEntry:
        """Bring the latest dropped ``name`` back (as ``as_name``); `CollectionExists` (409) when
        the name is taken again, `CollectionNotFound` when the trash holds no such collection."""
        _require_files(index)
        check_collection_name(name, "a collection name")
        target = as_name or name
        check_collection_name(target, "--as")
        with _lock:
            self.purge()
            entries = self.list()
            candidates = [e for e in entries if e.name == name]
            if not candidates:
                raise CollectionNotFound(
                    f"the trash holds no collection {name!r}{did_you_mean(name, {e.name for e in entries})} "
                    "(radsearch collections trash)"
                )
            entry = candidates[-1]
            if index.collection_exists(target) or target in _aliases(index):
                raise CollectionExists(
                    f"{target!r} is taken again: restore the dropped collection under another name (--as)"
                )
            directory = self.root / entry.id
            source = directory / _TRASHED
            config = _read_config(source, f"the dropped collection {name!r}")
            index.attach_collection(str(source), _renamed(config, target), move=True)
            shutil.rmtree(directory, ignore_errors=True)
        return entry
