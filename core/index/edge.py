"""The embedded backend: Qdrant Edge (the Qdrant engine in-process), one shard per collection.

Layout under ``root``::

    <name>/collection.json   the CollectionConfig (metadata included); written last on create,
                             so a directory without it is a half-created leftover
    <name>/shard/            the EdgeShard (segments, WAL)

A shard is owned by one process (the WAL is locked), so shards are opened lazily and cached for
the life of this object. Queries may come from many threads, but qdrant-edge-py 0.9 holds the
GIL through every call (measured: a Python thread beside a search stalls for the whole search,
beside a 1 M-point shard load for its 2.5 s), so one process searches one query at a time and
`holds_gil` is True; updates are serialised per collection.

The owner keeps collections searchable: once the vectors written since a collection's last index
build pass its full-scan threshold (the engine's indexing threshold), a background thread of that
collection builds the index (`optimize`), after a pause in the writes. The engine holds the GIL
through an optimize too, so this process's searches wait for it: the debounce keeps builds few, and
each one indexes what was written since the last.

Disk: every write first checks that the free space under the store stays above the reserve
(``min_free_mb``) once the write's own estimated footprint is taken off, and an out-of-space error
from the engine or a file write comes back as `StoreFull`. The engine writes through memory maps,
where running out of space is a SIGBUS that ends the process, not an error: the check is what
prevents it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import errno
import functools
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

import numpy as np
import qdrant_edge as qe
from numpy.typing import NDArray

from core.config import StoreSettings
from core.errors import (
    CollectionExists,
    CollectionNotFound,
    IndexStoreError,
    StoreFull,
)
from core.index._shared import (
    OVERSAMPLING,
    carry_labels,
    check_batch,
    check_config,
    check_facet,
    check_name,
    check_page,
    config_to_dict,
    facet_counts,
    filter_conditions,
    filter_exclusions,
    hnsw_params,
    is_valid_name,
    known_ids,
    payloads_to_overwrite,
    query_vector,
    read_config_file,
    read_json_record,
    stored_point,
    stored_points,
    unnamed_vector,
)
from core.index.base import CollectionConfig, Hit, StoredPoint, VectorIndex, point_not_found
from core.index.combinations import (
    COMBINATIONS_FIELD,
    combination_keys,
    combine_conditions,
    public_payload,
)
from core.index.resident import populate_hot_pages, release_cold_pages, resident_mb
from core.ownership import StoreLease
from core.payload import INDEXED_FIELDS, SearchFilter
from core.suggest import did_you_mean

__all__ = ["EdgeIndex"]

logger = logging.getLogger(__name__)

_CONFIG_FILE = "collection.json"
# Up to this many ``exclude_ids`` are filtered out of the results in Python, more by the engine.
_EXCLUDE_IN_PYTHON_MAX = 16
# alias → collection, one small JSON file beside the collections (Edge has no native aliases).
_ALIASES_FILE = "aliases.json"
_SHARD_DIR = "shard"
# Distinct filters whose planning estimates are kept per collection (two engine counts each).
_CARDINALITY_CACHE_MAX = 1024
# What a write may add on disk, estimated high, checked against the reserve beforehand. Measured on
# 512-d int8 collections: creating one took 17 MB (payload index pages), a point ~5 KB with its WAL
# entry (3 x the vector + 4 KB is asked), an optimize up to 0.8 x the shard's size while the old
# and the new segments coexist (the shard's whole size is asked).
_CREATE_BYTES = 32 * 2**20
# An in-RAM collection's payload storage is loaded at create and open: on tmpfs that fills in its
# first 32 MB page file (measured: a new in-RAM collection took 54 MB of a tmpfs, an on-disk one 20).
_PAYLOAD_PAGE_BYTES = 32 * 2**20
_SMALL_WRITE_BYTES = 2**20
_POINT_OVERHEAD_BYTES = 4096
# Free space asked for beyond what loading a shard writes (`_load_bytes`).
_OPEN_MARGIN_BYTES = 16 * 2**20
# After an index build refused for want of space, the background indexer tries again this often.
_AUTO_INDEX_RETRY_S = 60.0


class _RWLock:
    """Many readers or one writer; writers wait for readers to leave and block new ones."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _Handle:
    """An open shard: ``rw`` keeps it from closing under a reader, ``update`` serialises writes."""

    def __init__(self, name: str, shard: qe.EdgeShard, config: CollectionConfig) -> None:
        self.name = name
        self.shard = shard
        self.config = config
        self.rw = _RWLock()
        self.update = threading.Lock()
        self.closed = False
        # filter → (matching points, all points), the engine's estimates; every write clears it
        # (this process owns the shard, so nothing else can change the counts).
        self.cardinality: dict[tuple[tuple[str, tuple[object, ...]], ...], tuple[int, int]] = {}
        # One index build of this collection at a time, explicit or in the background.
        self.optimizing = threading.Lock()
        # Unindexed vectors the last build left (the engine indexes whole segments): the next
        # build is due once the unindexed vectors pass this plus the threshold.
        self.unindexed_after_build = 0
        self.indexer: _Indexer | None = None
        self.indexer_lock = threading.Lock()  # guards ``indexer`` and ``stopping``
        self.stopping = False

    @contextlib.contextmanager
    def reading(self) -> Iterator[qe.EdgeShard]:
        with self.rw.read():
            if self.closed:
                raise CollectionNotFound(f"collection {self.name!r} was dropped or closed")
            yield self.shard

    @contextlib.contextmanager
    def writing(self) -> Iterator[qe.EdgeShard]:
        with self.update, self.reading() as shard:
            try:
                yield shard
            finally:
                self.cardinality = {}

    def close(self) -> None:
        """Stop the background indexer (a build under way finishes first), then close the shard."""
        with self.indexer_lock:
            self.stopping = True
            indexer = self.indexer
        if indexer is not None:
            indexer.stop()
        with self.update, self.rw.write():
            if not self.closed:
                self.closed = True
                self.shard.close()
        if indexer is not None:
            indexer.join()


