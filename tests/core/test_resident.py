"""Releasing the pages of the cold files of on-disk collections that searches mapped
(`core.index.resident`), on a real Qdrant Edge shard: the RSS they add goes, the results stay the
same, and the owner releases once its RSS has grown by ``store.release_mapped_mb``. Mapping in the
quantized vectors once the engine has loaded a shard, which does not pre-read them itself."""

from __future__ import annotations

import ctypes
import errno
import uuid
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as qe

from core.config import StoreSettings
from core.index import resident
from core.index.base import CollectionConfig
from core.index.edge import EdgeIndex
from core.index.resident import _is_cold, _is_hot, populate_hot_pages, release_cold_pages, resident_mb
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


def _index(root: Path, budget_mb: int) -> tuple[EdgeIndex, list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(N)]
    index = EdgeIndex(root, StoreSettings(release_mapped_mb=budget_mb))
    index.create_collection(
        CollectionConfig(name="c", dim=DIM, quantization="int8", on_disk=True, full_scan_threshold_kb=100)
    )
    index.upsert("c", ids, vectors, [{"modality": "CT"}] * N)
    index.optimize("c")
    return index, ids, vectors


def test_releasing_drops_the_resident_original_vectors_and_keeps_the_results(tmp_path: Path) -> None:
    root = tmp_path / "index"
    index, ids, vectors = _index(root, budget_mb=0)
    try:
        before = [index.search("c", vectors[j], limit=10) for j in range(0, N, 10)]
        mapped = _resident_kb(root, "/matrix.dat")
        assert mapped > 1000  # rescoring touched pages all over the 4 MB file
        assert release_cold_pages(root) >= 1
        assert _resident_kb(root, "/matrix.dat") < mapped / 10
        after = [index.search("c", vectors[j], limit=10) for j in range(0, N, 10)]
        assert [[h.id for h in hits] for hits in after] == [[h.id for h in hits] for hits in before]
    finally:
        index.close()


def test_the_owner_releases_once_its_rss_grew_by_the_budget(tmp_path: Path) -> None:
    """A 1 MB budget: the 4 MB file's pages that 400 searches mapped are released along the way;
    a budget larger than the file: they stay mapped (repeated queries find them)."""
    root = tmp_path / "index"
    index, ids, vectors = _index(root, budget_mb=1)
    try:
        for j in range(0, N, 10):
            index.search("c", vectors[j], limit=10)
        assert _resident_kb(root, "/matrix.dat") < 1200
    finally:
        index.close()
    index = EdgeIndex(root, StoreSettings(release_mapped_mb=512))
    try:
        for j in range(0, N, 10):
            index.search("c", vectors[j], limit=10)
        assert _resident_kb(root, "/matrix.dat") > 1000
    finally:
        index.close()


@pytest.mark.parametrize(
    ("perms", "path", "released", "populated"),
    [
        ("r--s", "/data/index/c/shard/segments/s1/vector_storage/matrix.dat", True, False),
        ("rw-s", "/data/index/c/shard/segments/s1/payload_storage/page_0.dat", True, False),
        ("rw-s", "/data/index/c/shard/wal/open-1", True, False),
        ("r--s", "/data/index/c/shard/segments/s1/vector_storage/quantized.data", False, True),
        ("r--p", "/data/index/c/shard/segments/s1/vector_storage/quantized.data", False, False),
        ("r--s", "/elsewhere/c/shard/segments/s1/vector_storage/quantized.data", False, False),
        ("r--s", "/data/index/c/shard/segments/s1/vector_index/links_compressed.bin", False, False),
        ("rw-s", "/data/index/c/shard/segments/s1/payload_storage/tracker.dat", False, False),
        ("rw-s", "/data/index/c/shard/segments/s1/payload_index/x-modality-map/page_0.dat", False, False),
        ("rw-s", "/data/index/c/shard/segments/s1/id_tracker.versions", False, False),
        ("r--p", "/data/index/c/shard/segments/s1/vector_storage/matrix.dat", False, False),
        ("rw-p", "/data/index/c/shard/wal/open-1", False, False),
        ("r--s", "/elsewhere/c/shard/segments/s1/vector_storage/matrix.dat", False, False),
    ],
)
def test_only_shared_mappings_under_the_root_qualify(
    perms: str, path: str, released: bool, populated: bool
) -> None:
    """Released: the cold files. Mapped in: the quantized vectors."""
    assert _is_cold(perms, path, "/data/index/") is released
    assert _is_hot(perms, path, "/data/index/") is populated


def test_a_scan_past_the_budget_is_released_right_after(tmp_path: Path) -> None:
    """A filter small enough to be scanned maps the originals of every point it matches (4 MB
    here, past the 1 MB budget): the owner drops their pages after that search."""
    root = tmp_path / "index"
    index, ids, vectors = _index(root, budget_mb=1)
    try:
        index.search("c", vectors[1], limit=10)  # the reference RSS
        hits = index.search("c", vectors[0], filter=SearchFilter(modality=["CT"]), limit=10)
        assert index._filtered_plan(index._handle("c"), SearchFilter(modality=["CT"]), 10).exact
        assert hits[0].id == ids[0]
        assert _resident_kb(root, "/matrix.dat") < 200
    finally:
        index.close()


