"""The store's owner indexes collections by itself: many small upserts and no `optimize` call end
with every vector indexed, in one debounced build, by a thread that stops with the index."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.config import StoreSettings
from core.index.base import CollectionConfig, VectorIndex
from core.index.edge import EdgeIndex
from core.index.hosted import HostedEdgeIndex

DIM = 16
# 2 KB of 16-d float32 vectors: 32 vectors make a build worth it.
STORE = StoreSettings(
    full_scan_threshold_kb=2, auto_index_quiet_s=0.5, auto_index_max_delay_s=30.0, min_free_mb=0
)
BATCHES, BATCH = 20, 8


def _vectors(n: int, seed: int) -> Any:
    raw = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


def _write_small_batches(index: VectorIndex, name: str) -> None:
    for batch in range(BATCHES):
        ids = [str(uuid.uuid4()) for _ in range(BATCH)]
        index.upsert(name, ids, _vectors(BATCH, batch), [{"modality": "CT"}] * BATCH)


def _wait_indexed(index: VectorIndex, name: str, timeout_s: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        info = index.collection_info(name)
        if info["indexed_vectors"] == info["points"] and not info["optimizing"]:
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"not indexed after {timeout_s} s: {info}")
        time.sleep(0.05)


def _indexer_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("auto-index-")]


@pytest.fixture(params=["edge", "hosted"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorIndex]:
    opened: VectorIndex = (
        EdgeIndex(tmp_path / "index", STORE)
        if request.param == "edge"
        else HostedEdgeIndex(tmp_path / "index", STORE)
    )
    try:
        yield opened
    finally:
        opened.close()


def test_small_upserts_get_indexed_in_the_background(index: VectorIndex) -> None:
    index.create_collection(CollectionConfig(name="c", dim=DIM, quantization="int8"))
    _write_small_batches(index, "c")
    info = index.collection_info("c")
    # The writes came faster than the quiet period: the build waits for them to pause.
    assert info["points"] == BATCHES * BATCH and info["indexed_vectors"] == 0
    assert info["status"] == "yellow" and info["optimizing"] is True
    info = _wait_indexed(index, "c")
    assert info["indexed_vectors"] == info["points"] == BATCHES * BATCH and info["status"] == "green"
    hits = index.search("c", _vectors(1, 0)[0], limit=3)
    assert len(hits) == 3


def test_one_build_for_a_burst_of_writes_and_none_below_the_threshold(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="core.index.edge")
    index = EdgeIndex(tmp_path / "index", STORE)
    try:
        index.create_collection(CollectionConfig(name="c", dim=DIM))
        index.create_collection(CollectionConfig(name="small", dim=DIM))
        index.upsert("small", [str(uuid.uuid4()) for _ in range(20)], _vectors(20, 99), [{}] * 20)
        _write_small_batches(index, "c")
        _wait_indexed(index, "c")
        builds = [r for r in caplog.records if r.getMessage().startswith("indexed collection c:")]
        assert len(builds) == 1, [r.getMessage() for r in builds]
        # 20 vectors are under the threshold: searched by full scan, no build, reported done.
        small = index.collection_info("small")
        assert small["indexed_vectors"] == 0 and small["status"] == "green" and not small["optimizing"]
        # An explicit optimize after the background one finds nothing to do and says so.
        index.optimize("c")
        assert index.collection_info("c")["status"] == "green"
    finally:
        index.close()


def test_close_and_drop_stop_the_indexer_before_its_build(tmp_path: Path) -> None:
    store = STORE.model_copy(update={"auto_index_quiet_s": 60.0})
    index = EdgeIndex(tmp_path / "index", store)
    index.create_collection(CollectionConfig(name="a", dim=DIM))
    index.create_collection(CollectionConfig(name="b", dim=DIM))
    _write_small_batches(index, "a")
    _write_small_batches(index, "b")
    assert sorted(_indexer_threads()) == ["auto-index-a", "auto-index-b"]
    assert index.collection_info("a")["optimizing"] is True  # scheduled, waiting for quiet
    started = time.monotonic()
    index.drop_collection("a")
    assert _indexer_threads() == ["auto-index-b"]
    index.close()
    assert _indexer_threads() == []
    assert time.monotonic() - started < 5.0  # nobody waited for the 60 s quiet period
    reopened = EdgeIndex(tmp_path / "index", store)
    try:
        assert reopened.collection_info("b")["indexed_vectors"] == 0  # no build ran after close
        assert not reopened.collection_exists("a")
    finally:
        reopened.close()


def test_auto_index_off_leaves_indexing_to_optimize(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path / "index", STORE.model_copy(update={"auto_index": False}))
    try:
        index.create_collection(CollectionConfig(name="c", dim=DIM))
        _write_small_batches(index, "c")
        assert _indexer_threads() == []
        assert index.collection_info("c")["status"] == "yellow"
        index.optimize("c")
        info = index.collection_info("c")
        assert info["indexed_vectors"] == info["points"] and info["status"] == "green"
    finally:
        index.close()