class _Indexer:
    """The background thread that builds one collection's index, debounced.

    `due` says the unindexed vectors passed the threshold; the thread then waits for ``quiet_s``
    without a `written` call, but no longer than ``max_delay_s`` after the first `due`, and runs
    ``build`` once for every write that came before (outside its own lock: ``build`` takes the
    collection's locks itself)."""

    def __init__(self, name: str, build: Callable[[], None], *, quiet_s: float, max_delay_s: float) -> None:
        self._build = build
        self._quiet_s = quiet_s
        self._max_delay_s = max_delay_s
        self._cond = threading.Condition()
        self._due_since: float | None = None
        self._last_write = 0.0
        self._building = False
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=f"auto-index-{name}", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """A build is scheduled or running."""
        with self._cond:
            return self._building or self._due_since is not None

    def written(self) -> None:
        """A write happened: a scheduled build waits for the writes to pause."""
        with self._cond:
            self._last_write = time.monotonic()
            self._cond.notify_all()

    def due(self, *, delay_s: float = 0.0) -> None:
        """Schedule a build (once: a scheduled one absorbs the next calls), not before ``delay_s``."""
        with self._cond:
            if self._due_since is None:
                self._due_since = time.monotonic() + delay_s
            self._cond.notify_all()

    def built(self) -> None:
        """A build just ended (an explicit one too): it covered every write so far, so a build
        still scheduled has nothing left to do."""
        with self._cond:
            self._due_since = None

    def _wait_until_due(self) -> bool:
        """Block until a scheduled build should start; False once stopped."""
        with self._cond:
            while not self._stopped:
                if self._due_since is None:
                    self._cond.wait()
                    continue
                start = min(self._last_write + self._quiet_s, self._due_since + self._max_delay_s)
                now = time.monotonic()
                if now >= start and now >= self._due_since:
                    self._due_since = None
                    self._building = True
                    return True
                self._cond.wait(max(start, self._due_since) - now)
            return False

    def _loop(self) -> None:
        while self._wait_until_due():
            try:
                self._build()
            finally:
                with self._cond:
                    self._building = False

    def stop(self) -> None:
        """No new build starts; one under way runs to its end (the engine cannot stop it)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def join(self) -> None:
        if self._thread is not threading.current_thread():
            self._thread.join()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def _release_free_heap() -> None:
    """Hand the C heap's free pages back to the OS. glibc keeps what the engine frees after
    opening a shard (160-200 MB at 20 k or 1 M points, whatever the size: load-time working
    memory, not data) or an optimize as part of the process's RSS for good; ``malloc_trim``
    returns it. A no-op without glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` in one step (readers see the old file or the new one);
    `StoreFull` when the disk is full, the old file left as it was."""
    with _disk_errors(path.parent):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


_OUT_OF_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How the engine words an out-of-space I/O error (Rust's io::Error: "... (os error 28)").
_OUT_OF_SPACE_TEXT = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")


def _out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` (an OSError or an engine error) says the disk is full."""
    if isinstance(exc, OSError) and exc.errno in _OUT_OF_SPACE_ERRNOS:
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _OUT_OF_SPACE_TEXT)


def _store_full(root: Path, exc: BaseException) -> StoreFull:
    return StoreFull(
        f"the disk under the store ({root}) is full ({exc.strerror if isinstance(exc, OSError) else exc}): "
        "the write was refused; free space and retry (RADSEARCH_STORE__MIN_FREE_MB keeps a reserve)"
    )


@contextlib.contextmanager
def _disk_errors(root: Path) -> Iterator[None]:
    """Out-of-space errors of the engine or of a file write, as `StoreFull`."""
    try:
        yield
    except StoreFull:
        raise
    except Exception as exc:
        if _out_of_space(exc):
            raise _store_full(root, exc) from exc
        raise


def _load_bytes(shard_dir: Path) -> int:
    """What loading a shard may write: the sparse parts (holes) of its segments' files. The engine
    maps them and fills some in as it loads (measured on tmpfs: the payload indexes' pages, 40 MB
    for a new collection, and the open vector chunk, up to 32 MB)."""
    total = 0
    for parent, _dirs, files in os.walk(shard_dir / "segments"):
        for file in files:
            with contextlib.suppress(OSError):
                stat = os.lstat(os.path.join(parent, file))
                total += max(0, stat.st_size - stat.st_blocks * 512)
    return total


def _allocated_bytes(directory: Path) -> int:
    """Disk space the files under ``directory`` take (their blocks: the engine's files are sparse)."""
    total = 0
    for parent, _dirs, files in os.walk(directory):
        for file in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(parent, file)).st_blocks * 512
    return total


def _copy_file_sparse(src: Path, dst: Path) -> None:
    """Copy one file, its holes left holes: the engine's files are mostly sparse (a new collection's
    200 MB of files hold a few MB), and a plain copy would write every hole out as zeros."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fin.fileno(), offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
            fin.seek(start)
            fout.seek(start)
            remaining = end - start
            while remaining:
                chunk = fin.read(min(remaining, 8 * 2**20))
                if not chunk:
                    break
                fout.write(chunk)
                remaining -= len(chunk)
            offset = end
        fout.truncate(size)
        fout.flush()
        os.fsync(fout.fileno())


def _copy_tree_sparse(src: Path, dst: Path, *, skip: frozenset[str] = frozenset()) -> None:
    """Copy the directory ``src`` to ``dst`` (which must not exist), files sparse; top-level names
    in ``skip`` are left out."""
    dst.mkdir(parents=True)
    for entry in os.scandir(src):
        if entry.name in skip:
            continue
        target = dst / entry.name
        if entry.is_dir(follow_symlinks=False):
            _copy_tree_sparse(Path(entry.path), target)
        elif entry.is_file(follow_symlinks=False):
            _copy_file_sparse(Path(entry.path), target)


def _to_filter(
    filter: SearchFilter | None,
    exclude_ids: Sequence[str] = (),
    *,
    require: bool = False,
    only_ids: Collection[int | UUID | str] | None = None,
    combined: Sequence[str] = (),
) -> qe.Filter | None:
    """The engine filter; conditions on two or more of ``combined`` (the collection's
    ``combined_fields``) as one lookup of their combination keys."""
    conditions = combine_conditions(filter_conditions(filter, require=require), combined)
    must: list[Any] = [qe.FieldCondition(key, match=qe.MatchAny(values)) for key, values in conditions]
    if only_ids is not None:
        must.append(qe.HasIdCondition(set(only_ids)))
    excluded = known_ids(exclude_ids)
    must_not: list[Any] = [qe.HasIdCondition(set(excluded))] if excluded else []
    must_not += [
        qe.FieldCondition(key, match=qe.MatchAny(values)) for key, values in filter_exclusions(filter)
    ]
    if not must and not must_not:
        return None
    return qe.Filter(must=must or None, must_not=must_not or None)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A filtered search: post-filter nearest candidates first or not (drawn from the whole
    collection, or within ``base``, one condition of the filter), the filter's share of those
    candidates' population, then (or else) filtered HNSW with ACORN or not, at ``ef``."""

    post_filter: bool
    share: float
    acorn: bool
    ef: int
    base: SearchFilter | None = None
    exact: bool = False  # a small filter: every matching point scored with its original vector


@dataclasses.dataclass(frozen=True)
class _Page:
    """What one engine request asks for, besides the query vector and the search parameters."""

    limit: int
    offset: int
    filter: SearchFilter | None
    excluded: tuple[str, ...]
    score_threshold: float | None
    combined: tuple[str, ...]  # the collection's combined_fields


class _Scored(NamedTuple):
    """A scored point with its payload attached afterwards (the engine's own is read-only)."""

    id: Any
    score: float
    payload: dict[str, Any] | None


