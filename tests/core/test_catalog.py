"""`Catalog` entries kept between searches: known without a call to the store until the index
changes a collection, an alias or metadata (`VectorIndex.metadata_generation`); never kept where the
index does not count its changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.calibration import CALIBRATION_KEY
from core.catalog import Catalog
from core.config import Settings
from core.encoders.registry import get_spec
from core.errors import CollectionNotFound
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
