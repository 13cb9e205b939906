"""The narrow vector-index interface both backends implement (and one contract suite tests).

Every collection: cosine distance on L2-normalised float32 vectors, keyword payload indexes on
`core.payload.INDEXED_FIELDS` created before any data, and a metadata dict (the collection catalog
entry: encoder spec, weights version, ...) stored with the collection.
"""

from __future__ import annotations

import functools
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from core.errors import ConfigError, IndexStoreError, PointNotFound
from core.payload import SearchFilter
from core.source_overlap import Overlap, overlaps

__all__ = [
    "COLLECTION_NAME",
    "COLLECTION_NAME_PATTERN",
    "COLLECTION_NAME_RULE",
    "GROUP_FETCH_MAX",
    "CollectionConfig",
    "Hit",
    "HitGroup",
    "StoredPoint",
    "VectorIndex",
    "check_collection_name",
    "group_hits",
    "off_loop",
    "point_not_found",
]

T = TypeVar("T")

#: What a collection's (or an alias's) name may be; the request schemas, the catalog and the
#: snapshots all check this one rule.
COLLECTION_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,47}$"
COLLECTION_NAME_RULE = "1 to 48 lower-case letters, digits, '_' or '-', the first a letter or digit"
COLLECTION_NAME = re.compile(COLLECTION_NAME_PATTERN)


def check_collection_name(name: str, what: str) -> str:
    """``name`` if it keeps the naming rule; else `ConfigError` "{what} must be {rule}" (the name
    itself is not echoed: it is whatever a caller sent)."""
    if not COLLECTION_NAME.match(name):
        raise ConfigError(f"{what} must be {COLLECTION_NAME_RULE}")
    return name


#: Where the engine cannot group (Qdrant Edge), `VectorIndex.search_groups` over-fetches plain hits
#: (4 x limit x group_size first, then 4 times more each round) up to this many, and groups those:
#: groups whose hits all rank below the first GROUP_FETCH_MAX hits are not found.
GROUP_FETCH_MAX = 4096


@dataclass(frozen=True)
class CollectionConfig:
    """How to create a collection. ``hnsw_*`` left as None take the store settings' defaults."""

    name: str
    dim: int
    metadata: dict[str, Any] = field(default_factory=dict)
    quantization: Literal["none", "int8"] = "none"
    on_disk: bool = False
    hnsw_m: int | None = None
    hnsw_ef_construct: int | None = None
    hnsw_payload_m: int | None = None
    full_scan_threshold_kb: int | None = None
    # The labels whose combinations the collection indexes as one keyword each (core.index.
    # combinations; the catalog passes StoreSettings.combined_filter_fields). The embedded engine's
    # alone: a Qdrant server plans filters itself and stores no combinations.
    combined_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class StoredPoint:
    id: str
    payload: dict[str, Any]
    vector: NDArray[np.float32] | None = None


@dataclass(frozen=True)
class HitGroup:
    """Hits sharing one value of the grouping field, best first; groups rank by their best hit."""

    key: str
    hits: list[Hit]


def group_hits(hits: Sequence[Hit], field: str, *, group_size: int, limit: int) -> list[HitGroup]:
    """Group best-first ``hits`` by payload ``field``: at most ``limit`` groups of at most
    ``group_size`` hits, in the order of each group's best hit. Hits without the field are left
    out (as the Qdrant engine's grouping leaves them out)."""
    groups: dict[str, list[Hit]] = {}
    for hit in hits:
        value = hit.payload.get(field)
        if not isinstance(value, str | int) or isinstance(value, bool):
            continue
        key = str(value)
        members = groups.get(key)
        if members is None:
            if len(groups) >= limit:
                continue
            members = groups[key] = []
        if len(members) < group_size:
            members.append(hit)
    return [HitGroup(key=key, hits=members) for key, members in groups.items()]


