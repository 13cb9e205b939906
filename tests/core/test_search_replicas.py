"""Search replicas (`core.index.replica`) behind `HostedEdgeIndex`: real owner and replica
processes on real shards. A copy shares searches only while it is current, so a write, a deletion
or a dropped and re-created collection is seen by the very next search."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from core.config import StoreSettings
from core.errors import IndexStoreError, StoreUnavailable
from core.index.base import CollectionConfig
from core.index.child import IndexProcess
from core.index.edge import EdgeIndex
from core.index.hosted import HostedEdgeIndex
from core.index.replica import SearchReplicas, replicas_dir
from tests.core.disk import fill_disk

DIM = 16
N = 300
QUIET_S = 0.3
RESERVE_MB = 64
# Searches at once: enough for the owner to have a queue, which is when a replica takes one.
THREADS = 6


def _vectors(n: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _ids(n: int, start: int = 1) -> list[str]:
    return [str(uuid.UUID(int=start + i)) for i in range(n)]


def _fill(index: HostedEdgeIndex | EdgeIndex, name: str = "c", seed: int = 0) -> np.ndarray:
    vectors = _vectors(N, seed)
    index.create_collection(CollectionConfig(name=name, dim=DIM))
    index.upsert(name, _ids(N), vectors, [{"modality": "CT" if i % 2 else "MR"} for i in range(N)])
    return vectors


def _replica_searches() -> float:
    return REGISTRY.get_sample_value("radsearch_store_process_searches_total", {"process": "replica"}) or 0.0


def _wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _replicated(index: HostedEdgeIndex, query: np.ndarray, name: str = "c") -> None:
    """Search ``name`` from several threads (searches that queue on the owner ask for a copy)
    until the replicas hold a current one."""
    _search_until(lambda _: _search_a_while(index, name, query), lambda: name in index.replicated_collections)


def _search_a_while(index: HostedEdgeIndex, name: str, query: np.ndarray) -> None:
    for _ in range(20):
        index.search(name, query, limit=1)


@pytest.fixture
def hosted(tmp_path: Path) -> Iterator[HostedEdgeIndex]:
    index = HostedEdgeIndex(tmp_path, StoreSettings(search_replicas=1, search_replica_quiet_s=QUIET_S))
    try:
        yield index
    finally:
        index.close()


def _search_until(
    work: Callable[[int], None], condition: Callable[[], bool], *, threads: int = THREADS, timeout: float = 60
) -> None:
    """Run ``work`` in threads again and again until ``condition`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        _in_threads(work, threads)
        if condition():
            return
        assert time.monotonic() < deadline, "timed out"


def _in_threads(work: Callable[[int], None], threads: int = THREADS) -> None:
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]


def test_a_searched_collection_is_copied_and_its_searches_shared(
    hosted: HostedEdgeIndex, tmp_path: Path
) -> None:
    vectors = _fill(hosted)
    expected = {i: hosted.search("c", vectors[i], limit=5, exact=True) for i in range(40)}
    _replicated(hosted, vectors[0])
    assert (replicas_dir(tmp_path) / "1" / "c" / "collection.json").is_file()
    before = _replica_searches()
    wrong: list[int] = []

    def search(worker: int) -> None:
        for _ in range(5):
            for i in range(worker, 40, THREADS):
                if hosted.search("c", vectors[i], limit=5, exact=True) != expected[i]:
                    wrong.append(i)

    _in_threads(search)
    assert not wrong
    assert _replica_searches() > before, "no search reached the replica"
    by_point = hosted.search_near_point("c", _ids(1)[0], limit=3)
    assert [hit.id for hit in by_point] == [hit.id for hit in expected[0][1:4]]


def test_every_write_is_seen_by_the_next_search(hosted: HostedEdgeIndex) -> None:
    vectors = _fill(hosted)
    for round_ in range(8):
        _replicated(hosted, vectors[0])  # each round writes while the replica holds a current copy
        new_id = _ids(1, start=10_000 + round_)[0]
        _write_and_check(hosted, new_id, _vectors(1, seed=100 + round_)[0])
    # The refreshed copy holds the deletions too.
    _replicated(hosted, vectors[0])
    before = _replica_searches()
    added = {_ids(1, start=10_000 + round_)[0] for round_ in range(8)}

    def search_a_while(_: int) -> None:  # long enough for searches to queue and reach the replica
        for _ in range(20):
            _assert(not added & {hit.id for hit in hosted.search("c", vectors[0], limit=N)})

    _in_threads(search_a_while)
    assert _replica_searches() > before


def _write_and_check(hosted: HostedEdgeIndex, new_id: str, query: np.ndarray) -> None:
    """An insert, a relabel and a deletion, each checked by searches in several threads at once (a
    lone search goes to the owner)."""
    hosted.upsert("c", [new_id], query[None, :], [{"modality": "US"}])
    _in_threads(lambda _: _assert(hosted.search("c", query, limit=1)[0].id == new_id))
    hosted.overwrite_payloads("c", {new_id: {"modality": "PET"}})
    _in_threads(lambda _: _assert(hosted.search("c", query, limit=1)[0].payload["modality"] == "PET"))
    hosted.delete("c", [new_id])
    _in_threads(lambda _: _assert(new_id not in {hit.id for hit in hosted.search("c", query, limit=10)}))


def _assert(condition: bool) -> None:
    assert condition


def test_a_dropped_and_recreated_collection_is_never_answered_from_the_old_copy(
    hosted: HostedEdgeIndex,
) -> None:
    old = _fill(hosted)
    _replicated(hosted, old[0])
    hosted.drop_collection("c")
    new = _fill(hosted, seed=1)

    def search(worker: int) -> None:
        for i in range(worker, 40, THREADS):
            assert hosted.search("c", new[i], limit=1)[0].score == pytest.approx(1.0, abs=1e-3)
            assert hosted.search("c", old[i], limit=1)[0].score < 0.99

    _in_threads(search)
    _replicated(hosted, new[0])
    before = _replica_searches()
    _search_until(search, lambda: _replica_searches() > before)


def test_a_replica_that_dies_leaves_searches_to_the_owner_until_a_new_one_holds_a_copy(
    hosted: HostedEdgeIndex,
) -> None:
    vectors = _fill(hosted)
    _replicated(hosted, vectors[0])
    (replica_pid,) = hosted.replica_process_ids
    assert Path(f"/proc/{replica_pid}/comm").read_text().strip() == "radsearch-rep1"
    os.kill(replica_pid, signal.SIGKILL)
    expected = _ids(N)

    def search(worker: int) -> None:
        for i in range(worker, 60, THREADS):
            assert hosted.search("c", vectors[i], limit=1)[0].id == expected[i]

    # Searches go on, on the owner, until one routed to the replica finds it gone.
    _search_until(search, lambda: replica_pid not in hosted.replica_process_ids)
    _replicated(hosted, vectors[0])
    assert hosted.replica_process_ids and hosted.replica_process_ids != [replica_pid]
    before = _replica_searches()
    _search_until(search, lambda: _replica_searches() > before)


def test_awaited_searches_are_shared_with_the_replica_and_outlive_it(hosted: HostedEdgeIndex) -> None:
    # The API's plain searches are awaited on its event loop (`search_async`), several at a time.
    vectors = _fill(hosted)
    expected = _ids(N)

    async def at_once() -> None:
        for start in range(0, 60, THREADS):
            wanted = range(start, start + THREADS)
            found = await asyncio.gather(*(hosted.search_async("c", vectors[i], limit=1) for i in wanted))
            assert [hits[0].id for hits in found] == [expected[i] for i in wanted]

    def awaited(_: int) -> None:
        asyncio.run(at_once())

    _search_until(awaited, lambda: "c" in hosted.replicated_collections, threads=1)
    before = _replica_searches()
    _search_until(awaited, lambda: _replica_searches() > before, threads=1)
    (replica_pid,) = hosted.replica_process_ids
    os.kill(replica_pid, signal.SIGKILL)
    # Answered all along, by the owner once an awaited search finds the replica gone.
    _search_until(awaited, lambda: replica_pid not in hosted.replica_process_ids, threads=1)


def test_no_room_for_a_copy_leaves_searches_to_the_owner(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    filler = EdgeIndex(tmp_path, StoreSettings())
    vectors = _fill(filler)
    filler.close()
    # A reserve no disk keeps: reads and searches go on, a copy (like a write) is refused.
    store = StoreSettings(search_replicas=1, search_replica_quiet_s=0.0, min_free_mb=10**9)
    hosted = HostedEdgeIndex(tmp_path, store)
    try:
        with caplog.at_level("WARNING", logger="core.index.replica"):
            _search_until(
                lambda _: _search_a_while(hosted, "c", vectors[0]), lambda: "not refreshed" in caplog.text
            )
        assert "the reserve is" in caplog.text
        assert hosted.replicated_collections == []
        assert hosted.search("c", vectors[3], limit=1)[0].id == _ids(N)[3]
        assert not any(replicas_dir(tmp_path).glob("*/c"))
    finally:
        hosted.close()


def test_searches_one_at_a_time_get_no_copy(tmp_path: Path) -> None:
    hosted = HostedEdgeIndex(tmp_path, StoreSettings(search_replicas=1, search_replica_quiet_s=0.0))
    try:
        vectors = _fill(hosted)
        for _ in range(40):
            hosted.search("c", vectors[0], limit=1)
            time.sleep(0.05)
        assert hosted.replicated_collections == []
        assert hosted.replica_process_ids == []
        _replicated(hosted, vectors[0])  # searches that queue do get one
    finally:
        hosted.close()


def test_without_replicas_nothing_is_copied(tmp_path: Path) -> None:
    hosted = HostedEdgeIndex(tmp_path, StoreSettings(search_replicas=0, search_replica_quiet_s=0.0))
    try:
        vectors = _fill(hosted)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            _in_threads(lambda _: _search_a_while(hosted, "c", vectors[0]))
        assert hosted.replicated_collections == []
        assert not replicas_dir(tmp_path).exists()
    finally:
        hosted.close()


def test_close_removes_the_copies(tmp_path: Path) -> None:
    hosted = HostedEdgeIndex(tmp_path, StoreSettings(search_replicas=1, search_replica_quiet_s=QUIET_S))
    vectors = _fill(hosted)
    _replicated(hosted, vectors[0])
    hosted.close()
    assert not replicas_dir(tmp_path).exists()
    reopened = EdgeIndex(tmp_path, StoreSettings())
    try:
        assert reopened.list_collections() == ["c"]
        assert reopened.count("c") == N
    finally:
        reopened.close()


def test_a_write_refused_for_want_of_disk_gets_the_room_the_copies_took(
    small_disk: Callable[[int], Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = small_disk(400) / "index"
    store = StoreSettings(search_replicas=1, search_replica_quiet_s=QUIET_S, min_free_mb=RESERVE_MB)
    hosted = HostedEdgeIndex(root, store)
    try:
        vectors = _fill(hosted)
        _replicated(hosted, vectors[0])
        copy = next(replicas_dir(root).glob("*/c"))
        fill_disk(root.parent, leave_mb=RESERVE_MB + 0.2)  # less than the next write needs
        extra = _vectors(200, seed=7)
        with caplog.at_level("WARNING", logger="core.index.replica"):
            hosted.upsert("c", _ids(200, start=5_000), extra, [{"modality": "US"}] * 200)
        assert "dropped their copies of c to make room for a write" in caplog.text
        assert not copy.exists()
        assert hosted.replicated_collections == []
        assert hosted.count("c") == N + 200
        assert hosted.search("c", extra[0], limit=1)[0].id == _ids(1, start=5_000)[0]
    finally:
        hosted.close()


def test_two_replicas_copy_both_and_a_replacement_leaves_the_other_whole(tmp_path: Path) -> None:
    """More replicas than this machine's cores allow through `HostedEdgeIndex`, built directly."""
    store = StoreSettings(search_replica_quiet_s=QUIET_S)
    owner = IndexProcess(tmp_path, store)
    replicas = SearchReplicas(owner, tmp_path, store, 2)
    try:
        vectors = _vectors(N, 0)
        owner.call("create_collection", CollectionConfig(name="c", dim=DIM))
        owner.call("upsert", "c", _ids(N), vectors, [{"modality": "CT"}] * N)

        def search(_: int) -> None:
            """As `HostedEdgeIndex` searches, with two more searches waiting on the owner."""
            with owner._busy_lock:  # the keeper's calls on the owner count too
                owner.busy += 2
            try:
                process = replicas.route("c")
            finally:
                with owner._busy_lock:
                    owner.busy -= 2
            try:
                hits = process.call("search", "c", vectors[5], limit=1)
            except IndexStoreError as exc:
                replicas.failed("c", process, exc)
                hits = owner.call("search", "c", vectors[5], limit=1)
            assert hits[0].id == _ids(N)[5]

        _search_until(search, lambda: replicas.current() == ["c"], threads=1)
        first, second = replicas.process_ids()
        for number in (1, 2):
            assert (replicas_dir(tmp_path) / str(number) / "c" / "collection.json").is_file()
        os.kill(first, signal.SIGKILL)
        _search_until(
            search, lambda: first not in replicas.process_ids() and replicas.current() == ["c"], threads=1
        )
        assert second in replicas.process_ids() and len(replicas.process_ids()) == 2
        for number in (1, 2):
            assert (replicas_dir(tmp_path) / str(number) / "c" / "collection.json").is_file()
    finally:
        replicas.close()
        owner.close()


def test_while_a_killed_owner_is_replaced_searches_go_to_a_current_copy(hosted: HostedEdgeIndex) -> None:
    """The owner's process ended and a new one is starting: a collection whose copy is current is
    still searched, on the replica, rather than answered `StoreUnavailable`."""
    vectors = _fill(hosted)
    _replicated(hosted, vectors[3])
    expected = [h.id for h in hosted.search("c", vectors[3], limit=5)]
    owner = hosted.process_id
    os.kill(owner, signal.SIGKILL)
    with pytest.raises(StoreUnavailable):
        hosted.count("c")  # the owner's own call finds it gone: a new one is starting
    before = _replica_searches()
    assert [h.id for h in hosted.search("c", vectors[3], limit=5)] == expected
    assert [h.id for h in asyncio.run(hosted.search_async("c", vectors[3], limit=5))] == expected
    assert _replica_searches() == before + 2
    _wait_for(lambda: hosted.process_id != owner)
    assert hosted.count("c") == len(vectors)
