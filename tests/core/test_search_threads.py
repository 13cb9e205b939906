"""``store.search_threads`` on a real Qdrant Edge shard: every open sizes the engine's search pool
from the settings of the opening process, and leaves everything else the shard was created with."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest

from core.config import StoreSettings
from core.index.base import CollectionConfig
from core.index.edge import EdgeIndex

DIM = 64
N = 500


def _search_threads() -> int:
    """Threads of this process that the engine named as its search pool's."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            count += Path(f"/proc/self/task/{task}/comm").read_text().startswith("edge-search")
        except OSError:
            pass  # the thread ended meanwhile
    return count


@pytest.mark.parametrize("on_disk", [False, True])
def test_each_open_sizes_the_search_pool_and_keeps_the_collection_as_created(
    tmp_path: Path, on_disk: bool
) -> None:
    root = tmp_path / "index"
    vectors = np.random.default_rng(0).standard_normal((N, DIM)).astype(np.float32)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(N)]
    baseline = _search_threads()
    index = EdgeIndex(root, StoreSettings(search_threads=3))
    index.create_collection(CollectionConfig(name="c", dim=DIM, quantization="int8", on_disk=on_disk))
    index.upsert("c", ids, vectors, [{"modality": "CT"}] * N)
    try:
        before = index.search("c", vectors[7], limit=5)
        assert _search_threads() - baseline == 3
    finally:
        index.close()
    created = json.loads((root / "c" / "shard" / "edge_config.json").read_text())

    index = EdgeIndex(root, StoreSettings(search_threads=2))
    try:
        after = index.search("c", vectors[7], limit=5)
        assert _search_threads() - baseline == 2
        assert index.count("c") == N
        assert [(h.id, h.payload) for h in after] == [(h.id, h.payload) for h in before]
    finally:
        index.close()
    reopened = json.loads((root / "c" / "shard" / "edge_config.json").read_text())
    assert reopened.pop("max_search_threads") == 2
    assert created.pop("max_search_threads") == 3
    # vectors (on disk or not), quantization, payload placement, HNSW: as created (the engine
    # writes out the defaults it resolved for what was left unspecified)
    assert {key: reopened[key] for key in created} == created


def test_search_threads_must_be_positive() -> None:
    with pytest.raises(ValueError, match="search_threads"):
        StoreSettings(search_threads=0)
