"""Backups of the embedded store (issue 14, item 11): snapshots taken while the collection is being
written, restore under another name, and drop → trash → restore, on real Qdrant Edge shards.

Before: there was no backup or restore at all, and dropping a collection was an immediate rmtree
of its shard: a mistaken ``DELETE /v1/collections/{name}`` lost every point for good."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from pydantic import SecretStr
from qdrant_client import QdrantClient

from core.catalog import Catalog, CollectionEntry
from core.config import SecuritySettings, Settings, StoreSettings
from core.encoders.registry import resolve_spec
from core.errors import CollectionExists, CollectionNotFound, ConfigError, StoreDamaged
from core.index.base import CollectionConfig, VectorIndex
from core.index.edge import EdgeIndex
from core.index.server import QdrantServerIndex
from core.payload import SearchFilter
from core.snapshots import SnapshotStore, Trash

DIM = 16
BATCH = 40


def _settings(tmp_path: Path, **store: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        store=StoreSettings(min_free_mb=0, **store),
        security=SecuritySettings(hash_key=SecretStr("snapshot-test")),
    )


def _create(index: VectorIndex, name: str, *, dim: int = DIM) -> None:
    """A collection with a real catalog entry (the baseline spec), without loading an encoder."""
    entry = CollectionEntry(
        name=name,
        encoder=resolve_spec("baseline"),
        weights_version="snapshot-test",
        dim=dim,
        created_at="2026-12-01T00:00:00+00:00",
        quantization="int8",
    )
    config = CollectionConfig(
        name=name, dim=dim, quantization="int8", metadata={"catalog": entry.model_dump(mode="json")}
    )
    index.create_collection(config)


def _batch(index: VectorIndex, name: str, number: int) -> None:
    rng = np.random.default_rng(number)
    vectors = rng.normal(size=(BATCH, DIM)).astype(np.float32)
    ids = [str(uuid.UUID(int=number * 1000 + i + 1)) for i in range(BATCH)]
    payloads = [{"key": f"b{number:04d}/{i}", "dataset": f"b{number:04d}"} for i in range(BATCH)]
    index.upsert(name, ids, vectors, payloads)


def _queries() -> NDArray[np.float32]:
    return np.random.default_rng(99).normal(size=(6, DIM)).astype(np.float32)


def _hits(index: VectorIndex, name: str) -> list[list[tuple[str, float]]]:
    """Exact top 10 per query (ids and scores), and the default (quantized, rescored) top 10."""
    out = []
    for query in _queries():
        for exact in (True, False):
            hits = index.search(name, query, limit=10, exact=exact)
            out.append([(h.id, round(h.score, 5)) for h in hits])
    return out


def _batches(index: VectorIndex, name: str) -> dict[str, int]:
    return index.facet(name, "dataset", limit=10_000)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Settings, EdgeIndex, Catalog]]:
    settings = _settings(tmp_path)
    index = EdgeIndex(settings.index_dir, settings.store)
    try:
        yield settings, index, Catalog(index, settings)
    finally:
        index.close()


def test_snapshot_while_writing_holds_whole_batches_and_restores_under_a_new_name(
    store: tuple[Settings, EdgeIndex, Catalog],
) -> None:
    """Reproduced first: no snapshot existed, and copying a shard's files beside its writer gave
    no guarantee of holding what was written. Now the copy pauses that collection's writes, so a
    snapshot taken while batches stream in holds whole batches, exactly the count it reports, and a
    restore under a new name answers searches like the original did at that moment."""
    settings, index, catalog = store
    _create(index, "live")
    for number in range(3):
        _batch(index, "live", number)
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        number = 3
        while not stop.is_set():
            _batch(index, "live", number)
            written.append(number)
            number += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(written) < 3:
            stop.wait(0.01)
        manifest = SnapshotStore(settings).create(index, ["live"])
        mark = len(written)
        while len(written) < mark + 1:
            stop.wait(0.01)
    finally:
        stop.set()
        thread.join()
    after = index.count("live")
    [held] = manifest.collections
    assert held.name == "live" and held.catalog["encoder"]["name"] == "baseline"
    # writes went on beside the snapshot, and it holds fewer points than the collection has now
    assert 3 * BATCH <= held.points < after, (held.points, after)

    restored = SnapshotStore(settings).restore(index, manifest.id, collection="live", as_name="copy")
    assert restored == [{"name": "copy", "source": "live", "points": held.points}]
    batches = _batches(index, "copy")
    # whole batches, and a prefix of what was written: nothing half-written, nothing skipped
    assert set(batches.values()) == {BATCH}
    assert sorted(batches) == [f"b{n:04d}" for n in range(len(batches))]
    assert len(batches) * BATCH == held.points == index.count("copy")

    # the original, cut back to what the snapshot saw, searches exactly like the restored copy
    late = [f"b{n:04d}" for n in range(len(batches), written[-1] + 1)]
    index.delete_by_filter("live", SearchFilter.from_mapping({"dataset": late}))
    assert index.count("live") == held.points
    assert _hits(index, "copy") == _hits(index, "live")

    # the catalog entry came back under the new name, with the encoder it was built with
    entry = catalog.get("copy")
    assert (entry.name, entry.encoder.name, entry.weights_version, entry.dim) == (
        "copy",
        "baseline",
        "snapshot-test",
        DIM,
    )
    assert [m.id for m in SnapshotStore(settings).list()] == [manifest.id]


def test_snapshot_restore_refuses_a_taken_name_unless_forced(
    store: tuple[Settings, EdgeIndex, Catalog],
) -> None:
    """Reproduced first: nothing guarded a restore, so it could only have overwritten the live
    collection. Now a taken name is refused (409), ``--force`` replaces it through the drop (refused
    while an alias points at it; the replaced collection kept in the trash), and ids that could
    name a path elsewhere are not found."""
    settings, index, catalog = store
    for name in ("a", "z"):
        _create(index, name)
        _batch(index, name, 0)
    snapshots = SnapshotStore(settings)
    manifest = snapshots.create(index)
    assert manifest.names == ["a", "z"]
    _batch(index, "a", 1)
    with pytest.raises(CollectionExists, match="--as NEW_NAME"):
        snapshots.restore(index, manifest.id, collection="a")
    assert index.count("a") == 2 * BATCH
    with pytest.raises(ConfigError, match="one collection"):
        snapshots.restore(index, manifest.id, as_name="b")
    with pytest.raises(CollectionNotFound, match=r"^snapshot not found \(radsearch snapshot list\)$"):
        snapshots.restore(index, "../index")
    # a copied id cut short, or one character off (this session's walkthrough): the one meant
    with pytest.raises(CollectionNotFound, match=rf"not found \(did you mean '{manifest.id}'\?\)"):
        snapshots.restore(index, manifest.id[:-1], collection="a", as_name="b")
    other = manifest.id[:-1] + ("0" if manifest.id[-1] != "0" else "1")
    with pytest.raises(CollectionNotFound, match=rf"'{other}' not found \(did you mean '{manifest.id}'\?\)"):
        snapshots.restore(index, other, collection="a", as_name="b")
    # a name it does not hold (session 26's walkthrough): what the snapshot holds
    with pytest.raises(CollectionNotFound, match=r"no collection 'b'; it holds a, z$"):
        snapshots.restore(index, manifest.id, collection="b", as_name="c")
    assert not index.collection_exists("b")

    catalog.set_alias("current", "a")
    with pytest.raises(ConfigError, match="target of alias current"):
        snapshots.restore(index, manifest.id, collection="a", force=True, replace=catalog.drop)
    catalog.delete_alias("current")
    restored = snapshots.restore(index, manifest.id, collection="a", force=True, replace=catalog.drop)
    assert restored == [{"name": "a", "source": "a", "points": BATCH}]
    assert index.count("a") == BATCH
    [replaced] = catalog.trash.list()
    assert (replaced.name, replaced.points) == ("a", 2 * BATCH)


def test_drop_goes_to_the_trash_and_restore_gives_the_same_points_and_hits(
    store: tuple[Settings, EdgeIndex, Catalog],
) -> None:
    """Reproduced first: `Catalog.drop` removed the shard directory at once (rmtree), and nothing
    could bring it back. Now the collection moves to ``<data>/trash`` and comes back whole; a name
    taken again meanwhile is refused (409) unless it is restored under another."""
    settings, index, catalog = store
    _create(index, "keep")
    for number in range(4):
        _batch(index, "keep", number)
    index.optimize("keep")
    before = _hits(index, "keep")

    entry = catalog.drop("keep")
    assert entry is not None and entry.points == 4 * BATCH
    assert not index.collection_exists("keep")
    assert (settings.trash_dir / entry.id / "collection" / "shard").is_dir()
    assert datetime.fromisoformat(entry.expires_at) - datetime.fromisoformat(entry.dropped_at) == timedelta(
        hours=24
    )
    assert [e.name for e in catalog.trash.list()] == ["keep"]
    with pytest.raises(CollectionNotFound, match=r"no collection 'kep' \(did you mean 'keep'\?\)"):
        catalog.trash.restore(index, "kep")

    _create(index, "keep")  # the name is taken again
    with pytest.raises(CollectionExists, match="taken again"):
        catalog.trash.restore(index, "keep")
    catalog.trash.restore(index, "keep", as_name="kept")
    assert index.count("kept") == 4 * BATCH
    assert _hits(index, "kept") == before
    assert catalog.get("kept").name == "kept"
    assert catalog.trash.list() == []
    with pytest.raises(CollectionNotFound, match="trash holds no collection 'keep' \\(radsearch"):
        catalog.trash.restore(index, "keep")


def test_the_trash_expires_after_trash_hours_by_the_clock(tmp_path: Path) -> None:
    """Reproduced first: with no trash there was nothing to expire; a trash without expiry would
    fill the disk. Now an entry lives ``store.trash_hours`` (clock injected: the only thing
    mocked), is purged after the next drop once expired, and cannot be restored after."""
    settings = _settings(tmp_path, trash_hours=2)
    now = [datetime(2026, 12, 1, 12, 0, tzinfo=UTC)]
    index = EdgeIndex(settings.index_dir, settings.store)
    try:
        catalog = Catalog(index, settings)
        catalog.trash = Trash(settings, clock=lambda: now[0])
        for name in ("old", "new"):
            _create(index, name)
            _batch(index, name, 0)
        first = catalog.drop("old")
        assert first is not None and first.expires_at == "2026-12-01T14:00:00+00:00"
        now[0] += timedelta(hours=1, minutes=59)
        assert catalog.trash.purge() == []
        now[0] += timedelta(minutes=2)
        catalog.drop("new")  # each drop purges what expired
        assert [e.name for e in catalog.trash.list()] == ["new"]
        assert not (settings.trash_dir / first.id).exists()
        with pytest.raises(CollectionNotFound):
            catalog.trash.restore(index, "old")
        now[0] += timedelta(hours=3)
        assert [e.name for e in catalog.trash.purge()] == ["new"]
        assert catalog.trash.list() == []
    finally:
        index.close()


@pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")
def test_a_qdrant_server_drop_is_a_real_delete(tmp_path: Path) -> None:
    """The Qdrant-server backend keeps no files here: a drop deletes for good (no trash entry), and
    snapshots point at the server's own snapshot API instead of failing obscurely."""
    settings = _settings(tmp_path, backend="qdrant")
    index = QdrantServerIndex(QdrantClient(":memory:"), settings.store)
    catalog = Catalog(index, settings)
    _create(index, "gone")
    assert catalog.drop("gone") is None
    assert not index.collection_exists("gone")
    assert not settings.trash_dir.exists()
    with pytest.raises(ConfigError, match="its own snapshots"):
        SnapshotStore(settings).create(index)