async def off_loop(index: VectorIndex, call: Callable[[], T]) -> T:
    """``call()``, a call on ``index``, from an event loop: inline where the backend holds the GIL
    throughout (`VectorIndex.holds_gil`), else in a worker thread. A worker thread could run such a
    call only while the loop waits, so it would add two thread switches and GIL hand-offs and no
    concurrency (1 M points, 4 clients: 4.1-5.0 instead of 5.5-5.7 ms of server CPU per search)."""
    if index.holds_gil:
        return call()
    import anyio.to_thread  # only where an event loop runs

    return await anyio.to_thread.run_sync(call)


def point_not_found(name: str, point_id: str) -> PointNotFound:
    """`PointNotFound` for ``point_id`` in collection ``name``, naming the id only where it is a
    UUID: anything else is whatever a caller sent where an id goes, never echoed."""
    try:
        uuid.UUID(point_id)
    except ValueError:
        return PointNotFound(f"no such point in {name!r} (point ids are UUIDs)")
    return PointNotFound(f"point {point_id!r} does not exist in {name!r}")


class VectorIndex(ABC):
    """A set of named collections of vectors with payloads.

    Errors: `CollectionNotFound`, `CollectionExists`, `InvalidVector` (NaN, Inf, zero norm, wrong
    dimension: checked before the store is touched), `InvalidFilter`.
    """

    #: True when every call is CPU-bound work in this process that holds the GIL throughout (an
    #: embedded engine): an event loop gains nothing by handing such a call to a worker thread,
    #: which can run only while the loop waits, and pays two thread switches for it.
    holds_gil: ClassVar[bool] = False

    #: False for an index that writes through another process's API and cannot search here.
    searches_here: ClassVar[bool] = True

    @property
    def replicated_collections(self) -> list[str]:
        """The collections whose searches search replicas share now (`HostedEdgeIndex`); none here."""
        return []

    @property
    def metadata_generation(self) -> int | None:
        """A number that changes with every change to the collections, their metadata or the
        aliases, where every such change goes through this object (the store's one owner): what
        was read from them may be kept while it holds. None where another process may change them
        unseen (a Qdrant server): nothing read may be kept."""
        return None

    def open_collections(self) -> None:
        """Open every collection now (load its files), so that the first searches after a start
        do not wait for that; nothing to do where a server keeps them open."""
        return None

    @abstractmethod
    def create_collection(self, config: CollectionConfig) -> None:
        """Create the collection and its payload indexes; `CollectionExists` if it exists."""

    @abstractmethod
    def drop_collection(self, name: str) -> None:
        """Remove the collection and its data; `CollectionNotFound` if absent."""

    @abstractmethod
    def list_collections(self) -> list[str]: ...

    @abstractmethod
    def collection_exists(self, name: str) -> bool: ...

    @abstractmethod
    def collection_config(self, name: str) -> CollectionConfig:
        """The config the collection was created with, metadata included."""

    @abstractmethod
    def update_metadata(self, name: str, metadata: dict[str, Any]) -> None:
        """Merge ``metadata`` into the collection's stored metadata."""

    @abstractmethod
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
        """Insert or overwrite points; durable when it returns. Vectors are validated first.

        ``insert_only`` leaves points that already exist untouched (a backfill never overwrites what
        a concurrent ingest wrote). ``labels_from`` maps a point's id to a stored point (its own
        id, or another frame of its object) whose labels it takes where that point exists
        (`core.index._shared.carry_labels`): an object re-embedded by a run whose label rules say
        nothing about it keeps the labels earlier rules gave it. Read where the labels are stored,
        before the write."""

    @abstractmethod
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
        """`search` with the stored vector of ``point_id``, the point itself left out;
        `PointNotFound` when the collection has no such point (ids that are not UUIDs never exist)."""
        points = self.retrieve(name, [point_id], with_vectors=True)
        if not points or points[0].vector is None:
            raise point_not_found(name, point_id)
        return self.search(
            name,
            points[0].vector,
            filter=filter,
            limit=limit,
            offset=offset,
            score_threshold=score_threshold,
            exclude_ids=(point_id,),
        )

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
        """`search` awaited on an event loop. This default runs it through `off_loop`; a backend
        whose calls wait on a socket awaits the answer instead (`HostedEdgeIndex`)."""
        return await off_loop(
            self,
            functools.partial(
                self.search,
                name,
                vector,
                filter=filter,
                limit=limit,
                offset=offset,
                score_threshold=score_threshold,
                exclude_ids=exclude_ids,
            ),
        )

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
        """`search_near_point` awaited on an event loop, as `search_async`."""
        return await off_loop(
            self,
            functools.partial(
                self.search_near_point,
                name,
                point_id,
                filter=filter,
                limit=limit,
                offset=offset,
                score_threshold=score_threshold,
            ),
        )

    #: True where `search_groups` is the engine's own grouping, not an over-fetch.
    engine_groups: ClassVar[bool] = False

    def search_groups(
        self,
        name: str,
        vector: NDArray[np.float32],
        *,
        group_by: str,
        group_size: int = 3,
        limit: int = 10,
        filter: SearchFilter | None = None,
        score_threshold: float | None = None,
        exclude_ids: Sequence[str] = (),
    ) -> list[HitGroup]:
        """`search` grouped by the payload field ``group_by`` (`group_hits`): ``limit`` groups of
        up to ``group_size`` hits. Here by over-fetching plain hits, at most `GROUP_FETCH_MAX`;
        a backend with engine grouping overrides it."""
        if group_size < 1 or limit < 1:
            raise IndexStoreError("group_size and limit must be at least 1")
        fetch = max(64, 4 * limit * group_size)
        while True:
            wanted = min(fetch, GROUP_FETCH_MAX)
            hits = self.search(
                name,
                vector,
                filter=filter,
                limit=wanted,
                score_threshold=score_threshold,
                exclude_ids=exclude_ids,
            )
            groups = group_hits(hits, group_by, group_size=group_size, limit=limit)
            full = len(groups) == limit and all(len(g.hits) == group_size for g in groups)
            if full or len(hits) < wanted or wanted >= GROUP_FETCH_MAX:
                return groups
            fetch = wanted * 4

    @abstractmethod
    def retrieve(self, name: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[StoredPoint]:
        """The points that exist among ``ids`` (missing ids are left out)."""

    @abstractmethod
    def count(self, name: str, filter: SearchFilter | None = None) -> int: ...

    @abstractmethod
    def facet(
        self,
        name: str,
        field: str,
        *,
        filter: SearchFilter | None = None,
        limit: int = 100,
        exact: bool = True,
    ) -> dict[str, int]:
        """Point counts per value of an indexed keyword field, largest first. ``exact=False``: the
        engine's counts from its payload index instead of counting the points (1 M points: ~0.1 ms
        instead of 80-250 ms per field); for when the values matter more than their counts."""

    def scroll(
        self,
        name: str,
        *,
        filter: SearchFilter | None = None,
        batch_size: int = 1000,
        with_vectors: bool = False,
    ) -> Iterator[StoredPoint]:
        """Every point (matching the filter), streamed in pages of `scroll_page`. The first page is
        asked for at the call (`CollectionNotFound` then, not at the first ``next``)."""
        if batch_size < 1:
            raise IndexStoreError(f"batch_size must be at least 1, got {batch_size}")
        page = functools.partial(
            self.scroll_page, name, filter=filter, batch_size=batch_size, with_vectors=with_vectors
        )
        return _pages(page(), page)

    @abstractmethod
    def scroll_page(
        self,
        name: str,
        *,
        filter: SearchFilter | None = None,
        offset: Any = None,
        batch_size: int = 1000,
        with_vectors: bool = False,
    ) -> tuple[list[StoredPoint], Any]:
        """One page of `scroll` from ``offset`` (None: the first) and the offset of the next page
        (None after the last), for a caller that pages across requests. Offsets are point ids: the
        string form of one is accepted back."""

    @abstractmethod
    def delete(self, name: str, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def delete_by_filter(self, name: str, filter: SearchFilter) -> None: ...

    def overwrite_payloads(
        self,
        name: str,
        payloads: Mapping[str, dict[str, Any]],
        *,
        labels_from: Mapping[str, str] | None = None,
    ) -> None:
        """Replace the whole payload of each existing point (id → new payload), vectors untouched:
        a relabel without re-embedding. Ids that do not exist are left out. ``labels_from`` as
        for `upsert`."""
        raise IndexStoreError(f"{type(self).__name__} cannot overwrite payloads")

    def register_source(self, name: str, source_name: str, uri: str) -> None:
        """Record in the collection's metadata (``sources``: stable name → URI) where the objects
        of ``source_name`` are read from, for the server to read them again (thumbnails)."""
        sources = dict(self.collection_config(name).metadata.get("sources") or {})
        if sources.get(source_name) != uri:
            sources[source_name] = uri
            self.update_metadata(name, {"sources": sources})

    def source_overlaps(self, name: str, source_name: str, uri: str) -> tuple[Overlap, ...]:
        """The other source names of collection ``name`` that reach the files ``source_name`` read
        from ``uri`` reaches (`core.source_overlap`), from the collection's ``sources``."""
        return overlaps(source_name, uri, self.collection_config(name).metadata.get("sources") or {})

    def collection_info(self, name: str) -> dict[str, Any]:
        """Store-side state: ``points``, ``indexed_vectors``, ``status`` ("green" when indexing is
        done, "yellow" while optimising, "unknown" where the store does not say)."""
        return {"points": self.count(name), "indexed_vectors": None, "status": "unknown"}

    # -- aliases: a name that points at one collection, switched atomically -----------------------

    def aliases(self) -> dict[str, str]:
        """alias → collection."""
        raise IndexStoreError(f"{type(self).__name__} does not support aliases")

    def set_alias(self, alias: str, collection: str) -> None:
        """Point ``alias`` at ``collection`` in one atomic step (created or switched)."""
        raise IndexStoreError(f"{type(self).__name__} does not support aliases")

    def delete_alias(self, alias: str) -> None:
        """Remove ``alias``; `CollectionNotFound` if there is no such alias."""
        raise IndexStoreError(f"{type(self).__name__} does not support aliases")

    def optimize(self, name: str) -> None:  # noqa: B027 - optional hook
        """Build/merge index structures now (bulk loads); a no-op where the store does it itself."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files and connections."""

    # -- collection files: snapshots and the trash (the embedded store only) ----------------------

    #: True where collections are files this process can copy and move (`export_collection`, ...).
    supports_files: ClassVar[bool] = False

    def export_collection(self, name: str, target: str) -> int:
        """Copy the collection's files to the new directory ``target`` consistently (writes to it
        wait meanwhile); the number of points copied."""
        raise IndexStoreError(
            f"{type(self).__name__} keeps no collection files: use the store's own snapshots"
        )

    def detach_collection(self, name: str, target: str) -> None:
        """Close the collection and move its files to ``target``; it is gone from the store."""
        raise IndexStoreError(
            f"{type(self).__name__} keeps no collection files: use the store's own snapshots"
        )

    def attach_collection(self, source: str, config: CollectionConfig, *, move: bool = False) -> None:
        """Make the collection files under ``source`` the collection ``config.name`` (with
        ``config``); a copy unless ``move``. `CollectionExists` when the name is taken."""
        raise IndexStoreError(
            f"{type(self).__name__} keeps no collection files: use the store's own snapshots"
        )


def _pages(
    first: tuple[list[StoredPoint], Any], fetch: Callable[..., tuple[list[StoredPoint], Any]]
) -> Iterator[StoredPoint]:
    """The points of ``first`` and of the pages after it: ``fetch(offset=...)`` until a page says
    it has no next offset."""
    points, offset = first
    while True:
        yield from points
        if offset is None:
            return
        points, offset = fetch(offset=offset)
