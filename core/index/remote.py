"""The embedded store seen through the API of the process that owns it.

Qdrant Edge lets one process open a store (`core.ownership`); on one machine that is
``radsearch serve``. Celery workers never open it: they embed, and `OwnerIndex` sends what they
write to the owner's batch route (``PUT /v1/collections/{name}/points``) and asks it for what they
read (catalog entries, the bookkeeping fields of stored points). So any number of worker processes
fill one collection, and the owner validates and writes every point.

It implements what the ingest side uses: the catalog (collections, their entries, aliases),
``upsert``, ``retrieve``/``scroll`` of bookkeeping fields (source, key, frame, n_frames,
frames_sampled, etag, size, labels_hash; never vectors, labels or pixels), ``delete``, ``delete_by_filter``,
``overwrite_payloads`` (relabels), ``register_source``, ``collection_info`` and ``optimize``.
Everything else raises `IndexStoreError`: search through the HTTP API.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from core.api_client import ApiClient
from core.config import Settings
from core.errors import CollectionNotFound, IndexStoreError, InvalidVector, ServerUnavailable
from core.index.base import CollectionConfig, Hit, StoredPoint, VectorIndex
from core.payload import SearchFilter
from core.source_overlap import Overlap

__all__ = ["OwnerIndex", "locate_owner"]

# Points per batch request, and the JSON they may take: well under the route's body limit (the
# upload limit, 64 MiB by default); a 768-d vector is ~16 kB of JSON.
_MAX_POINTS_PER_REQUEST = 256
_MAX_BATCH_BYTES = 8 * 1024 * 1024
_BYTES_PER_VALUE = 22
_PAYLOAD_BYTES = 1024
# Ids per look-up or deletion request, and points per listed page.
_IDS_PER_REQUEST = 1000
# Building a large collection's index takes minutes (1 M x 512 on 2 cores: ~4 min).
_OPTIMIZE_TIMEOUT_S = 3600.0


def locate_owner(settings: Settings) -> str:
    """The URL of the radsearch server that writes the store: ``settings.url`` (RADSEARCH_URL), else
    the owner of the data dir while it serves its API; `ServerUnavailable` saying how to start one."""
    if settings.url:
        return settings.url
    from core.ownership import current_owner

    owner = current_owner(settings.index_dir)
    if owner is not None and owner.url:
        return owner.url
    held = f" (it is held by {owner.describe()}, which serves no API)" if owner is not None else ""
    raise ServerUnavailable(
        f"no radsearch server owns the store in {settings.index_dir}{held}; workers send their "
        f"batches to it: start `radsearch serve` on that data dir (RADSEARCH_DATA_DIR={settings.data_dir}), "
        "or point RADSEARCH_URL at the server that owns it"
    )


def _json_default(value: Any) -> Any:
    # numpy scalars reach payloads from readers (frame indices, sizes).
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _points_per_request(dim: int) -> int:
    return max(1, min(_MAX_POINTS_PER_REQUEST, _MAX_BATCH_BYTES // (dim * _BYTES_PER_VALUE + _PAYLOAD_BYTES)))


def _filter_body(filter: SearchFilter | None) -> dict[str, list[str]] | None:
    if filter is None:
        return None
    if filter.exclusions():
        raise IndexStoreError("the owner's ingest API takes no exclusions (patient or study) in a filter")
    # as given, not as matched: the owner expands the values itself (`SearchFilter.conditions`)
    return dict(filter.fields())


def _stored(item: dict[str, Any]) -> StoredPoint:
    payload = {k: v for k, v in item.items() if k != "id" and v is not None}
    return StoredPoint(id=str(item["id"]), payload=payload)


def _with_labels_from(point: dict[str, Any], labels_from: Mapping[str, str] | None) -> dict[str, Any]:
    """``point`` as the owner's routes take it, with ``labels_from`` where it names one."""
    source = labels_from.get(point["id"]) if labels_from else None
    return {**point, "labels_from": source} if source is not None else point