def _stored_payload(payload: Mapping[str, Any], combined: Sequence[str]) -> dict[str, Any]:
    """A payload as the engine stores it: with its label combinations where the collection keeps
    them (`core.index.combinations`)."""
    out = public_payload(payload)
    if combined:
        out[COMBINATIONS_FIELD] = combination_keys(out, combined)
    return out


def _rescoring(quantized: bool) -> qe.QuantizationSearchParams | None:
    # int8 loses a little ranking precision: oversample, then rescore with the original vectors
    return qe.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING) if quantized else None


def _query(
    shard: qe.EdgeShard,
    query: list[float],
    page: _Page,
    params: qe.SearchParams,
    only_ids: Collection[int | UUID | str] | None = None,
    with_payload: bool = True,
) -> list[Any]:
    """One engine search for ``page``; ``only_ids`` (the engine's point ids as it returns them,
    or their strings) restricts it to those points."""
    return list(
        shard.query(
            qe.QueryRequest(
                limit=page.limit,
                offset=page.offset,
                query=qe.Query.Nearest(query),
                filter=_to_filter(page.filter, page.excluded, only_ids=only_ids, combined=page.combined),
                score_threshold=page.score_threshold,
                params=params,
                with_payload=with_payload,
                with_vector=False,
            )
        )
    )


def _cached_counts(
    handle: _Handle,
    key: tuple[tuple[str, tuple[object, ...]], ...],
    count: Callable[[qe.EdgeShard], tuple[int, int]],
) -> tuple[int, int]:
    """``count(shard)``, kept in the collection's count cache under ``key`` until its next write."""
    cache = handle.cardinality  # a write meanwhile replaces it: what is counted now then goes stale
    counts = cache.get(key)
    if counts is None:
        if len(cache) >= _CARDINALITY_CACHE_MAX:
            cache.clear()
        with handle.reading() as shard:
            counts = cache[key] = count(shard)
    return counts


def _value_count(shard: qe.EdgeShard, field: str, value: str | int) -> int:
    """The points whose ``field`` holds ``value``, as the engine's payload index counts them."""
    condition = qe.FieldCondition(field, match=qe.MatchAny([value]))  # type: ignore[arg-type]
    return int(shard.count(qe.CountRequest(exact=False, filter=qe.Filter(must=[condition]))))


def _vector_params(config: CollectionConfig) -> qe.EdgeVectorParams:
    return qe.EdgeVectorParams(
        size=config.dim, distance=qe.Distance.Cosine, on_disk=True if config.on_disk else None
    )


