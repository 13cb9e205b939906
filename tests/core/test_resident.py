"""Releasing the pages of on-disk original vectors that rescoring mapped (`core.index.resident`),
on a real Qdrant Edge shard: the RSS they add goes, the results stay the same."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from core.config import StoreSettings
from core.index.base import CollectionConfig
from core.index.edge import EdgeIndex
from core.index.resident import _is_original_vectors, unmap_original_vectors
from core.payload import SearchFilter

DIM = 256
N = 4000


def _resident_kb(root: Path, name: str) -> int:
    """KB of this process's mappings of files named ``name`` under ``root`` that are resident."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split(maxsplit=5)
        if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            inside = len(head) == 6 and head[5].startswith(str(root.resolve())) and head[5].endswith(name)
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


def _index(root: Path, every: int) -> tuple[EdgeIndex, list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(N)]
    index = EdgeIndex(root, StoreSettings(release_originals_every=every))
    index.create_collection(
        CollectionConfig(name="c", dim=DIM, quantization="int8", on_disk=True, full_scan_threshold_kb=100)
    )
    index.upsert("c", ids, vectors, [{"modality": "CT"}] * N)
    index.optimize("c")
    return index, ids, vectors


def test_unmapping_drops_the_resident_original_vectors_and_keeps_the_results(tmp_path: Path) -> None:
    root = tmp_path / "index"
    index, ids, vectors = _index(root, every=0)
    try:
        before = [index.search("c", vectors[j], limit=10) for j in range(0, N, 10)]
        mapped = _resident_kb(root, "/matrix.dat")
        assert mapped > 1000  # rescoring touched pages all over the 4 MB file
        assert unmap_original_vectors(root) >= 1
        assert _resident_kb(root, "/matrix.dat") < mapped / 10
        after = [index.search("c", vectors[j], limit=10) for j in range(0, N, 10)]
        assert [[h.id for h in hits] for hits in after] == [[h.id for h in hits] for hits in before]
    finally:
        index.close()


def test_the_owner_unmaps_every_so_many_searches(tmp_path: Path) -> None:
    root = tmp_path / "index"
    index, ids, vectors = _index(root, every=50)
    try:
        for j in range(0, N, 10):  # 400 searches: the last release after the 400th
            index.search("c", vectors[j], limit=10)
        assert _resident_kb(root, "/matrix.dat") < 200
    finally:
        index.close()


@pytest.mark.parametrize(
    ("perms", "path", "released"),
    [
        ("r--s", "/data/index/c/shard/segments/s1/vector_storage/matrix.dat", True),
        ("r--s", "/data/index/c/shard/segments/s1/vector_storage/quantized.data", False),
        ("rw-s", "/data/index/c/shard/segments/s1/vector_storage/matrix.dat", False),
        ("r--p", "/data/index/c/shard/segments/s1/vector_storage/matrix.dat", False),
        ("r--s", "/elsewhere/c/shard/segments/s1/vector_storage/matrix.dat", False),
        ("r--s", "/data/index/c/shard/segments/s1/payload_storage/page_0.dat", False),
    ],
)
def test_only_shared_read_only_original_vector_files_under_the_root_qualify(
    perms: str, path: str, released: bool
) -> None:
    assert _is_original_vectors(perms, path, "/data/index/") is released


def test_a_scan_of_an_on_disk_collection_is_unmapped_right_after(tmp_path: Path) -> None:
    """A filter small enough to be scanned reads the originals of every point it matches; the
    owner drops their pages after that search, not 1,000 searches later."""
    root = tmp_path / "index"
    index, ids, vectors = _index(root, every=1000)
    try:
        hits = index.search("c", vectors[0], filter=SearchFilter(modality=["CT"]), limit=10)
        assert index._filtered_plan(index._handle("c"), SearchFilter(modality=["CT"]), 10).exact
        assert hits[0].id == ids[0]
        assert _resident_kb(root, "/matrix.dat") < 200
    finally:
        index.close()
