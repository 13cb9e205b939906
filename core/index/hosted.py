"""The embedded store in a child process: `HostedEdgeIndex` forwards every call to an `EdgeIndex`
that a process of its own owns (`core.index.child`), and shares searches with search replicas
(`core.index.replica`).

Why: qdrant-edge-py holds the GIL through each call (`EdgeIndex.holds_gil`), so a server that
searches in its own process runs its Python (HTTP, validation, JSON) and its searches one at a
time on about one core. With the engine in a child process the two run side by side, and with
replicas searches run on more than one core. The cost is one local round trip per call.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from core.config import StoreSettings
from core.errors import CollectionNotFound, IndexStoreError, StoreFull, StoreUnavailable
from core.index.base import CollectionConfig, Hit, StoredPoint, VectorIndex
from core.index.child import IndexProcess
from core.index.replica import SearchReplicas
from core.metrics import PROCESS_SEARCHES, STORE_RESTARTS
from core.ownership import StoreLease
from core.payload import SearchFilter

__all__ = ["HostedEdgeIndex"]

logger = logging.getLogger(__name__)

_RESTARTING = "the store's process ended; a new one is starting: retry in a few seconds"
# An owner that ends sooner than this after its start is replaced after a growing pause.
_STABLE_AFTER_S = 60.0


class HostedEdgeIndex(VectorIndex):
    """An `EdgeIndex` under ``root`` owned by a child process; the same interface and errors.
    With ``store.search_replicas`` its searches are shared with replica processes
    (`core.index.replica`) while their copies are current.

    Its calls wait on a socket, which releases the GIL (``holds_gil`` is False): callers on an
    event loop run them in worker threads, or await the searches' `search_async` and
    `search_near_point_async`, which need none.
    """

    def __init__(self, root: Path, store: StoreSettings, *, lease: StoreLease | None = None) -> None:
        self._lease = lease
        self._closed = False
        # Every search resolves its collection (aliases, existence, config): answered here, not by
        # a round trip each. Exact, because every change to them goes through this object; a
        # change bumps the generation so that an answer fetched meanwhile is not kept.
        self._metadata: dict[tuple[str, ...], Any] = {}
        self._metadata_generation = 0
        self._metadata_lock = threading.Lock()
        self._root, self._store = Path(root), store
        self._owner = IndexProcess(self._root, store)
        self.process_id: int = self._owner.pid
        self._owner_started_at = time.monotonic()
        self._quick_ends = 0  # owners in a row that ended soon after their start
        self._restart_lock = threading.Lock()
        self._owner_running = threading.Event()  # cleared while a new owner is being started
        self._owner_running.set()
        self._wake_read, self._wake_write = os.pipe()
        self._watcher = threading.Thread(target=self._watch, name="store-watch", daemon=True)
        self._watcher.start()
        # A replica searches beside the owner on another core: none where there is no other.
        replicas = min(store.search_replicas, len(os.sched_getaffinity(0)) - 1)
        self._replicas = SearchReplicas(self._owner, self._root, store, replicas) if replicas > 0 else None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        owner = self._open_owner()
        try:
            return owner.call(method, *args, **kwargs)
        except IndexStoreError as exc:
            self._check_owner(owner, exc)
            raise

    def _open_owner(self) -> IndexProcess:
        if self._closed:
            raise IndexStoreError("the index is closed")
        if not self._owner_running.is_set():
            raise StoreUnavailable(_RESTARTING)
        return self._owner

    def _check_owner(self, owner: IndexProcess, exc: IndexStoreError) -> None:
        """Where ``exc`` says ``owner`` is gone (killed, out of memory): raise `StoreUnavailable`,
        and start a new owner on the same data in the background (once)."""
        if type(exc) is not IndexStoreError or owner.alive or self._closed:
            return  # the caller's mistake, or an error of the store's own
        self._begin_restart(owner)
        raise StoreUnavailable(_RESTARTING) from exc

    def _begin_restart(self, owner: IndexProcess) -> None:
        """Start replacing ``owner`` in the background, unless that has begun already."""
        with self._restart_lock:
            if owner is self._owner and self._owner_running.is_set() and not self._closed:
                self._owner_running.clear()
                restart = threading.Thread(target=self._restart, args=(owner,), name="store-restart")
                restart.daemon = True
                restart.start()

    def _watch(self) -> None:
        """Replace the owner as soon as its process ends (an out-of-memory kill at night), not
        when the next call finds it gone: the calls in between get no 503."""
        while True:
            owner = self._owner
            wait([owner.sentinel, self._wake_read])
            if self._closed:
                return
            self._begin_restart(owner)  # a call may have begun it already
            self._owner_running.wait()

    def _restart(self, ended: IndexProcess) -> None:
        """A new owner process in place of ``ended`` (`_start_owner`), then searches go to it. An
        owner that ended within a minute of its start is replaced at once the first time, then
        after 1 s, 2 s, ... up to a minute, so that a crash loop does not reopen the store
        back to back."""
        ended.close()  # reaped: its exit code is known
        quick = time.monotonic() - self._owner_started_at < _STABLE_AFTER_S
        self._quick_ends = self._quick_ends + 1 if quick else 0
        pause = min(2.0 ** (self._quick_ends - 2), 60.0) if self._quick_ends > 1 else 0.0
        logger.error(
            "the store's process (pid %s) ended with exit code %s; starting a new one%s",
            ended.pid,
            ended.exitcode,
            f" in {pause:.0f} s ({self._quick_ends} ended in a row within {_STABLE_AFTER_S:.0f} s of "
            "their start)"
            if pause
            else "",
        )
        time.sleep(pause)
        owner = self._start_owner()
        if owner is None:
            return
        with self._metadata_lock:
            self._metadata.clear()
            self._metadata_generation += 1
        if self._replicas is not None:
            self._replicas.owner = owner
        self._owner, self.process_id = owner, owner.pid
        self._owner_started_at = time.monotonic()
        self._owner_running.set()
        STORE_RESTARTS.labels("owner").inc()
        logger.warning("the store's new process is running (pid %s)", owner.pid)
        if self._closed:  # closed meanwhile: its close() saw the old owner
            owner.close()

    def _start_owner(self) -> IndexProcess | None:
        """A new owner process with the collections open, tried again (after 1 s, then doubling up
        to a minute) until it starts; None once this index is closed."""
        delay = 1.0
        while not self._closed:
            owner: IndexProcess | None = None
            try:
                owner = IndexProcess(self._root, self._store)
                owner.call("open_collections")
                return owner
            except Exception as exc:  # noqa: BLE001 - logged, tried again
                if owner is not None:
                    owner.close()
                logger.error("the store's new process did not start (%s); trying again in %.0f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 60.0)
        return None

    def _write(self, names: Sequence[str], method: str, *args: Any, **kwargs: Any) -> Any:
        """A call that changes the collections ``names``: their replicas' copies stop being used first."""
        if self._replicas is None:
            return self._call(method, *args, **kwargs)
        with self._replicas.writing(*names):
            try:
                return self._call(method, *args, **kwargs)
            except StoreFull:
                if not self._replicas.release_disk():
                    raise
                return self._call(method, *args, **kwargs)  # with the room the copies took

    def _search(self, method: str, name: str, *args: Any, **kwargs: Any) -> Any:
        """A search: on the replica `SearchReplicas.route` picks, else (or where that replica
        fails for a reason of its own) on the owner."""
        replica = self._replica_for(name)
        if replica is not None:
            try:
                result = replica.call(method, name, *args, **kwargs)
            except IndexStoreError as exc:
                self._replica_failed(name, replica, exc)
            else:
                PROCESS_SEARCHES.labels("replica").inc()
                return result
        result = self._call(method, name, *args, **kwargs)
        PROCESS_SEARCHES.labels("owner").inc()
        return result

    async def _search_async(self, method: str, name: str, *args: Any, **kwargs: Any) -> Any:
        """`_search` awaited on an event loop (`IndexProcess.call_async`)."""
        replica = self._replica_for(name)
        if replica is not None:
            try:
                result = await replica.call_async(method, name, *args, **kwargs)
            except IndexStoreError as exc:
                self._replica_failed(name, replica, exc)
            else:
                PROCESS_SEARCHES.labels("replica").inc()
                return result
        owner = self._open_owner()
        try:
            result = await owner.call_async(method, name, *args, **kwargs)
        except IndexStoreError as exc:
            self._check_owner(owner, exc)
            raise
        PROCESS_SEARCHES.labels("owner").inc()
        return result

    def _replica_for(self, name: str) -> IndexProcess | None:
        if self._replicas is None or self._closed:
            return None
        process = self._replicas.route(name, owner_down=not self._owner_running.is_set())
        return None if process is self._owner else process

    def _replica_failed(self, name: str, replica: IndexProcess, exc: IndexStoreError) -> None:
        """Stop using ``replica`` where it failed for a reason of its own (its process ended, the
        copy is gone); re-raise the caller's mistakes (a bad vector, filter, point id), which the
        owner would raise too."""
        if type(exc) not in (CollectionNotFound, IndexStoreError):
            raise exc
        assert self._replicas is not None
        self._replicas.failed(name, replica, exc)

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

    def _changing_metadata(self, names: Sequence[str], method: str, *args: Any, **kwargs: Any) -> None:
        try:
            self._write(names, method, *args, **kwargs)
        finally:
            with self._metadata_lock:
                self._metadata.clear()
                self._metadata_generation += 1

    @property
    def replicated_collections(self) -> list[str]:
        return [] if self._replicas is None else self._replicas.current()

    @property
    def metadata_generation(self) -> int:
        return self._metadata_generation

    @property
    def replica_process_ids(self) -> list[int]:
        """The search replica processes running now."""
        return [] if self._replicas is None else self._replicas.process_ids()

    # -- the VectorIndex interface, forwarded --------------------------------------------------

    def create_collection(self, config: CollectionConfig) -> None:
        self._changing_metadata([config.name], "create_collection", config)

    def drop_collection(self, name: str) -> None:
        self._changing_metadata([name], "drop_collection", name)

    def open_collections(self) -> None:
        self._call("open_collections")

    def list_collections(self) -> list[str]:
        result: list[str] = self._call("list_collections")
        return result

    def collection_exists(self, name: str) -> bool:
        return bool(self._cached("collection_exists", name))

    def collection_config(self, name: str) -> CollectionConfig:
        result: CollectionConfig = self._cached("collection_config", name)
        return result

    def update_metadata(self, name: str, metadata: dict[str, Any]) -> None:
        self._changing_metadata([name], "update_metadata", name, metadata)

    def upsert(
        self,
        name: str,
        ids: Sequence[str],
        vectors: NDArray[np.float32],
        payloads: Sequence[dict[str, Any]],
        *,
        insert_only: bool = False,
        labels_from: Mapping[str, str] | None = None,
    ) -> None:
        self._write(
            [name],
            "upsert",
            name,
            list(ids),
            np.asarray(vectors),
            list(payloads),
            insert_only=insert_only,
            labels_from=dict(labels_from) if labels_from else None,
        )

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
        result: list[Hit] = self._search(
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
        result: list[Hit] = self._search(
            "search_near_point",
            name,
            point_id,
            filter=filter,
            limit=limit,
            offset=offset,
            score_threshold=score_threshold,
        )
        return result

    async def search_async(
        self,
        name: str,
        vector: NDArray[np.float32],
        *,
        filter: SearchFilter | None = None,
        limit: int = 10,
        offset: int = 0,
        score_threshold: float | None = None,
        exclude_ids: Sequence[str] = (),
    ) -> list[Hit]:
        result: list[Hit] = await self._search_async(
            "search",
            name,
            np.asarray(vector),
            filter=filter,
            limit=limit,
            offset=offset,
            score_threshold=score_threshold,
            exclude_ids=tuple(exclude_ids),
        )
        return result

    async def search_near_point_async(
        self,
        name: str,
        point_id: str,
        *,
        filter: SearchFilter | None = None,
        limit: int = 10,
        offset: int = 0,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        result: list[Hit] = await self._search_async(
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
        self._write([name], "delete", name, list(ids))

    def delete_by_filter(self, name: str, filter: SearchFilter) -> None:
        self._write([name], "delete_by_filter", name, filter)

    def overwrite_payloads(
        self,
        name: str,
        payloads: Mapping[str, dict[str, Any]],
        *,
        labels_from: Mapping[str, str] | None = None,
    ) -> None:
        self._write(
            [name],
            "overwrite_payloads",
            name,
            dict(payloads),
            labels_from=dict(labels_from) if labels_from else None,
        )

    def register_source(self, name: str, source_name: str, uri: str) -> None:
        self._changing_metadata([name], "register_source", name, source_name, uri)

    def collection_info(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("collection_info", name)
        return result

    def aliases(self) -> dict[str, str]:
        result: dict[str, str] = self._cached("aliases")
        return dict(result)

    def set_alias(self, alias: str, collection: str) -> None:
        self._changing_metadata([], "set_alias", alias, collection)

    def delete_alias(self, alias: str) -> None:
        self._changing_metadata([], "delete_alias", alias)

    def optimize(self, name: str) -> None:
        self._call("optimize", name)

    supports_files = True

    def export_collection(self, name: str, target: str) -> int:
        return int(self._call("export_collection", name, target))

    def detach_collection(self, name: str, target: str) -> None:
        self._changing_metadata([name], "detach_collection", name, target)

    def attach_collection(self, source: str, config: CollectionConfig, *, move: bool = False) -> None:
        self._changing_metadata([config.name], "attach_collection", source, config, move=move)

    def close(self) -> None:
        """Stop the replicas and the child process (it closes its shards first); idempotent."""
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_write, b"x")
        self._owner_running.set()
        self._watcher.join(timeout=5)
        os.close(self._wake_read)
        os.close(self._wake_write)
        if self._replicas is not None:
            self._replicas.close()
        self._owner.close()
        if self._lease is not None:
            self._lease.close()  # after the child closed its shards
            self._lease = None