class OwnerIndex(VectorIndex):
    """The owner's collections over its HTTP API (`ApiClient`: remote errors come back typed).

    ``connect`` makes a client of the owner; it is asked again after the owner could not be
    reached, so a restarted server (a new port in its owner record) is found without restarting
    the worker.
    """

    searches_here = False  # the owner calibrates as it optimizes (`core.calibration`)

    def __init__(self, connect: Callable[[], ApiClient]) -> None:
        self._connect = connect
        self._client: ApiClient | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_settings(cls, settings: Settings) -> OwnerIndex:
        """The owner of ``settings``' data dir (or ``settings.url``), with ``settings.api_key``."""
        return cls(lambda: ApiClient.from_settings(locate_owner(settings), settings))

    # -- transport -----------------------------------------------------------------------------

    def _api(self) -> ApiClient:
        with self._lock:
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        client = self._api()
        if body is not None:
            kwargs["content"] = json.dumps(body, default=_json_default, allow_nan=False)
            kwargs["headers"] = {"content-type": "application/json"}
        try:
            return client.request(method, path, **kwargs)
        except ServerUnavailable:
            with self._lock:
                if self._client is client:
                    self._client = None
            client.close()
            raise

    @staticmethod
    def _path(name: str, suffix: str = "") -> str:
        return f"/v1/collections/{name}{suffix}"

    def _detail(self, name: str) -> dict[str, Any]:
        detail: dict[str, Any] = self._request("GET", self._path(name))
        return detail

    # -- the catalog ---------------------------------------------------------------------------

    def list_collections(self) -> list[str]:
        body = self._request("GET", "/v1/collections")
        return sorted(str(c["name"]) for c in body["collections"])

    def collection_exists(self, name: str) -> bool:
        try:
            self._detail(name)
        except CollectionNotFound:
            return False
        return True

    def collection_config(self, name: str) -> CollectionConfig:
        """The collection's config as its owner reports it, with the catalog entry as metadata."""
        detail = self._detail(name)
        entry = {
            "name": detail["name"],
            "encoder": detail["spec"],
            "weights_version": detail["weights"],
            "dim": detail["dim"],
            "created_at": detail["created_at"],
            "quantization": detail["quantization"],
            "on_disk": detail["on_disk"],
            "accept_burned_in": bool(detail.get("accept_burned_in", False)),
            "id_scheme": detail.get("id_scheme", "v1"),
        }
        return CollectionConfig(
            name=str(detail["name"]),
            dim=int(detail["dim"]),
            metadata={"catalog": entry},
            quantization=detail["quantization"],
            on_disk=bool(detail["on_disk"]),
        )

    def aliases(self) -> dict[str, str]:
        """alias → collection, from each collection's record (one request per collection)."""
        out: dict[str, str] = {}
        for name in self.list_collections():
            try:
                detail = self._detail(name)
            except CollectionNotFound:  # dropped meanwhile
                continue
            out.update(dict.fromkeys(detail.get("aliases", []), str(detail["name"])))
        return out

    def collection_info(self, name: str) -> dict[str, Any]:
        detail = self._detail(name)
        indexing = detail.get("indexing") or {}
        return {
            "points": int(detail["points"]),
            "indexed_vectors": indexing.get("indexed_vectors"),
            "segments": indexing.get("segments"),
            "status": indexing.get("status", "unknown"),
        }

    def count(self, name: str, filter: SearchFilter | None = None) -> int:
        if filter is not None and not filter.is_empty():
            raise IndexStoreError("a filtered count is not available through the owner's ingest API")
        return int(self._detail(name)["points"])

    # -- points --------------------------------------------------------------------------------

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
        """Send the points in batches sized for the route's body limit; the owner validates them
        (dimension, NaN/Inf, zero norm) and writes each batch durably before it answers. The
        owner carries the labels ``labels_from`` names (a worker never reads labels)."""
        arr = np.asarray(vectors, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] != len(ids) or len(payloads) != len(ids):
            raise InvalidVector(
                f"got {arr.shape[0] if arr.ndim == 2 else arr.shape} vectors and {len(payloads)} "
                f"payloads for {len(ids)} ids"
            )
        if not ids:
            return
        if not np.isfinite(arr).all():  # JSON cannot carry them; the owner would refuse them too
            raise InvalidVector(f"vector {int(np.argmin(np.isfinite(arr).all(axis=1)))} contains NaN or Inf")
        step = _points_per_request(arr.shape[1])
        for start in range(0, len(ids), step):
            stop = start + step
            points = [
                _with_labels_from({"id": str(pid), "vector": row.tolist(), "payload": payload}, labels_from)
                for pid, row, payload in zip(
                    ids[start:stop], arr[start:stop], payloads[start:stop], strict=True
                )
            ]
            self._request("PUT", self._path(name, "/points"), {"points": points, "insert_only": insert_only})

    def retrieve(self, name: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[StoredPoint]:
        """The points that exist among ``ids``, with their bookkeeping fields as payload."""
        if with_vectors:
            raise IndexStoreError("stored vectors are not available through the owner's ingest API")
        out: list[StoredPoint] = []
        wanted = list(dict.fromkeys(ids))
        for start in range(0, len(wanted), _IDS_PER_REQUEST):
            chunk = wanted[start : start + _IDS_PER_REQUEST]
            body = self._request("POST", self._path(name, "/points/lookup"), {"ids": chunk})
            out += [_stored(item) for item in body["points"]]
        return out

    def scroll_page(
        self,
        name: str,
        *,
        filter: SearchFilter | None = None,
        offset: Any = None,
        batch_size: int = 1000,
        with_vectors: bool = False,
    ) -> tuple[list[StoredPoint], Any]:
        if with_vectors:
            raise IndexStoreError("stored vectors are not available through the owner's ingest API")
        request = {
            "filter": _filter_body(filter),
            "limit": min(batch_size, 10_000),
            "offset": None if offset is None else str(offset),
        }
        body = self._request("POST", self._path(name, "/points/scroll"), request)
        return [_stored(item) for item in body["points"]], body.get("next_offset")

    def delete(self, name: str, ids: Sequence[str]) -> None:
        wanted = list(dict.fromkeys(ids))
        for start in range(0, len(wanted), _IDS_PER_REQUEST):
            chunk = wanted[start : start + _IDS_PER_REQUEST]
            self._request("POST", self._path(name, "/points/delete"), {"ids": chunk})

    def delete_by_filter(self, name: str, filter: SearchFilter) -> None:
        body = _filter_body(filter)
        if not body:
            raise IndexStoreError("an empty filter would match every point; name at least one field")
        self._request("POST", self._path(name, "/points/delete"), {"filter": body})

    def overwrite_payloads(
        self,
        name: str,
        payloads: Mapping[str, dict[str, Any]],
        *,
        labels_from: Mapping[str, str] | None = None,
    ) -> None:
        """Send the new payloads to the owner (it relabels; vectors stay), in requests of 1,000."""
        items = [
            _with_labels_from({"id": str(pid), "payload": payload}, labels_from)
            for pid, payload in payloads.items()
        ]
        for start in range(0, len(items), _IDS_PER_REQUEST):
            chunk = items[start : start + _IDS_PER_REQUEST]
            self._request("POST", self._path(name, "/points/payload"), {"points": chunk})

    def register_source(self, name: str, source_name: str, uri: str) -> None:
        """Have the owner record where ``source_name`` is read from."""
        self._request("PUT", self._path(name, "/sources"), {"name": source_name, "uri": uri})

    def source_overlaps(self, name: str, source_name: str, uri: str) -> tuple[Overlap, ...]:
        """Ask the owner, which alone knows where each source name is read from."""
        body = {"name": source_name, "uri": uri}
        answer: dict[str, Any] = self._request("POST", self._path(name, "/sources/overlaps"), body)
        return tuple(Overlap(o["name"], strip=o["strip"], add=o["add"]) for o in answer["overlaps"])

    def optimize(self, name: str) -> None:
        """Have the owner build the collection's index now (it answers once it is built)."""
        self._request("POST", self._path(name, "/optimize"), timeout=_OPTIMIZE_TIMEOUT_S)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- not available to the ingest side --------------------------------------------------------

    def _unavailable(self, what: str) -> IndexStoreError:
        return IndexStoreError(
            f"{what} is not available through the owner's ingest API; use the radsearch server's "
            "HTTP API or command line (which go through the owner too)"
        )

    def create_collection(self, config: CollectionConfig) -> None:
        raise self._unavailable("creating a collection")

    def drop_collection(self, name: str) -> None:
        raise self._unavailable("dropping a collection")

    def update_metadata(self, name: str, metadata: dict[str, Any]) -> None:
        raise self._unavailable("changing a collection's metadata")

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
        raise self._unavailable("searching")

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
        raise self._unavailable("searching")

    def facet(
        self,
        name: str,
        field: str,
        *,
        filter: SearchFilter | None = None,
        limit: int = 100,
        exact: bool = True,
    ) -> dict[str, int]:
        raise self._unavailable("faceting")

    def set_alias(self, alias: str, collection: str) -> None:
        raise self._unavailable("setting an alias")

    def delete_alias(self, alias: str) -> None:
        raise self._unavailable("deleting an alias")
