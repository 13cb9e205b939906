"""The narrow vector-index interface both backends implement (and one contract suite tests).

Every collection: cosine distance on L2-normalised float32 vectors, keyword payload indexes on
`core.payload.INDEXED_FIELDS` created before any data, and a metadata dict (the collection catalog
entry: encoder spec, weights version, ...) stored with the collection.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from core.errors import IndexStoreError, PointNotFound
from core.payload import SearchFilter

__all__ = ["CollectionConfig", "Hit", "StoredPoint", "VectorIndex"]


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


class VectorIndex(ABC):
    """A set of named collections of vectors with payloads.

    Errors: `CollectionNotFound`, `CollectionExists`, `InvalidVector` (NaN, Inf, zero norm, wrong
    dimension: checked before the store is touched), `InvalidFilter`.
    """

    #: True when every call is CPU-bound work in this process that holds the GIL throughout (an
    #: embedded engine): an event loop gains nothing by handing such a call to a worker thread,
    #: which can run only while the loop waits, and pays two thread switches for it.
    holds_gil: ClassVar[bool] = False

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
    ) -> None:
        """Insert or overwrite points; durable when it returns. Vectors are validated first.

        ``insert_only`` leaves points that already exist untouched (a backfill never overwrites what
        a concurrent ingest wrote)."""

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
            raise PointNotFound(f"point {point_id!r} does not exist in {name!r}")
        return self.search(
            name,
            points[0].vector,
            filter=filter,
            limit=limit,
            offset=offset,
            score_threshold=score_threshold,
            exclude_ids=(point_id,),
        )

    @abstractmethod
    def retrieve(self, name: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[StoredPoint]:
        """The points that exist among ``ids`` (missing ids are left out)."""

    @abstractmethod
    def count(self, name: str, filter: SearchFilter | None = None) -> int: ...

    @abstractmethod
    def facet(
        self, name: str, field: str, *, filter: SearchFilter | None = None, limit: int = 100
    ) -> dict[str, int]:
        """Point counts per value of an indexed keyword field, largest first."""

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

    def overwrite_payloads(self, name: str, payloads: Mapping[str, dict[str, Any]]) -> None:
        """Replace the whole payload of each existing point (id → new payload), vectors untouched:
        a relabel without re-embedding. Ids that do not exist are left out."""
        raise IndexStoreError(f"{type(self).__name__} cannot overwrite payloads")

    def register_source(self, name: str, source_name: str, uri: str) -> None:
        """Record in the collection's metadata (``sources``: stable name → URI) where the objects
        of ``source_name`` are read from, for the server to read them again (thumbnails)."""
        sources = dict(self.collection_config(name).metadata.get("sources") or {})
        if sources.get(source_name) != uri:
            sources[source_name] = uri
            self.update_metadata(name, {"sources": sources})

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