def test_a_damaged_manifest_or_trash_record_is_named_not_hidden(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in the walkthrough: a snapshot whose manifest.json could not be read vanished from
    `snapshot list` ("no snapshots yet") and its restore ended with "unexpected error:
    ValidationError"; a trash entry whose record could not be read vanished from the trash, there
    to stay for good."""
    settings = _settings(tmp_path)
    index = EdgeIndex(settings.data_dir / "index", settings.store)
    try:
        _create(index, "live")
        _create(index, "gone")
        snapshots = SnapshotStore(settings)
        kept, damaged = snapshots.create(index, ["live"]), snapshots.create(index, ["live"])
        (snapshots.root / damaged.id / "manifest.json").write_text('{"id": 5}')
        trash = Trash(settings)
        dropped = trash.put(index, "gone")
        (trash.root / dropped.id / "trash.json").write_text("{")
        with caplog.at_level(logging.WARNING, logger="core.snapshots"):
            assert [m.id for m in snapshots.list()] == [kept.id]
            assert trash.list() == [] and trash.purge() == []
        assert (
            f"snapshot {damaged.id!r} is damaged: its manifest.json: not its record (fields missing"
            in caplog.text
        )
        assert f"the trash entry {dropped.id!r} is damaged: its trash.json: not JSON" in caplog.text
        assert (trash.root / dropped.id / "collection").is_dir()  # never purged as a leftover
        with pytest.raises(
            StoreDamaged, match=r"wrong kind: collections, created_at, id, radsearch_version\)"
        ):
            snapshots.restore(index, damaged.id, collection="live", as_name="again")
        assert "again" not in index.list_collections()
    finally:
        index.close()
