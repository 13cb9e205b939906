"""`Catalog` entries kept between searches: known without a call to the store until the index
changes a collection, an alias or metadata (`VectorIndex.metadata_generation`); never kept where the
index does not count its changes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from core.calibration import CALIBRATION_KEY
from core.catalog import Catalog
from core.config import Settings
from core.encoders.registry import get_spec
from core.errors import CollectionNotFound, StoreDamaged
from core.index.edge import EdgeIndex
from core.index.hosted import HostedEdgeIndex


def test_an_entry_is_known_until_the_owner_changes_what_it_was_read_from(settings: Settings) -> None:
    hosted = HostedEdgeIndex(settings.data_dir / "index", settings.store)
    try:
        catalog = Catalog(hosted, settings)
        catalog.create("c", get_spec("baseline"))
        assert catalog.known("c") is None  # nothing read yet
        entry = catalog.get("c")
        assert catalog.known("c") is entry and catalog.get("c") is entry
        with pytest.raises(ValueError):  # frozen: one entry serves many requests
            entry.dim = 3  # type: ignore[misc]

        hosted.update_metadata("c", {CALIBRATION_KEY: {"threshold": 0.5}})
        assert catalog.known("c") is None
        assert catalog.get("c").calibration_threshold == 0.5

        catalog.create("d", get_spec("baseline"))
        catalog.set_alias("current", "c")
        assert catalog.get("current").name == "c"
        catalog.set_alias("current", "d")
        assert catalog.known("current") is None
        assert catalog.get("current").name == "d"

        catalog.delete_alias("current")
        hosted.drop_collection("c")
        assert catalog.known("c") is None
        with pytest.raises(CollectionNotFound):
            catalog.get("c")
        with pytest.raises(CollectionNotFound):
            catalog.get("current")
    finally:
        hosted.close()


def test_nothing_is_kept_where_the_index_does_not_count_its_changes(
    settings: Settings, tmp_path: Path
) -> None:
    index = EdgeIndex(tmp_path / "edge", settings.store)
    try:
        catalog = Catalog(index, settings)
        catalog.create("c", get_spec("baseline"))
        assert catalog.get("c").name == "c"
        assert catalog.known("c") is None
    finally:
        index.close()


def _damage(folder: Path, how: str) -> None:
    record = folder / "collection.json"
    if how == "not JSON":
        record.write_text('{"broken')
    elif how == "not UTF-8":
        record.write_bytes(b"\xff\xfe{}")
    elif how == "fields missing":
        record.write_text('{"name": "d"}')
    else:  # the catalog entry inside a readable record
        data = json.loads(record.read_text())
        del data["metadata"]["catalog"]["encoder"]
        record.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("not JSON", "its collection.json: not JSON (line 1)"),
        ("not UTF-8", "its collection.json: not UTF-8 text"),
        ("fields missing", "its collection.json: not a collection's record"),
        ("catalog entry", "its catalog entry does not hold (encoder)"),
    ],
)
def test_a_damaged_collection_is_named_listed_around_and_can_be_dropped(
    settings: Settings, how: str, says: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in the walkthrough: one collection.json that could not be read ended every command,
    `collections list` included, with "unexpected error: JSONDecodeError", and the collection
    could not be dropped."""
    root = settings.data_dir / "index"
    index = EdgeIndex(root, settings.store)
    catalog = Catalog(index, settings)
    catalog.create("c", get_spec("baseline"))
    catalog.create("d", get_spec("baseline"))
    index.close()
    _damage(root / "d", how)

    index = EdgeIndex(root, settings.store)
    try:
        catalog = Catalog(index, settings)
        with pytest.raises(StoreDamaged) as damaged:
            catalog.get("d")
        assert str(damaged.value).startswith(f"collection 'd' is damaged: {says}")
        assert str(settings.data_dir) not in str(damaged.value)  # the message may reach a client
        with caplog.at_level(logging.WARNING, logger="core.catalog"):
            assert [entry.name for entry in catalog.list()] == ["c"]
        assert "collection 'd' is damaged" in caplog.text
        dropped = catalog.drop("d")
        assert dropped is not None and dropped.points == (0 if how == "catalog entry" else None)
        assert catalog.index.list_collections() == ["c"]
        if how != "catalog entry":
            with pytest.raises(
                StoreDamaged, match=r"^the dropped collection 'd' is damaged: .*cannot be restored"
            ):
                catalog.trash.restore(index, "d")
            assert [entry.name for entry in catalog.trash.list()] == ["d"]  # still there to mend
    finally:
        index.close()


def test_a_damaged_aliases_file_is_named_not_read_as_no_aliases(settings: Settings) -> None:
    """Found in the walkthrough: it ended commands with "unexpected error: JSONDecodeError". Nor
    may it read as "no aliases", the way the catalog takes a store without alias support: a
    search through an alias would answer that the collection does not exist."""
    root = settings.data_dir / "index"
    index = EdgeIndex(root, settings.store)
    Catalog(index, settings).create("c", get_spec("baseline"))
    Catalog(index, settings).set_alias("current", "c")
    index.close()
    (root / "aliases.json").write_text('{"current": ')
    index = EdgeIndex(root, settings.store)
    try:
        catalog = Catalog(index, settings)
        for call in (catalog.aliases, catalog.list, lambda: catalog.get("current")):
            damaged = r"aliases file \(in the index folder\) is damaged: its aliases.json: not JSON"
            with pytest.raises(StoreDamaged, match=damaged + r" \(line 1\)"):
                call()
    finally:
        index.close()


def test_an_unknown_name_is_answered_with_the_close_ones(settings: Settings, tmp_path: Path) -> None:
    """Found in the walkthrough: `--collection othr` answered "collection 'othr' does not exist",
    where a mistyped encoder or filter value is answered with the close ones."""
    index = EdgeIndex(tmp_path / "edge", settings.store)
    try:
        catalog = Catalog(index, settings)
        catalog.create("chest-ct", get_spec("baseline"))
        catalog.create("chest-cr", get_spec("baseline"))
        catalog.set_alias("current", "chest-ct")
        for typed, hint in [
            ("chest_ct", " (did you mean 'chest-ct' or 'chest-cr'?)"),  # the closest first
            ("chest-xr", " (did you mean 'chest-cr' or 'chest-ct'?)"),
            ("curent", " (did you mean 'current'?)"),
            ("zzz", ""),
        ]:
            with pytest.raises(CollectionNotFound) as missing:
                catalog.get(typed)
            assert str(missing.value) == f"collection {typed!r} does not exist{hint}"
    finally:
        index.close()
