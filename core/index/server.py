"""The scaled-out backend: a Qdrant server or cluster through qdrant-client (also its local mode).

The CollectionConfig (metadata included) lives in the Qdrant collection's own ``metadata`` under
the key ``radsearch``, so it survives restarts and is visible to every process using the server.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import UnexpectedResponse

from core.config import StoreSettings
from core.errors import CollectionExists, CollectionNotFound, IndexStoreError
from core.index._shared import (
    OVERSAMPLING,
    carry_labels,
    check_batch,
    check_config,
    check_facet,
    check_name,
    config_from_dict,
    config_to_dict,
    facet_counts,
    filter_conditions,
    filter_exclusions,
    hnsw_params,
    known_ids,
    payloads_to_overwrite,
    query_vector,
    stored_point,
    stored_points,
)
from core.index.base import CollectionConfig, Hit, HitGroup, StoredPoint, VectorIndex
from core.payload import INDEXED_FIELDS, SearchFilter
from core.suggest import did_you_mean

__all__ = ["QdrantServerIndex"]

_T = TypeVar("_T")
_META_KEY = "radsearch"


def _is_not_found(exc: BaseException) -> bool:
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code == 404
    if isinstance(exc, ValueError):  # local mode
        return "not found" in str(exc)
    code = getattr(exc, "code", None)  # gRPC
    return callable(code) and getattr(code(), "name", "") == "NOT_FOUND"


def _is_conflict(exc: BaseException) -> bool:
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code == 409
    if isinstance(exc, ValueError):
        return "already exists" in str(exc)
    code = getattr(exc, "code", None)
    return callable(code) and getattr(code(), "name", "") == "ALREADY_EXISTS"


def _to_filter(
    filter: SearchFilter | None, exclude_ids: Sequence[str] = (), *, require: bool = False
) -> models.Filter | None:
    conditions = filter_conditions(filter, require=require)
    must: list[models.Condition] = [
        models.FieldCondition(key=key, match=models.MatchAny(any=values)) for key, values in conditions
    ]
    excluded = known_ids(exclude_ids)
    must_not: list[models.Condition] = [models.HasIdCondition(has_id=list(excluded))] if excluded else []
    must_not += [
        models.FieldCondition(key=key, match=models.MatchAny(any=values))
        for key, values in filter_exclusions(filter)
    ]
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)


class QdrantServerIndex(VectorIndex):
    """Collections in a Qdrant server (or qdrant-client's local mode, for tests).

    ``acorn`` (default ``store.acorn``) turns on ACORN for filtered searches (Qdrant >= 1.16; better
    recall under selective filters), which the server applies below ``store.acorn_max_selectivity``:
    filtered HNSW loses recall on tight clusters (bench/search.py, 25 % modality filter: recall@10
    0.93 at ef 128), ACORN gave 0.9995 there for ~0.4 ms more per query. The server plans the
    filtered search itself: edge's own plan (post-filtering, per-share ef) is not repeated here.
    """

    def __init__(self, client: QdrantClient, store: StoreSettings, *, acorn: bool | None = None) -> None:
        self._client = client
        self._store = store
        self._acorn = store.acorn if acorn is None else acorn
        self._configs: dict[str, CollectionConfig] = {}
        self._lock = threading.Lock()

    def _call(self, name: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except Exception as exc:
            if _is_not_found(exc):
                with self._lock:
                    self._configs.pop(name, None)
                raise CollectionNotFound(f"collection {name!r} not found") from exc
            raise

    # -- collections -------------------------------------------------------------------------

    def create_collection(self, config: CollectionConfig) -> None:
        """Create the collection with its config in Qdrant metadata, then the payload indexes."""
        check_config(config)
        stored = config_to_dict(config)
        if self._client.collection_exists(config.name):
            raise CollectionExists(f"collection {config.name!r} already exists")
        quantization = (
            models.ScalarQuantization(
                scalar=models.ScalarQuantizationConfig(
                    type=models.ScalarType.INT8, quantile=0.99, always_ram=True
                )
            )
            if config.quantization == "int8"
            else None
        )
        hnsw = models.HnswConfigDiff(**hnsw_params(config, self._store))
        try:
            self._client.create_collection(
                config.name,
                vectors_config=models.VectorParams(
                    size=config.dim, distance=models.Distance.COSINE, on_disk=config.on_disk or None
                ),
                hnsw_config=hnsw,
                quantization_config=quantization,
                metadata={_META_KEY: stored},
            )
        except Exception as exc:
            if _is_conflict(exc):
                raise CollectionExists(f"collection {config.name!r} already exists") from exc
            raise
        try:
            for field in INDEXED_FIELDS:
                self._client.create_payload_index(
                    config.name, field, field_schema=models.PayloadSchemaType.KEYWORD, wait=True
                )
        except BaseException:
            self._client.delete_collection(config.name)
            raise
        with self._lock:
            self._configs[config.name] = config_from_dict(stored)

    def drop_collection(self, name: str) -> None:
        with self._lock:
            self._configs.pop(name, None)
        if not self._client.collection_exists(name):
            raise CollectionNotFound(f"collection {name!r} not found")
        self._call(name, lambda: self._client.delete_collection(name))

    def list_collections(self) -> list[str]:
        return sorted(c.name for c in self._client.get_collections().collections)

    def collection_exists(self, name: str) -> bool:
        return bool(self._client.collection_exists(name))

    def _fetch_config(self, name: str) -> CollectionConfig:
        info = self._call(name, lambda: self._client.get_collection(name))
        metadata = info.config.metadata or {}
        raw = metadata.get(_META_KEY)
        if isinstance(raw, dict):
            config = config_from_dict(raw)
        else:
            # A collection radsearch did not create: describe it from its vector params.
            params = info.config.params.vectors
            if not isinstance(params, models.VectorParams):
                raise IndexStoreError(f"collection {name!r} has named vectors; radsearch uses one vector")
            config = CollectionConfig(name=name, dim=params.size, metadata=dict(metadata))
        with self._lock:
            self._configs[name] = config
        return config

    def collection_config(self, name: str) -> CollectionConfig:
        return self._fetch_config(name)

    def _config(self, name: str) -> CollectionConfig:
        cached = self._configs.get(name)
        return cached if cached is not None else self._fetch_config(name)

    def update_metadata(self, name: str, metadata: dict[str, Any]) -> None:
        current = self._fetch_config(name)
        config = dataclasses.replace(current, metadata={**current.metadata, **metadata})
        stored = config_to_dict(config)
        self._call(name, lambda: self._client.update_collection(name, metadata={_META_KEY: stored}))
        with self._lock:
            self._configs[name] = config_from_dict(stored)

    def _is_local(self) -> bool:
        return type(getattr(self._client, "_client", None)).__name__ == "QdrantLocal"

    def collection_info(self, name: str) -> dict[str, Any]:
        info = self._call(name, lambda: self._client.get_collection(name))
        status = getattr(info.status, "value", str(info.status))
        indexed = info.indexed_vectors_count
        return {
            "points": int(info.points_count or 0),
            "indexed_vectors": None if indexed is None else int(indexed),
            "segments": int(info.segments_count or 0),
            "status": str(status),
        }

    # -- aliases: Qdrant's own, switched by one update_collection_aliases request ------------------

    def aliases(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self._client.get_aliases().aliases}

    def set_alias(self, alias: str, collection: str) -> None:
        check_name(alias)
        if not self._client.collection_exists(collection) or collection in self.aliases():
            raise CollectionNotFound(f"collection {collection!r} not found")
        if alias in self.list_collections():
            raise CollectionExists(f"{alias!r} is a collection; an alias needs a name of its own")
        operations: list[Any] = []
        if alias in self.aliases():
            operations.append(models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        operations.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)
            )
        )
        # Delete and create in one request: Qdrant applies them atomically.
        self._client.update_collection_aliases(change_aliases_operations=operations)

    def delete_alias(self, alias: str) -> None:
        aliases = self.aliases()
        if alias not in aliases:
            raise CollectionNotFound(f"alias {alias!r} not found{did_you_mean(alias, aliases)}")
        self._client.update_collection_aliases(
            change_aliases_operations=[
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
            ]
        )

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
        """Validate everything, then write one batch and wait until it is applied."""
        arr, canonical = check_batch(ids, vectors, payloads, self._config(name).dim)
        if not canonical:
            return
        payloads = carry_labels(functools.partial(self.retrieve, name), canonical, payloads, labels_from)
        if insert_only:
            # Qdrant's update_mode=insert_only needs a 1.17 server and local mode ignores it: drop
            # the ids that exist first; the server-side mode then closes the remaining race.
            existing = {p.id for p in self.retrieve(name, canonical)}
            keep = [i for i, pid in enumerate(canonical) if pid not in existing]
            if not keep:
                return
            canonical = [canonical[i] for i in keep]
            arr = arr[keep]
            payloads = [payloads[i] for i in keep]
        batch = models.Batch(ids=list(canonical), vectors=arr.tolist(), payloads=[dict(p) for p in payloads])
        mode = models.UpdateMode.INSERT_ONLY if insert_only and not self._is_local() else None
        self._call(name, lambda: self._client.upsert(name, points=batch, wait=True, update_mode=mode))

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
        config = self._config(name)
        query = query_vector(vector, config.dim, limit, offset)
        quantization = (
            models.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING)
            if config.quantization == "int8"
            else None
        )
        params = models.SearchParams(
            hnsw_ef=hnsw_ef if hnsw_ef is not None else self._store.hnsw_ef,
            exact=exact,
            quantization=quantization,
            acorn=(
                models.AcornSearchParams(enable=True, max_selectivity=self._store.acorn_max_selectivity)
                if self._acorn and filter is not None and not filter.is_empty()
                else None
            ),
        )
        engine_filter = _to_filter(filter, exclude_ids)
        response = self._call(
            name,
            lambda: self._client.query_points(
                name,
                query=query,
                query_filter=engine_filter,
                search_params=params,
                limit=limit,
                offset=offset,
                score_threshold=score_threshold,
                with_payload=True,
                with_vectors=False,
            ),
        )
        return [
            Hit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {})) for p in response.points
        ]

    engine_groups = True

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
        """The engine's own grouping (``query_points_groups``); points without ``group_by`` are
        left out, as `VectorIndex.search_groups` leaves them out."""
        config = self._config(name)
        query = query_vector(vector, config.dim, limit, 0)
        if group_size < 1:
            raise IndexStoreError("group_size must be at least 1")
        response = self._call(
            name,
            lambda: self._client.query_points_groups(
                name,
                group_by=group_by,
                query=query,
                query_filter=_to_filter(filter, exclude_ids),
                search_params=models.SearchParams(hnsw_ef=self._store.hnsw_ef),
                limit=limit,
                group_size=group_size,
                score_threshold=score_threshold,
                with_payload=True,
                with_vectors=False,
            ),
        )
        return [
            HitGroup(
                key=str(group.id),
                hits=[
                    Hit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {})) for p in group.hits
                ],
            )
            for group in response.groups
        ]

    def retrieve(self, name: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[StoredPoint]:
        """The points that exist among ``ids`` (missing ids are left out)."""
        self._config(name)
        wanted = list(dict.fromkeys(known_ids(ids)))
        if not wanted:
            return []
        records = self._call(
            name,
            lambda: self._client.retrieve(
                name, ids=list(wanted), with_payload=True, with_vectors=with_vectors
            ),
        )
        return stored_points(wanted, records, with_vectors)

    def count(self, name: str, filter: SearchFilter | None = None) -> int:
        engine_filter = _to_filter(filter)
        result = self._call(name, lambda: self._client.count(name, count_filter=engine_filter, exact=True))
        return int(result.count)

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
        engine_filter = _to_filter(filter)
        response = self._call(
            name,
            lambda: self._client.facet(name, key=field, facet_filter=engine_filter, limit=limit, exact=exact),
        )
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
        """One page of `scroll` from ``offset`` (None: the first), and the next page's offset."""
        records, next_offset = self._call(
            name,
            functools.partial(
                self._client.scroll,
                name,
                scroll_filter=_to_filter(filter),
                limit=batch_size,
                offset=offset,
                with_payload=True,
                with_vectors=with_vectors,
            ),
        )
        return [stored_point(r, with_vectors) for r in records], next_offset

    def delete(self, name: str, ids: Sequence[str]) -> None:
        self._config(name)
        wanted = known_ids(ids)
        if not wanted:
            return
        selector = models.PointIdsList(points=list(wanted))
        self._call(name, lambda: self._client.delete(name, points_selector=selector, wait=True))

    def overwrite_payloads(
        self,
        name: str,
        payloads: Mapping[str, dict[str, Any]],
        *,
        labels_from: Mapping[str, str] | None = None,
    ) -> None:
        """One overwrite per point, in one batch request."""
        self._config(name)
        wanted = payloads_to_overwrite(functools.partial(self.retrieve, name), payloads, labels_from)
        if not wanted:
            return
        existing = {
            str(r.id)
            for r in self._call(
                name, lambda: self._client.retrieve(name, ids=list(wanted), with_payload=False)
            )
        }
        operations: list[Any] = [
            models.OverwritePayloadOperation(
                overwrite_payload=models.SetPayload(payload=dict(wanted[pid]), points=[pid])
            )
            for pid in wanted
            if pid in existing
        ]
        if operations:
            self._call(name, lambda: self._client.batch_update_points(name, operations, wait=True))

    def delete_by_filter(self, name: str, filter: SearchFilter) -> None:
        engine_filter = _to_filter(filter, require=True)
        assert engine_filter is not None
        selector = models.FilterSelector(filter=engine_filter)
        self._call(name, lambda: self._client.delete(name, points_selector=selector, wait=True))

    def close(self) -> None:
        """Close the client's connections."""
        self._client.close()
