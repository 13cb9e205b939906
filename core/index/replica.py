"""Search replicas: copies of built collections in processes of their own, so that searches use
more than one core.

qdrant-edge-py holds the GIL for a whole search, and one process owns a shard, so the store's
owner searches on one core whatever the number of threads (1 M x 512, Zen 3: 257 searches/s in one
process, 463 in two processes on two copies; bench/RESULTS.md, session 11). A replica is another
`IndexProcess` with a directory of its own (``<index dir>/.replicas/<n>``) holding a copy of each
collection that is searched, taken through the owner's `export_collection` (sparse, consistent,
`StoreFull` where the disk cannot hold it) and opened before any search is sent to it. The one-owner
rule holds: no two processes open the same shard.

A copy is used only while it is current. Every write through the owner (`writing`) bumps its
collection's change counter before it is sent, so a search that starts after a write started goes
to the owner; a search already under way on a replica may miss that write, as it would on the owner
had it run a moment earlier. A copy records the counter it was taken at, after the writes then in
flight ended; it is current while the counter has not moved. Deletions and relabels are writes, so
a deleted image is never found through a replica.

The keeper thread refreshes copies: for a collection whose searches queued on the owner (two in
flight) while its copy was stale, once it has had no write for ``search_replica_quiet_s`` and its
index is built (a copy of an unbuilt collection would be searched by full scan). Meanwhile the owner
answers alone, as without replicas. The cost: each replica holds as much memory and disk as the
collections it copies, so a store searched by one user at a time gets no copy.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from core.config import StoreSettings
from core.errors import CollectionNotFound, IndexStoreError
from core.index.child import IndexProcess

__all__ = ["SearchReplicas", "replicas_dir"]

logger = logging.getLogger(__name__)

# How often the keeper looks for stale copies of searched collections.
_CHECK_S = 1.0
# After a failed refresh (no room on disk, a replica that would not start), the wait before the next.
_RETRY_S = 60.0
# A collection is copied once one of its searches finds this many in flight on the owner (this
# one included): one user searching at a time never pays for a copy.
_QUEUE_FOR_A_COPY = 2
# While a collection's index is being built, how often the keeper asks whether it is done.
_BUILDING_RECHECK_S = 5.0
# After the copies were dropped to make room for a write, the wait before the next copy.
_DISK_PAUSE_S = 600.0


def replicas_dir(root: Path) -> Path:
    """Where the replicas of the store under ``root`` keep their copies (not a collection name)."""
    return Path(root) / ".replicas"


class SearchReplicas:
    """``count`` replicas of the store that ``owner`` runs under ``root``: `route` picks the
    process for a search, `writing` wraps every write, and a keeper thread keeps the copies current."""

    def __init__(self, owner: IndexProcess, root: Path, store: StoreSettings, count: int) -> None:
        self.owner = owner
        self._store = store
        self._count = count
        self._dir = replicas_dir(root)
        shutil.rmtree(self._dir, ignore_errors=True)  # a previous owner's copies, of unknown age
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._changed: dict[str, int] = {}  # collection -> counter at its last write's start
        self._writes: dict[str, int] = {}  # collection -> writes in flight
        self._last_write: dict[str, float] = {}  # collection -> monotonic end of its last write
        self._copies: dict[str, int] = {}  # collection -> the counter the replicas' copies hold
        self._held: set[str] = set()  # collections the replicas hold a copy of, current or not
        self._paused_until = 0.0
        self._wanted: set[str] = set()  # searched collections without a current copy
        self._retry_at: dict[str, float] = {}
        self._processes: list[IndexProcess] = []
        self._stopping = threading.Event()
        self._keeper = threading.Thread(target=self._keep, name="search-replicas", daemon=True)
        self._keeper.start()

    # -- the request path ----------------------------------------------------------------------

    def _current(self, name: str) -> bool:
        return name in self._copies and self._copies[name] == self._changed.get(name, 0)

    def route(self, name: str, *, owner_down: bool = False) -> IndexProcess:
        """The process to search ``name`` in: while the replicas' copies are current, the least
        busy replica once the owner has two more searches in flight than it (at once while
        ``owner_down``: its process ended and a new one is starting), else the owner.

        Overflow rather than turns: at 4 clients on 2 cores, taking turns was 8 % slower than no
        replica (331 against 369 QPS, 1 M points, three runs each), as every search then paid a
        sleeping process's wake-up and the cache of a second copy; overflow matched it and gained
        where searches queue (bench/RESULTS.md, session 12)."""
        with self._lock:
            if not self._current(name):
                if self.owner.busy + 1 >= _QUEUE_FOR_A_COPY:  # this search included
                    self._wanted.add(name)
                return self.owner
            replica = min(self._processes, key=lambda process: process.busy)
        return replica if owner_down or replica.busy + 1 < self.owner.busy else self.owner

    def failed(self, name: str, replica: IndexProcess, exc: BaseException) -> None:
        """A search on ``replica`` failed for a reason of its own (its process ended, the copy is
        gone): its copies stop being used; the keeper replaces a process that ended."""
        logger.warning("search replica %s failed on collection %s: %s", replica.pid, name, exc)
        with self._lock:
            self._copies.clear()
            ended = replica in self._processes and not replica.alive
            if ended:
                self._processes.remove(replica)
        if ended:
            replica.close()

    @contextlib.contextmanager
    def writing(self, *names: str) -> Iterator[None]:
        """Around a write to ``names``: their copies stop being current before it is sent."""
        with self._lock:
            for name in names:
                self._changed[name] = next(self._counter)
                self._writes[name] = self._writes.get(name, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                for name in names:
                    self._writes[name] -= 1
                    self._last_write[name] = time.monotonic()

    def release_disk(self) -> bool:
        """Drop every copy (a write was refused for want of disk: the owner's data comes first);
        no new copy for a while. False when the replicas held none."""
        with self._lock:
            held, self._held = sorted(self._held), set()
            self._copies.clear()
            self._wanted.update(held)
            self._paused_until = time.monotonic() + _DISK_PAUSE_S
            processes = list(self._processes)
        for name in held:
            self._drop_copies(name, processes)
        if held:
            logger.warning(
                "search replicas dropped their copies of %s to make room for a write; the owner "
                "answers their searches alone for the next %.0f s",
                ", ".join(held),
                _DISK_PAUSE_S,
            )
        return bool(held)

    def process_ids(self) -> list[int]:
        """The replica processes running now."""
        with self._lock:
            return [process.pid for process in self._processes]

    def current(self) -> list[str]:
        """The collections whose searches replicas share now."""
        with self._lock:
            return sorted(name for name in self._copies if self._current(name))

    # -- the keeper ------------------------------------------------------------------------------

    def _keep(self) -> None:
        while not self._stopping.wait(_CHECK_S):
            for name in self._due():
                if self._stopping.is_set():
                    return
                try:
                    self._refresh(name)
                except CollectionNotFound:
                    self._forget(name)
                except Exception as exc:  # noqa: BLE001 - searches go on on the owner; retried later
                    if self._stopping.is_set():
                        return
                    logger.warning("search replica of collection %s not refreshed: %s", name, exc)
                    with self._lock:
                        self._retry_at[name] = time.monotonic() + _RETRY_S

    def _due(self) -> list[str]:
        """Searched collections whose copy is stale, without writes in flight or for the quiet
        time, and not waiting to retry."""
        now = time.monotonic()
        quiet_s = self._store.search_replica_quiet_s
        with self._lock:
            return sorted(
                name
                for name in self._wanted
                if not self._current(name)
                and not self._writes.get(name)
                and now - self._last_write.get(name, -quiet_s) >= quiet_s
                and now >= max(self._retry_at.get(name, 0.0), self._paused_until)
            )

    def _refresh(self, name: str) -> None:
        """Copy ``name`` from the owner into every replica, then open it there."""
        if self.owner.call("collection_info", name)["status"] != "green":
            with self._lock:  # an index build is due or running: copy what it builds
                self._retry_at[name] = time.monotonic() + _BUILDING_RECHECK_S
            return
        config = self.owner.call("collection_config", name)
        with self._lock:
            if self._writes.get(name):
                return
            taken_at = self._changed.get(name, 0)
        self._start_processes()
        with self._lock:
            processes = list(self._processes)
        started = time.perf_counter()
        staging = self._dir / f".incoming-{name}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            points = self.owner.call("export_collection", name, str(staging))
            self._drop_copies(name, processes)  # the stale ones
            with self._lock:
                self._held.add(name)
            for i, replica in enumerate(processes):
                last = i == len(processes) - 1
                replica.call("attach_collection", str(staging), config, move=last)
                replica.call("collection_info", name)  # opens the shard before a search waits on it
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        with self._lock:
            if self._changed.get(name, 0) == taken_at:
                self._copies[name] = taken_at
                self._wanted.discard(name)
        logger.info(
            "search replicas hold collection %s: %d points copied in %.1f s",
            name,
            points,
            time.perf_counter() - started,
        )

    def _start_processes(self) -> None:
        """Start the replica processes not running yet (on the first refresh, or after one ended)."""
        with self._lock:
            ended = [process for process in self._processes if not process.alive]
            self._processes = [process for process in self._processes if process not in ended]
            if ended:
                self._copies.clear()
        for process in ended:
            process.close()
        while len(self._processes) < self._count and not self._stopping.is_set():
            running = {process.role for process in self._processes}
            number = next(n for n in itertools.count(1) if f"search-replica-{n}" not in running)
            root = self._dir / str(number)  # an ended replica's directory, or a new one
            shutil.rmtree(root, ignore_errors=True)
            process = IndexProcess(root, self._store, role=f"search-replica-{number}")
            with self._lock:
                self._copies.clear()  # a new process holds none of them
                self._processes.append(process)

    def _forget(self, name: str) -> None:
        """``name`` is gone from the store: drop its copies."""
        with self._lock:
            self._wanted.discard(name)
            self._copies.pop(name, None)
            self._held.discard(name)
            processes = list(self._processes)
        self._drop_copies(name, processes)

    @staticmethod
    def _drop_copies(name: str, processes: list[IndexProcess]) -> None:
        for replica in processes:
            with contextlib.suppress(CollectionNotFound, IndexStoreError):
                replica.call("drop_collection", name)

    def close(self) -> None:
        """Stop the keeper and the replica processes, and remove their copies."""
        self._stopping.set()
        with self._lock:
            processes, self._processes = self._processes, []
            self._copies.clear()
        for process in processes:
            process.close()
        self._keeper.join(timeout=120)
        shutil.rmtree(self._dir, ignore_errors=True)
