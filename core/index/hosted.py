"""The embedded store in a child process: `HostedEdgeIndex` forwards every call to an `EdgeIndex`
that a process of its own owns.

Why: qdrant-edge-py holds the GIL through each call (`EdgeIndex.holds_gil`), so a server that
searches in its own process runs its Python (HTTP, validation, JSON) and its searches one at a
time on about one core. With the engine in a child process the two run side by side. The cost is
one local round trip per call: the arguments and the results are pickled over a Unix socket.

The parent opens one connection per concurrent caller and keeps it for reuse; the child answers
them one request at a time, exits when the parent closes the first connection (its lifeline) or
dies, and then closes its shards. Errors raised by the index are re-raised in the
parent as they are; an error that cannot cross (not picklable) becomes an `IndexStoreError`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Client, Connection, Listener, wait
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from core.config import StoreSettings
from core.errors import IndexStoreError
from core.index.base import CollectionConfig, Hit, StoredPoint, VectorIndex
from core.ownership import StoreLease
from core.payload import SearchFilter

__all__ = ["HostedEdgeIndex"]

logger = logging.getLogger(__name__)

# The calls the child answers: the VectorIndex interface, nothing else.
_METHODS = frozenset(
    {
        "create_collection",
        "drop_collection",
        "list_collections",
        "collection_exists",
        "collection_config",
        "update_metadata",
        "upsert",
        "search",
        "search_near_point",
        "retrieve",
        "count",
        "facet",
        "scroll_page",
        "delete",
        "delete_by_filter",
        "overwrite_payloads",
        "register_source",
        "collection_info",
        "aliases",
        "set_alias",
        "delete_alias",
        "optimize",
        "export_collection",
        "detach_collection",
        "attach_collection",
    }
)
_START_TIMEOUT_S = 120.0


def _crossable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else an `IndexStoreError` with its message."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return IndexStoreError(f"{type(exc).__name__}: {exc}")
    return exc


def _answer(conn: Connection, index: Any) -> bool:
    """Answer one request on ``conn``: (method, args, kwargs) in, ("ok", result) or ("err",
    error) out. False once the connection is closed."""
    try:
        method, args, kwargs = conn.recv()
    except (EOFError, OSError):
        return False
    try:
        if method not in _METHODS:
            raise IndexStoreError(f"the index process does not answer {method!r}")
        reply: tuple[str, Any] = ("ok", getattr(index, method)(*args, **kwargs))
    except Exception as exc:
        reply = ("err", _crossable(exc))
    try:
        conn.send(reply)
    except (EOFError, OSError):
        return False
    return True


def _serve(root: Path, store: StoreSettings, address: str, authkey: bytes, ready: Connection) -> None:
    """The child process: open the index, listen, answer until the lifeline closes.

    One thread answers every connection in turn: the engine holds the GIL anyway, and threads
    per connection would only hand it back and forth (measured: 4.7 ms of this process's CPU per
    search at 1 M points with 4 clients, engine included)."""
    from core.index.edge import EdgeIndex

    try:
        index = EdgeIndex(root, store)
        listener = Listener(address, family="AF_UNIX", authkey=authkey)
    except Exception as exc:
        ready.send(("err", _crossable(exc)))
        return
    ready.send(("ok", os.getpid()))
    ready.close()
    lifeline = listener.accept()  # nothing is ever sent on it: it ends when the parent does
    accepted: queue.SimpleQueue[Connection] = queue.SimpleQueue()
    wake_recv, wake_send = multiprocessing.Pipe(duplex=False)

    def accept_forever() -> None:
        while True:
            accepted.put(listener.accept())
            wake_send.send(None)

    threading.Thread(target=accept_forever, name="accept", daemon=True).start()
    connections: list[Connection] = []
    try:
        while True:
            for ready_conn in wait([lifeline, wake_recv, *connections]):
                if ready_conn is lifeline:
                    return
                if ready_conn is wake_recv:
                    wake_recv.recv()
                    connections.append(accepted.get())
                elif not _answer(ready_conn, index):  # type: ignore[arg-type]
                    connections.remove(ready_conn)  # type: ignore[arg-type]
    finally:
        try:
            index.close()  # releases the shards (their WAL locks) before the process ends
        finally:
            os._exit(0)


class HostedEdgeIndex(VectorIndex):
    """An `EdgeIndex` under ``root`` owned by a child process; the same interface and errors.

    Its calls wait on a socket, which releases the GIL (``holds_gil`` is False): callers on an
    event loop should run them in worker threads.
    """

    def __init__(self, root: Path, store: StoreSettings, *, lease: StoreLease | None = None) -> None:
        self._lease = lease
        self._dir = tempfile.mkdtemp(prefix="radsearch-index-")
        self._address = os.path.join(self._dir, "socket")
        self._authkey = os.urandom(32)
        self._idle: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        self._closed = False
        # Every search resolves its collection (aliases, existence, config): answered here, not by
        # a round trip each. Exact, because every change to them goes through this object; a
        # change bumps the generation so that an answer fetched meanwhile is not kept.
        self._metadata: dict[tuple[str, ...], Any] = {}
        self._metadata_generation = 0
        self._metadata_lock = threading.Lock()
        context = multiprocessing.get_context("spawn")
        ready_recv, ready_send = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_serve,
            args=(Path(root), store, self._address, self._authkey, ready_send),
            name="radsearch-index",
            daemon=True,
        )
        self._process.start()
        ready_send.close()
        try:
            if ready_recv.poll(_START_TIMEOUT_S):
                status, value = ready_recv.recv()
            else:
                status, value = (
                    "err",
                    IndexStoreError(f"the index process did not start within {_START_TIMEOUT_S:.0f} s"),
                )
        except EOFError:
            status, value = "err", IndexStoreError("the index process exited while starting")
        finally:
            ready_recv.close()
        if status == "err":
            self._stop(wait_s=5)
            raise value
        self._lifeline = self._connect()
        self.process_id: int = value
        logger.info("index process started pid=%s", value)

    def _connect(self) -> Connection:
        return Client(self._address, family="AF_UNIX", authkey=self._authkey)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise IndexStoreError("the index is closed")
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            try:
                conn = self._connect()
            except OSError as exc:
                raise IndexStoreError("the index process is not running") from exc
        try:
            conn.send((method, args, kwargs))
            status, value = conn.recv()
        except (EOFError, OSError) as exc:
            conn.close()
            raise IndexStoreError("the index process is not running") from exc
        self._idle.put(conn)
        if status == "err":
            raise value
        return value

    def _cached(self, method: str, *args: str) -> Any:
        key = (method, *args)
        with self._metadata_lock:
            if key in self._metadata:
                return self._metadata[key]
            generation = self._metadata_generation
        value = self._call(method, *args)
        with self._metadata_lock:
            if generation == self._metadata_generation:
                self._metadata[key] = value
        return value

    def _changing_metadata(self, method: str, *args: Any) -> None:
        try:
            self._call(method, *args)
        finally:
            with self._metadata_lock:
                self._metadata.clear()
                self._metadata_generation += 1

    # -- the VectorIndex interface, forwarded --------------------------------------------------

    def create_collection(self, config: CollectionConfig) -> None:
        self._changing_metadata("create_collection", config)

    def drop_collection(self, name: str) -> None:
        self._changing_metadata("drop_collection", name)

    def list_collections(self) -> list[str]:
        result: list[str] = self._call("list_collections")
        return result

    def collection_exists(self, name: str) -> bool:
        return bool(self._cached("collection_exists", name))

    def collection_config(self, name: str) -> CollectionConfig:
        result: CollectionConfig = self._cached("collection_config", name)
        return result

    def update_metadata(self, name: str, metadata: dict[str, Any]) -> None:
        self._changing_metadata("update_metadata", name, metadata)

    def upsert(
        self,
        name: str,
        ids: Sequence[str],
        vectors: NDArray[np.float32],
        payloads: Sequence[dict[str, Any]],
        *,
        insert_only: bool = False,
    ) -> None:
        self._call("upsert", name, list(ids), np.asarray(vectors), list(payloads), insert_only=insert_only)

    def search(
        self,
        name: str,
        vector: NDArray[np.float32],
        *,
        filter: SearchFilter | None = None,
        limit: int = 10,
        offset: int = 0,
        score_threshold: float | None = None,
        exclude_ids: Sequence[str] = (),
        exact: bool = False,
        hnsw_ef: int | None = None,
    ) -> list[Hit]:
        result: list[Hit] = self._call(
            "search",
            name,
            np.asarray(vector),
            filter=filter,
            limit=limit,
            offset=offset,
            score_threshold=score_threshold,
            exclude_ids=tuple(exclude_ids),
            exact=exact,
            hnsw_ef=hnsw_ef,
        )
        return result

    def search_near_point(
        self,
        name: str,
        point_id: str,
        *,
        filter: SearchFilter | None = None,
        limit: int = 10,
        offset: int = 0,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        # one round trip where the base class would make two (retrieve, then search)
        result: list[Hit] = self._call(
            "search_near_point",
            name,
            point_id,
            filter=filter,
            limit=limit,
            offset=offset,
            score_threshold=score_threshold,
        )
        return result

    def retrieve(self, name: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[StoredPoint]:
        result: list[StoredPoint] = self._call("retrieve", name, list(ids), with_vectors=with_vectors)
        return result

    def count(self, name: str, filter: SearchFilter | None = None) -> int:
        return int(self._call("count", name, filter))

    def facet(
        self,
        name: str,
        field: str,
        *,
        filter: SearchFilter | None = None,
        limit: int = 100,
        exact: bool = True,
    ) -> dict[str, int]:
        result: dict[str, int] = self._call("facet", name, field, filter=filter, limit=limit, exact=exact)
        return result

    def scroll_page(
        self,
        name: str,
        *,
        filter: SearchFilter | None = None,
        offset: Any = None,
        batch_size: int = 1000,
        with_vectors: bool = False,
    ) -> tuple[list[StoredPoint], Any]:
        page: tuple[list[StoredPoint], Any] = self._call(
            "scroll_page",
            name,
            filter=filter,
            offset=offset,
            batch_size=batch_size,
            with_vectors=with_vectors,
        )
        return page

    def delete(self, name: str, ids: Sequence[str]) -> None:
        self._call("delete", name, list(ids))

    def delete_by_filter(self, name: str, filter: SearchFilter) -> None:
        self._call("delete_by_filter", name, filter)

    def overwrite_payloads(self, name: str, payloads: Mapping[str, dict[str, Any]]) -> None:
        self._call("overwrite_payloads", name, dict(payloads))

    def register_source(self, name: str, source_name: str, uri: str) -> None:
        self._changing_metadata("register_source", name, source_name, uri)

    def collection_info(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("collection_info", name)
        return result

    def aliases(self) -> dict[str, str]:
        result: dict[str, str] = self._cached("aliases")
        return dict(result)

    def set_alias(self, alias: str, collection: str) -> None:
        self._changing_metadata("set_alias", alias, collection)

    def delete_alias(self, alias: str) -> None:
        self._changing_metadata("delete_alias", alias)

    def optimize(self, name: str) -> None:
        self._call("optimize", name)

    supports_files = True

    def export_collection(self, name: str, target: str) -> int:
        return int(self._call("export_collection", name, target))

    def detach_collection(self, name: str, target: str) -> None:
        self._changing_metadata("detach_collection", name, target)

    def attach_collection(self, source: str, config: CollectionConfig, *, move: bool = False) -> None:
        try:
            self._call("attach_collection", source, config, move=move)
        finally:
            with self._metadata_lock:
                self._metadata.clear()
                self._metadata_generation += 1

    def close(self) -> None:
        """Stop the child process (it closes its shards first); idempotent."""
        if self._closed:
            return
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                break
        self._lifeline.close()
        self._stop()
        if self._lease is not None:
            self._lease.close()  # after the child closed its shards
            self._lease = None

    def _stop(self, wait_s: float = 60) -> None:
        self._process.join(timeout=wait_s)
        if self._process.is_alive():
            logger.warning("index process did not exit; terminating it")
            self._process.terminate()
            self._process.join(timeout=10)
        shutil.rmtree(self._dir, ignore_errors=True)
