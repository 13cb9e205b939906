"""`HostedEdgeIndex` beyond the shared contract (`test_index_contract.py` runs that against it too):
the child process owns the shards, gives them back when the parent closes it or dies, and answers
concurrent callers correctly."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import uvloop
from prometheus_client import REGISTRY

from core.config import StoreSettings
from core.errors import IndexStoreError, StoreUnavailable
from core.index.base import CollectionConfig
from core.index.child import IndexProcess
from core.index.edge import EdgeIndex
from core.index.hosted import HostedEdgeIndex
from core.payload import SearchFilter

DIM = 16
REPO_ROOT = Path(__file__).resolve().parents[2]


def _fill(index: HostedEdgeIndex | EdgeIndex, n: int = 200) -> np.ndarray:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index.create_collection(CollectionConfig(name="c", dim=DIM))
    ids = [str(uuid.UUID(int=i + 1)) for i in range(n)]
    index.upsert("c", ids, vectors, [{"modality": "CT"}] * n)
    return vectors


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie child of this process counts as gone once reaped by its parent's exit
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.05)
    return False


def test_close_stops_the_child_and_hands_back_the_shard(tmp_path: Path) -> None:
    hosted = HostedEdgeIndex(tmp_path, StoreSettings())
    _fill(hosted)
    pid = hosted.process_id
    hosted.close()
    hosted.close()  # idempotent
    assert _gone(pid, 10)
    local = EdgeIndex(tmp_path, StoreSettings())  # would fail with "open in another process"
    try:
        assert local.count("c") == 200
    finally:
        local.close()


def test_the_child_exits_and_frees_the_shard_when_its_parent_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(REPO_ROOT)!r})
        from core.config import StoreSettings
        from core.index.hosted import HostedEdgeIndex
        from tests.core.test_hosted_index import _fill
        index = HostedEdgeIndex(Path({str(tmp_path)!r}), StoreSettings())
        _fill(index)
        print(index.process_id, flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert _gone(child_pid, 15), "the index process outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    local = EdgeIndex(tmp_path, StoreSettings())
    try:
        assert local.count("c") == 200
    finally:
        local.close()


def test_a_failed_start_raises_the_childs_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(OSError):
        HostedEdgeIndex(not_a_dir, StoreSettings())


def test_concurrent_callers_get_their_own_answers(tmp_path: Path) -> None:
    hosted = HostedEdgeIndex(tmp_path, StoreSettings())
    try:
        vectors = _fill(hosted)
        expected = [int(np.argmax(vectors @ vectors[i])) + 1 for i in range(len(vectors))]
        wrong: list[int] = []

        def search(rows: range) -> None:
            for i in rows:
                hits = hosted.search("c", vectors[i], limit=1, exact=True)
                if uuid.UUID(hits[0].id).int != expected[i]:
                    wrong.append(i)

        threads = [threading.Thread(target=search, args=(range(k, 200, 4),)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert wrong == []
    finally:
        hosted.close()


def test_metadata_answers_follow_every_change_made_through_it(tmp_path: Path) -> None:
    hosted = HostedEdgeIndex(tmp_path, StoreSettings())
    try:
        _fill(hosted)
        assert hosted.aliases() == {} and hosted.collection_exists("c")
        hosted.set_alias("current", "c")
        assert hosted.aliases() == {"current": "c"}
        hosted.update_metadata("c", {"encoder": "x"})
        assert hosted.collection_config("c").metadata == {"encoder": "x"}
        hosted.delete_alias("current")
        hosted.drop_collection("c")
        assert hosted.aliases() == {} and not hosted.collection_exists("c")
    finally:
        hosted.close()


def test_searches_are_answered_while_a_copy_is_made_and_a_write_waits_for_it(tmp_path: Path) -> None:
    """A copy for a search replica (seconds at 1 M points) holds the collection's writes, never the
    store process: searches go on meanwhile, and a write to the collection waits for the copy."""
    hosted = HostedEdgeIndex(tmp_path, StoreSettings(search_replicas=0))
    try:
        vectors = _fill(hosted)
        # Ballast the copy must read and write whole, so that it takes long enough to search during.
        with open(tmp_path / "c" / "ballast", "wb") as ballast:
            block = np.random.default_rng(1).bytes(16 * 2**20)
            for _ in range(32):
                ballast.write(block)
        copied: list[float] = []
        written: list[float] = []

        def copy() -> None:
            started = time.perf_counter()
            hosted._call("export_collection", "c", str(tmp_path / "copy"))
            copied.append(time.perf_counter() - started)

        def write() -> None:
            hosted.upsert("c", [str(uuid.UUID(int=10_000))], vectors[:1], [{"modality": "MR"}])
            written.append(time.perf_counter())

        copier = threading.Thread(target=copy)
        copier.start()
        time.sleep(0.05)
        writer = threading.Thread(target=write)
        writer.start()
        latencies = []
        while copier.is_alive():
            started = time.perf_counter()
            assert hosted.search("c", vectors[3], limit=1)[0].id == str(uuid.UUID(int=4))
            latencies.append(time.perf_counter() - started)
        copier.join()
        copy_ended = time.perf_counter()
        writer.join()
        assert copied and written, "the copy or the write failed"
        # Searches were answered all along, each far quicker than the copy.
        assert len(latencies) >= 10, (copied, latencies)
        assert max(latencies) < copied[0] / 4, (copied, max(latencies))
        # The write waited for the copy (which holds the collection as it was) and then went in.
        assert written[0] >= copy_ended - 0.05
        assert hosted.count("c") == len(vectors) + 1
    finally:
        hosted.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_awaited_searches_leave_the_connection_fit_for_calls_from_threads(tmp_path: Path, loop: str) -> None:
    # The server's loop is uvloop, whose readers make a socket non-blocking: the connection an
    # awaited search used goes back to the pool, where the next call may be a blocking one.
    hosted = HostedEdgeIndex(tmp_path, StoreSettings())
    try:
        vectors = _fill(hosted)
        ids = [str(uuid.UUID(int=i + 1)) for i in range(len(vectors))]

        async def awaited() -> tuple[list[str], list[str], int]:
            by_vector = await hosted.search_async("c", vectors[3], limit=5)
            by_point = await hosted.search_near_point_async("c", ids[3], limit=5)
            nothing = await hosted.search_async("c", vectors[3], filter=SearchFilter(modality=["MR"]))
            return [h.id for h in by_vector], [h.id for h in by_point], len(nothing)

        by_vector, by_point, nothing = (uvloop.run if loop == "uvloop" else asyncio.run)(awaited())
        assert hosted.count("c") == 200  # a blocking read, on the connection the loop used
        assert by_vector == [h.id for h in hosted.search("c", vectors[3], limit=5)]
        assert by_vector[0] == ids[3]
        assert by_point == [h.id for h in hosted.search_near_point("c", ids[3], limit=5)]
        assert nothing == 0
    finally:
        hosted.close()


def test_a_cancelled_awaited_search_hands_its_answer_to_no_later_call(tmp_path: Path) -> None:
    hosted = HostedEdgeIndex(tmp_path, StoreSettings())
    try:
        vectors = _fill(hosted)
        ids = [str(uuid.UUID(int=i + 1)) for i in range(len(vectors))]

        async def cancel_then_search() -> str:
            cancelled = asyncio.create_task(hosted.search_async("c", vectors[0], limit=1))
            await asyncio.sleep(0)  # sent: its answer is due
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            return (await hosted.search_async("c", vectors[1], limit=1))[0].id

        assert asyncio.run(cancel_then_search()) == ids[1]
        assert hosted.search("c", vectors[2], limit=1)[0].id == ids[2]
    finally:
        hosted.close()


def test_a_child_that_dies_during_a_new_connections_handshake_is_reported_not_running(
    tmp_path: Path,
) -> None:
    """The child accepts a new connection and dies before the handshake (seen once in CI, as an
    `EOFError` that escaped a search routed to a killed replica): the caller gets
    `IndexStoreError`, which a replica's caller answers by going to the owner. The dying child
    is a socket that accepts and closes, at the child's address."""
    child = IndexProcess(tmp_path, StoreSettings(), role="search-replica-1")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        dying = str(tmp_path / "dying.sock")
        listener.bind(dying)
        listener.listen()

        def accept_and_die() -> None:
            conn, _ = listener.accept()
            conn.close()

        threading.Thread(target=accept_and_die, daemon=True).start()
        child._address = dying  # the next new connection goes to the dying "child"
        with pytest.raises(IndexStoreError, match="the search-replica-1 process is not running"):
            child.call("list_collections")
    finally:
        listener.close()
        child.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_awaited_calls_keep_one_connection_per_loop_and_close_those_of_ended_loops(tmp_path: Path) -> None:
    """Awaited calls reuse a connection that lives on their loop; a loop that ended (a test
    client's, an ``asyncio.run``) leaves its connection to be closed, without a warning (warnings
    are errors here) or a hang, and without one more file descriptor per loop."""
    child = IndexProcess(tmp_path, StoreSettings())
    try:

        async def twice() -> list[object]:
            return [await child.call_async("list_collections") for _ in range(2)]

        assert asyncio.run(twice()) == [[], []]
        before = _open_fds()
        for run in (asyncio.run, uvloop.run) * 10:
            assert run(twice()) == [[], []]
        assert _open_fds() <= before + 1  # the last loop's connection, closed by the next call
        assert child.call("list_collections") == []  # calls from threads have their own
    finally:
        child.close()