class EdgeIndex(VectorIndex):
    """Collections as Qdrant Edge shards under ``root``, one directory per collection.

    ``acorn`` turns on ACORN for filtered searches (better recall under selective filters).
    """

    holds_gil = True  # see the module docstring

    def __init__(
        self,
        root: Path,
        store: StoreSettings,
        *,
        acorn: bool | None = None,
        lease: StoreLease | None = None,
    ) -> None:
        self._root = Path(root)
        self._store = store
        self._lease = lease
        self._acorn = store.acorn if acorn is None else acorn
        self._root.mkdir(parents=True, exist_ok=True)
        self._handles: dict[str, _Handle] = {}
        # Guards the handle cache and collection create/drop; never held while querying.
        self._lock = threading.RLock()
        self._aliases: dict[str, str] | None = None
        # This process's resident MB right after the cold pages were last released (`_searched`).
        self._released_mb: float | None = None

    # -- collections -------------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        return self._root / name

    def _exists_on_disk(self, name: str) -> bool:
        return (self._dir(name) / _CONFIG_FILE).is_file()

    def check_free_space(self, needed_bytes: int = 0) -> None:
        """`StoreFull` unless the disk under the store keeps the reserve (``min_free_mb``) free
        once ``needed_bytes`` (the write's estimated footprint) are taken off.

        Called before every write: the engine memory-maps its files, and running out of space
        under a mapping ends the process with SIGBUS instead of an error. Nothing is remembered:
        writes work again as soon as space is freed."""
        stat = os.statvfs(self._root)
        free_mb = stat.f_bavail * stat.f_frsize / 2**20
        needed_mb = needed_bytes / 2**20
        if free_mb - needed_mb < self._store.min_free_mb:
            needs = f", and this write may take {math.ceil(needed_mb)} MB" if needed_bytes else ""
            raise StoreFull(
                f"only {free_mb:.0f} MB free under the store ({self._root}), the reserve is "
                f"{self._store.min_free_mb} MB (RADSEARCH_STORE__MIN_FREE_MB){needs}: writes are "
                "refused until space is freed; nothing stored was changed"
            )

    def _check_room_to_open(self, name: str, shard_dir: Path) -> None:
        """`StoreFull` when loading the shard could fill the disk. The reserve is not asked for
        (reading goes on while writes are refused), only what the load writes, plus a margin."""
        needed = _load_bytes(shard_dir) + _OPEN_MARGIN_BYTES
        stat = os.statvfs(self._root)
        free = stat.f_bavail * stat.f_frsize
        if free < needed:
            raise StoreFull(
                f"opening collection {name!r} takes up to {math.ceil(needed / 2**20)} MB of disk (the "
                f"engine fills in its index files), only {free / 2**20:.0f} MB free under the store "
                f"({self._root}): free space and retry"
            )

    def _edge_config(self, config: CollectionConfig) -> qe.EdgeConfig:
        # int8 vectors on the heap, or, beside on-disk originals, memory-mapped (Memory.Cold) and
        # mapped in by this process once the engine has loaded the shard (`_map_hot_pages`). On the
        # heap the copy is made from a mapping of the file, which raised the peak RSS of opening a
        # 1 M shard to 1,224 MB. Pre-read by the engine (Memory.Cached), they were all mapped
        # while its WAL replay's working memory was live: a peak of 1,171 MB, 938 MB once
        # the open was over (bench/RESULTS.md, session 16).
        memory = qe.Memory.Cold if config.on_disk else qe.Memory.Pinned
        quantization = (
            qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, memory=memory)
            if config.quantization == "int8"
            else None
        )
        params = hnsw_params(config, self._store)
        hnsw = qe.HnswIndexConfig(**params)
        # Segments are indexed from the size they stop being searched by full scan (0 would mean
        # never): what `optimize` builds and what the background indexer waits for agree.
        optimizers = qe.EdgeOptimizersConfig(indexing_threshold=max(1, params["full_scan_threshold"]))
        # An in-RAM collection keeps its payloads in RAM too (populated at open and after each build):
        # memory-mapped and read on demand, each hit's payload was a page fault, and page cache that
        # no process has mapped is what a host's proactive reclaim (DAMON pageout) drops first. At
        # 1 M points that was ~10 major faults per search after a build (bench/RESULTS.md, session 9),
        # for 260 MB of payload storage. On-disk collections leave them mapped on demand
        # (release_mapped_mb counts them).
        return qe.EdgeConfig(
            vectors=_vector_params(config),
            hnsw_config=hnsw,
            quantization_config=quantization,
            optimizers=optimizers,
            payload_memory=None if config.on_disk else qe.Memory.Pinned,
            max_search_threads=self._store.search_threads,
        )

    def _open_config(self, config: CollectionConfig) -> qe.EdgeConfig:
        """What an open sets on an existing shard: its search threads, from the settings of this
        process. The rest is left unspecified, so the shard keeps what it was created with (the
        engine wants the vectors named, and they must match what is stored)."""
        return qe.EdgeConfig(vectors=_vector_params(config), max_search_threads=self._store.search_threads)

    def create_collection(self, config: CollectionConfig) -> None:
        """Create the shard, its keyword payload indexes, then commit by writing collection.json."""
        check_config(config)
        config_json = json.dumps(config_to_dict(config), indent=2, sort_keys=True)
        self.check_free_space(_CREATE_BYTES + (0 if config.on_disk else _PAYLOAD_PAGE_BYTES))
        with self._lock, _disk_errors(self._root):
            if config.name in self._handles or self._exists_on_disk(config.name):
                raise CollectionExists(f"collection {config.name!r} already exists")
            directory = self._dir(config.name)
            if directory.exists():
                shutil.rmtree(directory)  # leftover of an interrupted create (no collection.json)
            shard: qe.EdgeShard | None = None
            try:
                directory.mkdir(parents=True)
                shard = qe.EdgeShard.create(str(directory / _SHARD_DIR), self._edge_config(config))
                linked = set(self._store.hnsw_payload_fields)
                for field in INDEXED_FIELDS:
                    params = qe.KeywordIndexParams(enable_hnsw=field in linked)
                    shard.update(qe.UpdateOperation.create_field_index(field, params))
                if config.combined_fields:
                    int_params = qe.IntegerIndexParams(lookup=True, range=False, enable_hnsw=False)
                    shard.update(qe.UpdateOperation.create_field_index(COMBINATIONS_FIELD, int_params))
                shard.flush()
                _write_atomic(directory / _CONFIG_FILE, config_json)
            except BaseException:
                if shard is not None:
                    with contextlib.suppress(Exception):
                        shard.close()
                shutil.rmtree(directory, ignore_errors=True)
                raise
            self._handles[config.name] = _Handle(config.name, shard, config)

    def _handle(self, name: str) -> _Handle:
        handle = self._handles.get(name)
        if handle is not None:
            return handle
        with self._lock:
            handle = self._handles.get(name)
            if handle is not None:
                return handle
            config = self._read_config(name)
            shard_dir = self._dir(name) / _SHARD_DIR
            self._check_room_to_open(name, shard_dir)
            try:
                with _disk_errors(self._root):
                    shard = qe.EdgeShard.load(str(shard_dir), self._open_config(config))
            except StoreFull:
                raise
            except Exception as exc:
                if "WouldBlock" in str(exc):
                    raise IndexStoreError(
                        f"collection {name!r} is open in another process (one process owns a shard)"
                    ) from exc
                raise IndexStoreError(f"cannot open collection {name!r}: {exc}") from exc
            _release_free_heap()
            handle = _Handle(name, shard, config)
            self._handles[name] = handle
            if config.on_disk:
                self._map_hot_pages(handle)
            return handle

    def _read_config(self, name: str) -> CollectionConfig:
        if not is_valid_name(name) or not self._exists_on_disk(name):
            raise CollectionNotFound(f"collection {name!r} not found")
        return read_config_file(
            self._dir(name) / _CONFIG_FILE,
            f"collection {name!r}",
            "its points are untouched: restore it from a snapshot, or drop it",
        )

    def drop_collection(self, name: str) -> None:
        with self._lock:
            handle = self._handles.pop(name, None)
            if handle is None and not (is_valid_name(name) and self._exists_on_disk(name)):
                raise CollectionNotFound(f"collection {name!r} not found")
            if handle is not None:
                handle.close()
            directory = self._dir(name)
            # Remove the commit marker first: a crash mid-rmtree leaves a leftover, not a collection.
            (directory / _CONFIG_FILE).unlink(missing_ok=True)
            shutil.rmtree(directory, ignore_errors=True)

    def list_collections(self) -> list[str]:
        return sorted(
            p.name
            for p in self._root.iterdir()
            if p.is_dir() and is_valid_name(p.name) and (p / _CONFIG_FILE).is_file()
        )

    def open_collections(self) -> None:
        """Load every collection's shard (1 M x 512 int8: seconds); one that cannot be opened is
        logged and left to open, or fail, at its first use."""
        started = time.perf_counter()
        names = self.list_collections()
        for name in names:
            try:
                self._handle(name)
            except (CollectionNotFound, IndexStoreError, StoreFull) as exc:
                logger.warning("collection %s not opened ahead of its first use: %s", name, exc)
        if names:
            logger.info("opened %d collections in %.1f s", len(names), time.perf_counter() - started)

    def collection_exists(self, name: str) -> bool:
        return name in self._handles or (is_valid_name(name) and self._exists_on_disk(name))

    def collection_config(self, name: str) -> CollectionConfig:
        handle = self._handles.get(name)
        return handle.config if handle is not None else self._read_config(name)

    def update_metadata(self, name: str, metadata: dict[str, Any]) -> None:
        self.check_free_space(_SMALL_WRITE_BYTES)
        handle = self._handle(name)
        with handle.writing():
            config = dataclasses.replace(handle.config, metadata={**handle.config.metadata, **metadata})
            _write_atomic(
                self._dir(name) / _CONFIG_FILE, json.dumps(config_to_dict(config), indent=2, sort_keys=True)
            )
            handle.config = config

    def collection_info(self, name: str) -> dict[str, Any]:
        handle = self._handle(name)
        with handle.reading() as shard:
            info = shard.info()
        points, indexed = int(info.points_count), int(info.indexed_vectors_count)
        unindexed = max(0, points - indexed)
        # Fewer unindexed vectors than the threshold are searched by full scan and get no HNSW
        # graph of their own: that is done.
        done = unindexed - handle.unindexed_after_build < self._threshold_vectors(handle)
        indexer = handle.indexer
        building = handle.optimizing.locked() or (indexer is not None and indexer.busy)
        return {
            "points": points,
            "indexed_vectors": indexed,
            "unindexed_vectors": unindexed,
            "segments": int(info.segments_count),
            "optimizing": building,
            "status": "green" if done and not building else "yellow",
        }

    # -- aliases -----------------------------------------------------------------------------

    def _read_aliases(self) -> dict[str, str]:
        # One process owns the store, so the file is read once and the copy kept current by
        # set_alias/delete_alias; every search resolves its collection name through it.
        if self._aliases is None:
            path = self._root / _ALIASES_FILE
            self._aliases = (
                read_json_record(
                    path,
                    lambda data: {str(k): str(v) for k, v in data.items()},
                    "the store's aliases file (in the index folder)",
                    "mend it or move it aside (the aliases are then gone; the collections are untouched)",
                    kind="a JSON object of alias → collection",
                )
                if path.is_file()
                else {}
            )
        return dict(self._aliases)

    def _write_aliases(self, aliases: dict[str, str]) -> None:
        # os.replace of a whole file: readers see the old mapping or the new one, never a mix.
        _write_atomic(self._root / _ALIASES_FILE, json.dumps(aliases, indent=2, sort_keys=True))
        self._aliases = aliases

    def aliases(self) -> dict[str, str]:
        with self._lock:
            return self._read_aliases()

    def set_alias(self, alias: str, collection: str) -> None:
        check_name(alias)
        self.check_free_space(_SMALL_WRITE_BYTES)
        with self._lock:
            if not self._exists_on_disk(collection):
                raise CollectionNotFound(f"collection {collection!r} not found")
            if self._exists_on_disk(alias):
                raise CollectionExists(f"{alias!r} is a collection; an alias needs a name of its own")
            self._write_aliases({**self._read_aliases(), alias: collection})

    def delete_alias(self, alias: str) -> None:
        with self._lock:
            aliases = self._read_aliases()
            if alias not in aliases:
                raise CollectionNotFound(f"alias {alias!r} not found{did_you_mean(alias, aliases)}")
            del aliases[alias]
            self._write_aliases(aliases)

    # -- points ------------------------------------------------------------------------------

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
        """Validate everything, then write one batch and flush it to disk."""
        handle = self._handle(name)
        arr, canonical = check_batch(ids, vectors, payloads, handle.config.dim)
        if not canonical:
            return
        payloads = carry_labels(functools.partial(self.retrieve, name), canonical, payloads, labels_from)
        self.check_free_space(len(canonical) * (3 * arr.shape[1] * 4 + _POINT_OVERHEAD_BYTES))
        # The engine reads a float32 row's memoryview value by value, without the list of Python
        # floats tolist() builds (upserting 1 M x 512: 87 -> 72 s).
        combined = handle.config.combined_fields
        points = [
            qe.Point(pid, memoryview(row), _stored_payload(payload, combined))  # type: ignore[arg-type]  # stub says list
            for pid, row, payload in zip(canonical, arr, payloads, strict=True)
        ]
        mode = qe.UpdateMode.InsertOnly if insert_only else None
        with handle.writing() as shard, _disk_errors(self._root):
            shard.update(qe.UpdateOperation.upsert_points(points, update_mode=mode))
            shard.flush()
            unindexed = self._unindexed(shard)
        self._written(handle, unindexed)

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
        """k-NN by cosine similarity, best first, filtered; ``exclude_ids`` never appear."""
        handle = self._handle(name)
        query = query_vector(vector, handle.config.dim, limit, offset)
        return self._search(
            handle,
            query,
            filter=filter,
            limit=limit,
            offset=offset,
            score_threshold=score_threshold,
            exclude_ids=exclude_ids,
            exact=exact,
            hnsw_ef=hnsw_ef,
        )

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
        """`VectorIndex.search_near_point` with the engine's own copy of the stored vector: no
        payload read, no validation or array round trip (~0.15 of a 1 M by-point search's ~3.7 ms
        of CPU, measured)."""
        handle = self._handle(name)
        check_page(limit, offset)
        wanted: list[Any] = known_ids([point_id])
        records: list[Any] = []
        if wanted:
            with handle.reading() as shard:
                records = shard.retrieve(wanted, with_payload=False, with_vector=True)
        raw = unnamed_vector(records[0].vector) if records else None
        if raw is None:
            raise point_not_found(name, point_id)
        return self._search(
            handle,
            list(raw),
            filter=filter,
            limit=limit,
            offset=offset,
            score_threshold=score_threshold,
            exclude_ids=(point_id,),
        )

    def _search(
        self,
        handle: _Handle,
        query: list[float],
        *,
        filter: SearchFilter | None,
        limit: int,
        offset: int,
        score_threshold: float | None,
        exclude_ids: Sequence[str],
        exact: bool = False,
        hnsw_ef: int | None = None,
    ) -> list[Hit]:
        """`search` and `search_near_point` once the query vector is a checked list."""
        quantized = handle.config.quantization == "int8"
        filtered = filter is not None and not filter.is_empty()
        plan = self._filtered_plan(handle, filter, offset + limit) if filtered else None
        # A few excluded ids (search by a stored point) are dropped from a longer result here: as an
        # engine filter (must_not HasId) they cost ~1 ms more per search at 1 M points.
        excluded = set(known_ids(exclude_ids)) if len(exclude_ids) <= _EXCLUDE_IN_PYTHON_MAX else set()
        page = _Page(
            limit=offset + limit + len(excluded) if excluded else limit,
            offset=0 if excluded else offset,
            filter=filter,
            excluded=() if excluded else tuple(exclude_ids),
            score_threshold=score_threshold,
            combined=handle.config.combined_fields,
        )
        scan = exact or (plan is not None and plan.exact)
        with handle.reading() as shard:
            scored = None
            if plan is not None and plan.post_filter and not exact:
                scored = self._post_filtered(shard, query, page, plan, hnsw_ef, quantized)
            if scored is None:  # not post-filtered, or its candidates held too few matches
                default_ef = plan.ef if plan is not None else self._store.hnsw_ef
                params = qe.SearchParams(
                    hnsw_ef=hnsw_ef if hnsw_ef is not None else default_ef,
                    exact=scan,
                    # exact (asked for, or a small filter's scan): the originals alone where they
                    # are in RAM (20 k points at 1 M, 9.8 ms; int8 scores rescored, 75.6 ms:
                    # bench/RESULTS.md); from disk int8, then the best rescored (the engine's exact
                    # search maps every matching original either way, and the kernel their cached
                    # neighbours: 28-194 MB for 4.6 k points at 1 M)
                    quantization=qe.QuantizationSearchParams(ignore=True)
                    if scan and quantized and not handle.config.on_disk
                    else _rescoring(quantized),
                    acorn=(
                        qe.AcornSearchParams(enable=True, max_selectivity=self._store.acorn_max_selectivity)
                        if plan is not None and plan.acorn
                        else None
                    ),
                )
                scored = _query(shard, query, page, params)
        self._searched(handle)
        if excluded:
            scored = [p for p in scored if str(p.id) not in excluded][offset : offset + limit]
        return [Hit(id=str(p.id), score=float(p.score), payload=public_payload(p.payload)) for p in scored]

    def _searched(self, handle: _Handle) -> None:
        """After a search of a collection with on-disk originals: once this process's resident
        memory has grown by ``release_mapped_mb`` since the last release, drop the pages of the
        on-disk collections' cold files (`core.index.resident`). A server's RSS then stays within
        that budget of what it holds for searching, instead of growing with each distinct query
        towards the size of the vector files (1 M points: 1,283 MB after 3,000 queries, and 2.1 GB
        after 10,000 when scans were released only every 1,000 searches). Measured against the
        RSS, not counted per search, because a scan maps 50-500 times what a graph search does."""
        budget = self._store.release_mapped_mb
        if not budget or not handle.config.on_disk:
            return
        resident = resident_mb()
        if self._released_mb is None or resident < self._released_mb:
            self._released_mb = resident  # the first search, or memory went back (a close)
        elif resident - self._released_mb > budget:
            self._release_cold_pages()

    def _map_hot_pages(self, handle: _Handle) -> None:
        """After the engine loaded segments of an on-disk collection (an open, a build): release
        the WAL pages a load replayed (where a budget is set), then map in the quantized vectors
        (`core.index.resident`). A collection created with the engine's pre-read (Memory.Cached,
        before this was added) has them mapped already."""
        directory = self._dir(handle.name)
        if self._store.release_mapped_mb:
            release_cold_pages(directory)
        populate_hot_pages(directory)
        if self._store.release_mapped_mb:
            self._released_mb = resident_mb()

    def _release_cold_pages(self) -> None:
        """Release the cold pages of every open collection with on-disk originals (one read of
        the process's mappings and a ``madvise`` per file: 3-8 ms at 1 M points)."""
        release_cold_pages(*(self._dir(h.name) for h in list(self._handles.values()) if h.config.on_disk))
        self._released_mb = resident_mb()

    def _post_filtered(
        self,
        shard: qe.EdgeShard,
        query: list[float],
        page: _Page,
        plan: _Plan,
        hnsw_ef: int | None,
        quantized: bool,
    ) -> list[Any] | None:
        """A filter matching a large share of the collection (or of ``plan.base``'s points): the
        nearest candidates (quantized scores, no payloads; within ``plan.base`` when set), then
        the filter and exact rescoring over those alone. None when they hold fewer matches than
        the page needs (the caller searches filtered)."""
        store = self._store
        needed = page.limit + page.offset
        count = min(
            store.post_filter_max_candidates, math.ceil(needed * store.post_filter_factor / plan.share)
        )
        default_ef = store.post_filter_ef if plan.base is None else store.post_filter_base_ef
        candidates = shard.query(
            qe.QueryRequest(
                limit=count,
                query=qe.Query.Nearest(query),
                filter=_to_filter(plan.base, page.excluded),
                params=qe.SearchParams(
                    hnsw_ef=max(count, hnsw_ef if hnsw_ef is not None else default_ef),
                    quantization=qe.QuantizationSearchParams(rescore=False) if quantized else None,
                ),
                with_payload=False,
                with_vector=False,
            )
        )
        # Exact over the candidates alone whatever the full-scan threshold; payloads fetched for the
        # page only (an exact search asked for them cost 5 ms more at 1 M points).
        scored = _query(
            shard,
            query,
            page,
            qe.SearchParams(exact=True, quantization=_rescoring(quantized)),
            # the engine's own ids (UUIDs): strings would cost ~0.3 ms more per search at 160 (their
            # str() and the engine's parsing of them)
            only_ids=[p.id for p in candidates],
            with_payload=False,
        )
        if len(scored) < page.limit:
            return None
        payloads = {
            str(r.id): r.payload
            for r in shard.retrieve([p.id for p in scored], with_payload=True, with_vector=False)
        }
        return [_Scored(p.id, p.score, payloads.get(str(p.id))) for p in scored]

    def _filtered_plan(self, handle: _Handle, filter: SearchFilter | None, needed: int) -> _Plan:
        """How to run a filtered search, from the size of the filter (`_estimate`; bench/RESULTS.md,
        100 k to 1 M points):

        - at most ``filter_exact_max_points`` points: a scan of every matching point (the graphs
          lost recall on such filters: 0.85-0.97 for a three-condition 0.5 % filter at 1 M); the
          engine's own plain search of them where it plans one (`_engine_searches_plainly`),
          else an exact scan;
        - at least ``post_filter_min_share`` of the collection and a page of at most
          ``post_filter_max_results``: first unfiltered candidates, then the filter
          (`_post_filtered`; filtered HNSW plateaued at recall 0.97-0.99 on a 25 % filter at
          1 M points whatever the ef);
        - a filter of several conditions that matches at least that share of the points of its
          narrowest payload-linked condition (modality AND anatomy: a quarter of the anatomy's
          points): candidates from that condition's linked graph, then the whole filter (the
          engine has no links for the combination: on its own graph such a filter reached recall
          0.93 at 300 k points, without links 0.0003);
        - when those hold too few matches, or otherwise: more than ``acorn_max_points`` points:
          payload-linked HNSW, ``hnsw_ef_filtered``;
        - at most that many and at least ``acorn_min_selectivity`` of the collection: ACORN with
          ``hnsw_ef_acorn`` (a large share of a small collection, where plain filtered HNSW
          loses recall);
        - otherwise (a small, selective filter, served by its payload links): ``hnsw_ef_selective``.
        """
        store = self._store
        matching, total = self._estimate(handle, filter)
        share = matching / total if total else 0.0
        if matching <= store.filter_exact_max_points:
            if self._engine_searches_plainly(handle, filter):
                # 1 M points, the 0.46 % filter: 0.43 ms at recall 1.0, against 1.3-1.5 ms for the
                # engine's exact search, which scores every match by its original vector (4x the
                # bytes of its int8 one), whatever quantization it is asked for.
                return _Plan(False, share, False, store.hnsw_ef_selective)
            return _Plan(False, share, False, store.hnsw_ef_selective, exact=True)
        small_page = needed <= store.post_filter_max_results
        post, base, base_share = share >= store.post_filter_min_share and small_page, None, share
        if not post and small_page:
            base, base_share = self._narrowest_base(handle, filter, matching)
            post = base is not None
        if matching > store.acorn_max_points:
            return _Plan(post, base_share, False, store.hnsw_ef_filtered, base)
        if self._acorn and share >= store.acorn_min_selectivity:
            return _Plan(post, base_share, True, store.hnsw_ef_acorn, base)
        return _Plan(post, base_share, False, store.hnsw_ef_selective, base)

    def _engine_searches_plainly(self, handle: _Handle, filter: SearchFilter | None) -> bool:
        """Whether the engine's own plan for ``filter`` is a plain search of the points its payload
        index lists (int8, the best rescored): the filter reaches it as one condition (its labels
        combined where the collection keeps their combinations), and the engine's bound on that
        condition's matches, the sum of its values' counts, is under the full-scan threshold. An
        exclusion (the query's own patient or study) narrows the matches, not that bound."""
        conditions = combine_conditions(filter_conditions(filter), handle.config.combined_fields)
        if len(conditions) != 1:
            return False
        field, values = conditions[0]
        bound, _ = _cached_counts(
            handle,
            ((f"sum of counts: {field}", tuple(values)),),
            lambda shard: (sum(_value_count(shard, field, value) for value in values), 0),
        )
        return bound < self._threshold_vectors(handle)

    def _narrowest_base(
        self, handle: _Handle, filter: SearchFilter | None, matching: int
    ) -> tuple[SearchFilter | None, float]:
        """The filter's narrowest payload-linked condition that holds a graph of its own (more
        points than the full-scan threshold) and of whose points the whole filter matches at
        least ``post_filter_min_share``, with that share; (None, 0) when there is none."""
        if filter is None:
            return None, 0.0
        fields = filter.fields()
        if len(fields) < 2:
            return None, 0.0
        linked = set(self._store.hnsw_payload_fields)
        best: tuple[SearchFilter | None, float] = (None, 0.0)
        best_count = 0
        for name, values in fields:
            if name not in linked:
                continue
            condition = SearchFilter.model_validate({name: values})
            count, _ = self._estimate(handle, condition)
            if count <= self._threshold_vectors(handle) or (best_count and count >= best_count):
                continue
            if count and matching / count >= self._store.post_filter_min_share:
                best, best_count = (condition, matching / count), count
        return best

    def _estimate(self, handle: _Handle, filter: SearchFilter | None) -> tuple[int, int]:
        """The points ``filter`` matches and all points, cached per filter until the collection's
        next write: the engine's estimate for one condition, an exact count for several (the
        estimate takes the conditions as independent; labels are not: modality AND anatomy AND
        pathology at 1 M, estimated 814 points, matched 4,673, and the plan built on the estimate
        reached recall 0.85). Where the collection indexes their combinations such labels are one
        condition, whose estimate is its index's count: no exact count (~12 ms at 1 M)."""
        conditions = combine_conditions(filter_conditions(filter), handle.config.combined_fields)
        key = tuple((field, tuple(values)) for field, values in conditions) + tuple(
            ("not_" + field, tuple(values)) for field, values in filter_exclusions(filter)
        )

        def count(shard: qe.EdgeShard) -> tuple[int, int]:
            engine_filter = _to_filter(filter, combined=handle.config.combined_fields)
            matching = shard.count(qe.CountRequest(exact=len(conditions) > 1, filter=engine_filter))
            return int(matching), int(shard.count(qe.CountRequest(exact=False)))

        return _cached_counts(handle, key, count)

    def retrieve(self, name: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[StoredPoint]:
        """The points that exist among ``ids`` (missing ids are left out)."""
        handle = self._handle(name)
        wanted = list(dict.fromkeys(known_ids(ids)))
        if not wanted:
            return []
        point_ids: list[Any] = list(wanted)
        with handle.reading() as shard:
            records = shard.retrieve(point_ids, with_payload=True, with_vector=with_vectors)
        return stored_points(wanted, records, with_vectors)

    def count(self, name: str, filter: SearchFilter | None = None) -> int:
        handle = self._handle(name)
        request = qe.CountRequest(
            exact=True, filter=_to_filter(filter, combined=handle.config.combined_fields)
        )
        with handle.reading() as shard:
            return int(shard.count(request))

    def facet(
        self,
        name: str,
        field: str,
        *,
        filter: SearchFilter | None = None,
        limit: int = 100,
        exact: bool = True,
    ) -> dict[str, int]:
        """Point counts per value of an indexed keyword field, largest first."""
        check_facet(field, limit)
        handle = self._handle(name)
        request = qe.FacetRequest(
            field, limit=limit, exact=exact, filter=_to_filter(filter, combined=handle.config.combined_fields)
        )
        with handle.reading() as shard:
            response = shard.facet(request)
        return facet_counts(response.hits)

    def scroll_page(
        self,
        name: str,
        *,
        filter: SearchFilter | None = None,
        offset: Any = None,
        batch_size: int = 1000,
        with_vectors: bool = False,
    ) -> tuple[list[StoredPoint], Any]:
        """One page of `scroll` from ``offset`` (None: the first), and the next page's offset
        (None after the last). The lock is held for the page alone, so a slow consumer of
        `scroll` cannot block a drop."""
        handle = self._handle(name)
        request = qe.ScrollRequest(
            offset=offset,
            limit=batch_size,
            filter=_to_filter(filter, combined=handle.config.combined_fields),
            with_payload=True,
            with_vector=with_vectors,
        )
        with handle.reading() as shard:
            records, next_offset = shard.scroll(request)
        return [stored_point(r, with_vectors) for r in records], next_offset

    def delete(self, name: str, ids: Sequence[str]) -> None:
        handle = self._handle(name)
        wanted = known_ids(ids)
        if not wanted:
            return
        self.check_free_space(_SMALL_WRITE_BYTES)
        with handle.writing() as shard, _disk_errors(self._root):
            shard.update(qe.UpdateOperation.delete_points(list(wanted)))
            shard.flush()

    def overwrite_payloads(
        self,
        name: str,
        payloads: Mapping[str, dict[str, Any]],
        *,
        labels_from: Mapping[str, str] | None = None,
    ) -> None:
        """One engine operation per point (each has its own payload), one flush for all."""
        handle = self._handle(name)
        wanted = payloads_to_overwrite(functools.partial(self.retrieve, name), payloads, labels_from)
        if not wanted:
            return
        self.check_free_space(_SMALL_WRITE_BYTES)
        point_ids: list[Any] = list(wanted)
        with handle.writing() as shard, _disk_errors(self._root):
            records = shard.retrieve(point_ids, with_payload=False, with_vector=False)
            for record in records:
                pid = str(record.id)
                payload = _stored_payload(wanted[pid], handle.config.combined_fields)
                shard.update(qe.UpdateOperation.overwrite_payload([record.id], payload))
            shard.flush()

    def delete_by_filter(self, name: str, filter: SearchFilter) -> None:
        handle = self._handle(name)
        engine_filter = _to_filter(filter, require=True, combined=handle.config.combined_fields)
        assert engine_filter is not None
        self.check_free_space(_SMALL_WRITE_BYTES)
        with handle.writing() as shard, _disk_errors(self._root):
            shard.update(qe.UpdateOperation.delete_points_by_filter(engine_filter))
            shard.flush()

    def optimize(self, name: str) -> None:
        """Build HNSW/quantized segments now; blocks updates to this collection, and (the engine
        holds the GIL throughout) this process's other calls while it runs. Waits for a build the
        background indexer runs. `StoreFull` when the disk could not hold a rebuilt copy of the
        collection beside the reserve (the background indexer then tries again by itself)."""
        handle = self._handle(name)
        with handle.optimizing:
            try:
                self._build_index(handle)
            except StoreFull:
                self._schedule(handle, delay_s=_AUTO_INDEX_RETRY_S)
                raise

    # -- keeping collections indexed ---------------------------------------------------------

    @staticmethod
    def _unindexed(shard: qe.EdgeShard) -> int:
        info = shard.info()
        return max(0, int(info.points_count) - int(info.indexed_vectors_count))

    def _threshold_vectors(self, handle: _Handle) -> int:
        """How many unindexed vectors of this collection make an index build worth it."""
        kb = handle.config.full_scan_threshold_kb
        kb = self._store.full_scan_threshold_kb if kb is None else kb
        return max(1, kb * 1024 // (handle.config.dim * 4))

    def _build_index(self, handle: _Handle) -> None:
        """One optimize of ``handle``'s shard (the caller holds ``handle.optimizing``)."""
        with handle.reading() as shard:
            waiting = self._unindexed(shard) - handle.unindexed_after_build
        if waiting >= self._threshold_vectors(handle):
            # Indexing, and the merges that follow it, can rewrite every segment beside the old.
            needed = _allocated_bytes(self._dir(handle.name) / _SHARD_DIR / "segments")
        else:  # nothing for the engine to index: at most some clean-up
            needed = _SMALL_WRITE_BYTES
        self.check_free_space(needed)
        started = time.perf_counter()
        with handle.writing() as shard, _disk_errors(self._root):
            before = self._unindexed(shard)
            shard.optimize()
            shard.flush()
            handle.unindexed_after_build = after = self._unindexed(shard)
        indexer = handle.indexer
        if indexer is not None:
            indexer.built()
        _release_free_heap()
        if handle.config.on_disk:
            self._map_hot_pages(handle)
        if before:
            logger.info(
                "indexed collection %s: %d of %d unindexed vectors in %.1f s",
                handle.name,
                before - after,
                before,
                time.perf_counter() - started,
            )

    def _written(self, handle: _Handle, unindexed: int) -> None:
        """After a write: schedule a background build once enough vectors wait for one; a
        scheduled build waits for the writes to pause."""
        if unindexed - handle.unindexed_after_build >= self._threshold_vectors(handle):
            self._schedule(handle)
        indexer = handle.indexer
        if indexer is not None:
            indexer.written()

    def _schedule(self, handle: _Handle, *, delay_s: float = 0.0) -> None:
        """Have ``handle``'s indexer thread (started on first use) build the index."""
        if not self._store.auto_index:
            return
        with handle.indexer_lock:  # not self._lock: close() holds it while joining the thread
            if handle.stopping:
                return
            if handle.indexer is None:
                handle.indexer = _Indexer(
                    handle.name,
                    functools.partial(self._build_in_background, handle),
                    quiet_s=self._store.auto_index_quiet_s,
                    max_delay_s=self._store.auto_index_max_delay_s,
                )
            indexer = handle.indexer
        indexer.due(delay_s=delay_s)

    def _build_in_background(self, handle: _Handle) -> None:
        """The indexer thread's build: skipped when an explicit `optimize` did it meanwhile."""
        try:
            with handle.optimizing:
                with handle.reading() as shard:
                    unindexed = self._unindexed(shard)
                if unindexed - handle.unindexed_after_build < self._threshold_vectors(handle):
                    return
                self._build_index(handle)
        except CollectionNotFound:
            return  # closed or dropped meanwhile
        except StoreFull as exc:
            logger.warning("collection %s not indexed: %s", handle.name, exc)
            self._schedule(handle, delay_s=_AUTO_INDEX_RETRY_S)
        except Exception:
            logger.exception("building the index of collection %s failed", handle.name)

    # -- files: snapshots and the trash -------------------------------------------------------

    supports_files = True

    def export_collection(self, name: str, target: str) -> int:
        """Copy the collection's files to the new directory ``target``, consistent: its writes and
        index builds wait while the copy runs (searches go on), after a flush. Returns the number
        of points the copy holds. `StoreFull` when the copy would eat into the reserve."""
        handle = self._handle(name)
        destination = Path(target)
        self.check_free_space(_allocated_bytes(self._dir(name)))
        with handle.optimizing, handle.writing() as shard, _disk_errors(destination.parent):
            shard.flush()
            points = int(shard.count(qe.CountRequest(exact=True)))
            try:
                _copy_tree_sparse(self._dir(name), destination)
            except BaseException:
                shutil.rmtree(destination, ignore_errors=True)
                raise
        return points

    def detach_collection(self, name: str, target: str) -> None:
        """Close the collection and move its directory to ``target`` (kept whole, restorable with
        `attach_collection`); the collection is gone from the store."""
        with self._lock:
            handle = self._handles.pop(name, None)
            if handle is None and not (is_valid_name(name) and self._exists_on_disk(name)):
                raise CollectionNotFound(f"collection {name!r} not found")
            if handle is not None:
                handle.close()
            shutil.move(str(self._dir(name)), target)

    def attach_collection(self, source: str, config: CollectionConfig, *, move: bool = False) -> None:
        """Make the collection files under ``source`` (an `export_collection` copy or a
        `detach_collection` directory) the collection ``config.name``, with ``config`` as its
        collection.json. ``move`` takes the directory itself, otherwise a copy.
        `CollectionExists` when the name is taken."""
        check_config(config)
        origin = Path(source)
        if not (origin / _SHARD_DIR).is_dir():
            raise IndexStoreError(
                f"no collection files to restore as {config.name!r} (the copy is incomplete)"
            )
        if not move:
            self.check_free_space(_allocated_bytes(origin))
        config_json = json.dumps(config_to_dict(config), indent=2, sort_keys=True)
        with self._lock, _disk_errors(self._root):
            if config.name in self._handles or self._exists_on_disk(config.name):
                raise CollectionExists(f"collection {config.name!r} already exists")
            # Staged under a name no collection can have, then renamed: never half a collection.
            staging = self._root / f".attach-{config.name}"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                if move:
                    shutil.move(str(origin), staging)
                    (staging / _CONFIG_FILE).unlink(missing_ok=True)
                else:
                    _copy_tree_sparse(origin, staging, skip=frozenset({_CONFIG_FILE}))
                _write_atomic(staging / _CONFIG_FILE, config_json)
                directory = self._dir(config.name)
                if directory.exists():
                    shutil.rmtree(directory)  # leftover of an interrupted create (no collection.json)
                os.rename(staging, directory)
            except BaseException:
                if move and staging.exists() and not origin.exists():
                    shutil.move(str(staging), origin)  # give the trash its directory back
                shutil.rmtree(staging, ignore_errors=True)
                raise

    def close(self) -> None:
        """Close every open shard; collections reopen on next use."""
        with self._lock:
            handles = list(self._handles.values())
            self._handles.clear()
            for handle in handles:
                handle.close()
            if self._lease is not None:
                self._lease.close()
                self._lease = None
