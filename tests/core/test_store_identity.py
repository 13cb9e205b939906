"""A deployment's store id (`core.store_identity`): made once per data dir, agreed on by processes
that ask at once, the same for every user of one Qdrant server."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from core.config import Settings, StoreSettings
from core.errors import ConfigError
from core.store_identity import served_store_id, store_id


def _id_of(data_dir: str) -> str:
    return store_id(Settings(data_dir=Path(data_dir)))


def test_one_id_per_data_dir_kept_and_agreed_on(tmp_path: Path) -> None:
    with ProcessPoolExecutor(max_workers=4) as pool:
        first = list(pool.map(_id_of, [str(tmp_path / "a")] * 8))
    assert len(set(first)) == 1 and first[0].startswith("edge:")
    assert _id_of(str(tmp_path / "a")) == first[0] != _id_of(str(tmp_path / "b"))
    assert sorted(p.name for p in (tmp_path / "a" / "index").iterdir()) == ["store-id"]


def test_a_qdrant_server_is_its_url_and_a_damaged_file_is_named(tmp_path: Path) -> None:
    store = StoreSettings(backend="qdrant", url="http://qdrant:6333/")
    qdrant = Settings(data_dir=tmp_path / "q", store=store)
    assert store_id(qdrant) == served_store_id(qdrant) == "qdrant:http://qdrant:6333"
    damaged = Settings(data_dir=tmp_path / "d")
    (tmp_path / "d" / "index").mkdir(parents=True)
    (tmp_path / "d" / "index" / "store-id").write_text("")
    with pytest.raises(ConfigError, match=r"store-id is damaged"):
        store_id(damaged)


def test_a_pinned_id_wins(tmp_path: Path) -> None:
    """RADSEARCH_STORE__ID: the jobs queued under an id that changed run again; two copies of a
    data dir are told apart. A value that could not name a store is refused at start-up."""
    pinned = Settings(
        data_dir=tmp_path / "p", store=StoreSettings(id="edge:old-one"), url="http://127.0.0.1:9"
    )
    assert store_id(pinned) == served_store_id(pinned) == "edge:old-one"  # no server asked
    assert not (tmp_path / "p" / "index" / "store-id").exists()
    with pytest.raises(ValueError, match="should match pattern"):
        StoreSettings(id="edge old one")