def test_loops_in_two_threads_get_their_own_answers(tmp_path: Path) -> None:
    hosted = HostedEdgeIndex(tmp_path, StoreSettings(search_replicas=0))
    try:
        vectors = _fill(hosted)
        ids = [str(uuid.UUID(int=i + 1)) for i in range(len(vectors))]
        found: dict[int, list[str]] = {}

        def searches(first: int) -> None:
            async def run() -> list[str]:
                hits = [await hosted.search_async("c", vectors[i], limit=1) for i in range(first, 200, 2)]
                return [h[0].id for h in hits]

            found[first] = uvloop.run(run()) if first else asyncio.run(run())

        threads = [threading.Thread(target=searches, args=(first,)) for first in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert found == {first: ids[first:200:2] for first in (0, 1)}
    finally:
        hosted.close()


def test_awaited_calls_larger_than_the_sockets_buffer_both_ways(tmp_path: Path) -> None:
    """A request the socket's buffer cannot take at once is written whole; an answer that comes
    in many reads is read whole (here the child's error naming an 8 MB method name)."""
    child = IndexProcess(tmp_path, StoreSettings())
    try:
        method = "x" * 8_000_000

        async def call() -> str:
            with pytest.raises(IndexStoreError) as raised:
                await child.call_async(method)
            return str(raised.value)

        assert uvloop.run(call()) == f"the index process does not answer {method!r}"
        assert asyncio.run(child.call_async("list_collections")) == []
    finally:
        child.close()


def test_an_awaited_call_to_a_killed_child_reports_it_not_running(tmp_path: Path) -> None:
    """The child dies while the loop's connection is idle: the next call gets `IndexStoreError`
    (which a replica's caller answers by going to the owner), never a hang."""
    child = IndexProcess(tmp_path, StoreSettings())
    try:

        async def call_then_kill() -> None:
            assert await child.call_async("list_collections") == []
            os.kill(child.pid, signal.SIGKILL)
            assert _gone(child.pid, 10)
            with pytest.raises(IndexStoreError, match="not running"):
                await asyncio.wait_for(child.call_async("list_collections"), 10)

        uvloop.run(call_then_kill())
        assert not child.alive
    finally:
        child.close()


def _restarts() -> float:
    return REGISTRY.get_sample_value("radsearch_store_process_restarts_total", {"process": "owner"}) or 0.0


def test_a_killed_store_process_is_replaced_and_answers_as_before(tmp_path: Path) -> None:
    """The store's process is the largest, the one an out-of-memory kill picks. Calls get
    `StoreUnavailable` (503) at once, never a hang, while a new process opens the same data in the
    background; then the same answers, and writes go on."""
    hosted = HostedEdgeIndex(tmp_path, StoreSettings(search_replicas=0))
    restarts = _restarts()
    try:
        vectors = _fill(hosted)
        before = [h.id for h in hosted.search("c", vectors[5], limit=5)]
        first = hosted.process_id
        # named for ps, top and the kernel's out-of-memory line, not "python"
        assert Path(f"/proc/{first}/comm").read_text().strip() == "radsearch-index"
        os.kill(first, signal.SIGKILL)
        assert _gone(first, 10)
        with pytest.raises(StoreUnavailable, match="a new one is starting"):
            asyncio.run(hosted.search_async("c", vectors[5], limit=5))  # the API's searches
        deadline = time.monotonic() + 60
        while True:
            try:
                after = [h.id for h in hosted.search("c", vectors[5], limit=5)]
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "no new store process after 60 s"
                time.sleep(0.2)
        assert after == before
        assert hosted.process_id != first
        assert _restarts() == restarts + 1
        assert asyncio.run(hosted.search_async("c", vectors[7], limit=1))[0].id == str(uuid.UUID(int=8))
        hosted.delete("c", [str(uuid.UUID(int=8))])
        assert hosted.count("c") == 199
    finally:
        hosted.close()


def _replaced(hosted: HostedEdgeIndex, pid: int, restarts: float) -> None:
    deadline = time.monotonic() + 60
    while hosted.process_id == pid or _restarts() < restarts:
        assert time.monotonic() < deadline, "no new store process 60 s after the kill, with no call"
        time.sleep(0.1)


def test_a_store_process_that_ends_between_calls_is_replaced_before_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An owner killed while nothing calls (out of memory at night) is replaced at once, by the
    index's watch on the process: the next call finds the new one, and no caller sees a 503. One
    that ends again soon after its start is replaced after a pause (no crash loop at full speed)."""
    threads_before = set(threading.enumerate())
    hosted = HostedEdgeIndex(tmp_path, StoreSettings(search_replicas=0))
    restarts = _restarts()
    try:
        vectors = _fill(hosted)
        before = [h.id for h in hosted.search("c", vectors[3], limit=5)]
        first = hosted.process_id
        with caplog.at_level(logging.ERROR, logger="core.index.hosted"):
            os.kill(first, signal.SIGKILL)
            _replaced(hosted, first, restarts + 1)
            assert [h.id for h in hosted.search("c", vectors[3], limit=5)] == before
            second = hosted.process_id
            os.kill(second, signal.SIGKILL)
            _replaced(hosted, second, restarts + 2)
        ends = [r.getMessage() for r in caplog.records if "ended with exit code -9" in r.getMessage()]
        assert ends[0].endswith("starting a new one"), ends
        assert ends[1].endswith("starting a new one in 1 s (2 ended in a row within 60 s of their start)")
        assert _restarts() == restarts + 2
        assert [h.id for h in hosted.search("c", vectors[3], limit=5)] == before
        hosted.upsert("c", [str(uuid.UUID(int=1000))], vectors[:1], [{"modality": "MR"}])
        assert hosted.count("c") == 201
    finally:
        hosted.close()
    assert not [t.name for t in set(threading.enumerate()) - threads_before if t.is_alive()]  # no watch left