def test_resident_mb_reads_this_process() -> None:
    status = Path("/proc/self/status").read_text()
    vm_rss_mb = int(status.split("VmRSS:")[1].split()[0]) / 1024
    assert abs(resident_mb() - vm_rss_mb) < 16
    assert resident_mb(Path("/nonexistent/statm")) == 0.0


def test_opening_an_on_disk_collection_releases_the_wal_it_replayed(tmp_path: Path) -> None:
    root = tmp_path / "index"
    index, _, _ = _index(root, budget_mb=64)
    index.close()
    index = EdgeIndex(root, StoreSettings(release_mapped_mb=64))
    try:
        assert index.count("c") == N
        assert _resident_kb(root / "c" / "shard" / "wal", "") < 64
    finally:
        index.close()


@pytest.mark.parametrize("on_disk", [False, True])
def test_an_in_ram_collection_holds_its_payloads_resident(tmp_path: Path, on_disk: bool) -> None:
    """Before any search, after the build and after a restart: an in-RAM collection's payload
    pages are resident (mapped on demand, each hit's payload was a page fault, and unmapped page
    cache is what a host's proactive reclaim drops first); an on-disk one's are not."""
    root = tmp_path / "index"
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    index = EdgeIndex(root, StoreSettings())
    index.create_collection(
        CollectionConfig(name="c", dim=DIM, quantization="int8", on_disk=on_disk, full_scan_threshold_kb=100)
    )
    payloads = [
        {"modality": "CT", "source": f"archive-{i % 7}", "key": f"study/{i:06d}.dcm"} for i in range(N)
    ]
    index.upsert("c", [str(uuid.UUID(int=i + 1)) for i in range(N)], vectors, payloads)
    index.optimize("c")
    try:
        after_build = _resident_kb(root, "/payload_storage/page_0.dat")
    finally:
        index.close()
    index = EdgeIndex(root, StoreSettings())
    try:
        assert index.count("c") == N
        after_open = _resident_kb(root, "/payload_storage/page_0.dat")
    finally:
        index.close()
    if on_disk:
        assert after_build < 64 and after_open < 64
    else:
        assert after_build >= 256 and after_open >= 256


def test_an_on_disk_collection_maps_its_quantized_vectors_once_the_engine_has_loaded_it(
    tmp_path: Path,
) -> None:
    """The engine leaves them unread (Memory.Cold: its pre-read came while its WAL replay's working
    memory was live, the peak RSS of an open); the owner maps them in after the build and after
    each open, so searches do not fault them in."""
    root = tmp_path / "index"
    index, _, vectors = _index(root, budget_mb=64)
    quantized_kb = (
        sum(p.stat().st_size for p in root.glob("c/shard/segments/*/vector_storage/quantized.data")) // 1024
    )
    assert quantized_kb >= N * DIM // 1024
    try:
        assert _resident_kb(root, "/quantized.data") >= quantized_kb * 0.9  # after the build
    finally:
        index.close()
    shard = qe.EdgeShard.load(str(root / "c" / "shard"))
    try:
        assert _resident_kb(root, "/quantized.data") < quantized_kb / 4  # the engine alone
        assert populate_hot_pages(root) >= 1
        assert _resident_kb(root, "/quantized.data") >= quantized_kb * 0.9
    finally:
        shard.close()
    index = EdgeIndex(root, StoreSettings(release_mapped_mb=64))
    try:
        assert index.search("c", vectors[0], limit=1)[0].score > 0.99
        assert _resident_kb(root, "/quantized.data") >= quantized_kb * 0.9  # after an open
    finally:
        index.close()


def test_populating_falls_back_to_reading_ahead_where_the_kernel_cannot_populate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before Linux 5.14 ``MADV_POPULATE_READ`` is EINVAL: the kernel is asked to read the pages
    ahead instead (``MADV_WILLNEED``), for that mapping and the rest."""
    maps = tmp_path / "maps"
    maps.write_text(
        "".join(
            f"7f00000{i}0000-7f00000{i}1000 r--s 00000000 fd:01 1 /data/index/c/shard/segments/s{i}/"
            "vector_storage/quantized.data\n"
            for i in range(2)
        )
        + "7f0000100000-7f0000101000 r--s 00000000 fd:01 1 /data/index/c/shard/wal/open-1\n"
    )
    calls: list[tuple[int, int]] = []

    def old_kernel_madvise(address: int, length: int, advice: int) -> int:
        calls.append((address, advice))
        if advice == resident._MADV_POPULATE_READ:
            ctypes.set_errno(errno.EINVAL)
            return -1
        ctypes.set_errno(0)
        return 0

    monkeypatch.setattr(resident, "_madvise", lambda: old_kernel_madvise)
    assert populate_hot_pages(Path("/data/index"), maps=maps) == 2
    populate, willneed = resident._MADV_POPULATE_READ, resident._MADV_WILLNEED
    assert calls == [(0x7F0000000000, populate), (0x7F0000000000, willneed), (0x7F0000010000, willneed)]
