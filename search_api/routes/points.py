"""Points written through the server that owns the store (role ``ingest``).

The batch route is how Celery workers fill a collection of the embedded store, which only its
owner may open: they fetch, decode and embed, then send each batch here, so any number of worker
processes fill one collection. It is also how a user brings vectors computed elsewhere. The owner
applies what the pipeline applies in-process: vectors are validated (the collection's dimension,
finite, non-zero) and L2-normalised, payloads pass the allow-list of ``core.payload``. Writes are
idempotent by point id.

Beside it: deletion (by ids or by a filter), the bookkeeping the ingest side needs (which objects
are stored at which ETag: a look-up by ids and a paged listing, never labels or pixels), and
building the collection's index when a bulk load ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from numpy.typing import NDArray

from core.calibration import calibrate_loaded
from core.catalog import CollectionEntry
from core.config import Settings
from core.errors import ConfigError, InvalidFilter, InvalidVector, StoreFull, StoreOwned
from core.index.base import StoredPoint, VectorIndex
from core.payload import SearchFilter, build_payload
from core.s3 import S3_URI
from core.vectors import validate_vectors
from ingest.sources.base import check_source_name
from search_api.backfill_jobs import check_local_path
from search_api.deps import CollectionDep, IndexDep, SettingsDep
from search_api.errors import error_responses
from search_api.offload import in_thread
from search_api.routing import RouteInfo
from search_api.schemas import (
    OptimizePublic,
    PointBookkeeping,
    PointIn,
    PointPayloadUpdate,
    PointsBookkeeping,
    PointsDelete,
    PointsDeleted,
    PointsLookup,
    PointsPayloadOverwrite,
    PointsScroll,
    PointsUpsert,
    PointsUpserted,
    SourceOverlapPublic,
    SourceOverlaps,
    SourceRegistration,
    parse_filter,
)
from search_api.security import Role, require_role

__all__ = ["BOOKKEEPING_FIELDS", "router", "takes_batches"]

#: The payload fields the ingest role reads back: enough to skip unchanged objects and reconcile.
BOOKKEEPING_FIELDS: tuple[str, ...] = (
    "source",
    "key",
    "frame",
    "n_frames",
    "frames_sampled",
    "etag",
    "size",
    "labels_hash",
    "instance_hash",  # a DICOM frame (one image under any source name), as a keyed hash
)


router = APIRouter(
    prefix="/v1/collections",
    tags=["points"],
    dependencies=[require_role(Role.INGEST)],
)


def _vectors(points: Sequence[PointIn], dim: int) -> NDArray[np.float32]:
    """The batch's vectors, validated and L2-normalised; `InvalidVector` naming the point."""
    for i, point in enumerate(points):
        if len(point.vector) != dim:
            raise InvalidVector(
                f"points[{i}].vector has {len(point.vector)} values; the collection's vectors have {dim}",
                field=f"points[{i}].vector",
            )
    rows = [point.vector for point in points]
    try:
        return validate_vectors(rows, dim)
    except InvalidVector:
        with np.errstate(over="ignore"):
            arr = np.asarray(rows, dtype=np.float32)
        finite = np.isfinite(arr).all(axis=1)
        if not finite.all():
            at = f"points[{int(np.argmin(finite))}].vector"
            raise InvalidVector(f"{at} contains NaN or Inf", field=at) from None
        at = f"points[{int(np.argmax(np.linalg.norm(arr, axis=1) < 1e-12))}].vector"
        raise InvalidVector(f"{at} has zero norm", field=at) from None


def _labels_from(points: Sequence[PointIn | PointPayloadUpdate]) -> dict[str, str]:
    return {str(point.id): str(point.labels_from) for point in points if point.labels_from is not None}


def _upsert(index: VectorIndex, entry: CollectionEntry, body: PointsUpsert) -> PointsUpserted:
    vectors = _vectors(body.points, entry.dim)
    ids = [str(point.id) for point in body.points]
    payloads = [build_payload(point.payload.model_dump(exclude_none=True)) for point in body.points]
    index.upsert(
        entry.name,
        ids,
        vectors,
        payloads,
        insert_only=body.insert_only,
        labels_from=_labels_from(body.points),
    )
    return PointsUpserted(collection=entry.name, upserted=len(ids))


@router.put("/{name}/points", responses=error_responses(InvalidVector, StoreFull, StoreOwned))
async def upsert_points(entry: CollectionDep, body: PointsUpsert, index: IndexDep) -> PointsUpserted:
    """Write a batch of points (id, vector, payload) into a collection or the one an alias names.

    The same id overwrites (``insert_only`` leaves existing points untouched), so a batch sent
    twice stores each point once. Vectors must have the collection's dimension, be finite and
    non-zero (400 naming the point otherwise); they are stored L2-normalised. A payload field
    outside the allow-list is refused (400 ``unknown_field``). This route takes large bodies (the
    upload limit, ``RADSEARCH_API__MAX_UPLOAD_BYTES``): send big loads in batches of a few hundred
    points.
    """
    return await in_thread(_upsert, index, entry, body)


def _overwrite(index: VectorIndex, entry: CollectionEntry, body: PointsPayloadOverwrite) -> PointsUpserted:
    payloads = {
        str(point.id): build_payload(point.payload.model_dump(exclude_none=True)) for point in body.points
    }
    index.overwrite_payloads(entry.name, payloads, labels_from=_labels_from(body.points))
    return PointsUpserted(collection=entry.name, upserted=len(payloads))


@router.post("/{name}/points/payload", responses=error_responses(StoreFull, StoreOwned))
async def overwrite_payloads(
    entry: CollectionDep, body: PointsPayloadOverwrite, index: IndexDep
) -> PointsUpserted:
    """Replace the payload of existing points, their vectors untouched (a relabel: a corrected
    manifest row on an unchanged image). Ids that do not exist are left out; a field outside the
    allow-list is refused (400 ``unknown_field``)."""
    return await in_thread(_overwrite, index, entry, body)


def _checked_uri(body: SourceRegistration, settings: Settings, open_api: bool) -> str:
    """The registration's URI; a folder only where this server may read it (the same rule as an
    ingest job's source folder), resolved."""
    check_source_name(body.name, field="name")
    if S3_URI.match(body.uri):
        return body.uri
    return str(check_local_path(body.uri, settings=settings, open_api=open_api, what="source folder"))


def _register(
    index: VectorIndex, entry: CollectionEntry, body: SourceRegistration, settings: Settings, open_api: bool
) -> None:
    index.register_source(entry.name, body.name, _checked_uri(body, settings, open_api))


def _overlaps(
    index: VectorIndex, entry: CollectionEntry, body: SourceRegistration, settings: Settings, open_api: bool
) -> SourceOverlaps:
    check_source_name(body.name, field="name")
    uri = body.uri  # a bucket or a DICOMweb service: compared as given; a folder: resolved
    if uri.startswith("/"):
        uri = str(check_local_path(uri, settings=settings, open_api=open_api, what="source folder"))
    found = index.source_overlaps(entry.name, body.name, uri)
    return SourceOverlaps(
        overlaps=[SourceOverlapPublic(name=o.name, strip=o.strip, add=o.add) for o in found]
    )


@router.put("/{name}/sources", status_code=204, responses=error_responses(ConfigError))
async def register_source(
    entry: CollectionDep, body: SourceRegistration, index: IndexDep, settings: SettingsDep, request: Request
) -> None:
    """Record where the objects of a stable source name are read from (``uri``: ``s3://bucket``
    or a folder this server may read, as for ingest jobs), so that this server can read them again
    (thumbnails). Payloads carry the name only, never the URI."""
    open_api: bool = request.app.state.authenticator.open
    await in_thread(_register, index, entry, body, settings, open_api)


@router.post("/{name}/sources/overlaps", responses=error_responses(ConfigError))
async def source_overlaps(
    entry: CollectionDep, body: SourceRegistration, index: IndexDep, settings: SettingsDep, request: Request
) -> SourceOverlaps:
    """The collection's other source names that reach the files of source ``name`` read from
    ``uri`` (the same bucket or folder, or a folder inside or around it), with how their keys
    differ: an ingest refuses those files rather than storing them a second time. No URI is shown."""
    open_api: bool = request.app.state.authenticator.open
    return await in_thread(_overlaps, index, entry, body, settings, open_api)


def _filter(raw: Any) -> SearchFilter:
    search_filter = parse_filter(raw)
    if search_filter is None:
        raise InvalidFilter("filter must name at least one field with values; it would match every point")
    return search_filter


def _delete(index: VectorIndex, entry: CollectionEntry, body: PointsDelete) -> PointsDeleted:
    if body.ids is not None:
        ids = [str(point_id) for point_id in body.ids]
        found = len(index.retrieve(entry.name, ids))
        index.delete(entry.name, ids)
    else:
        search_filter = _filter(body.filter)
        found = index.count(entry.name, search_filter)
        index.delete_by_filter(entry.name, search_filter)
    return PointsDeleted(collection=entry.name, deleted=found)


@router.post("/{name}/points/delete", responses=error_responses(InvalidFilter, StoreFull, StoreOwned))
async def delete_points(entry: CollectionDep, body: PointsDelete, index: IndexDep) -> PointsDeleted:
    """Delete points by ``ids``, or every point matching ``filter`` (e.g. the frames of some
    objects: ``{"source": ["s3://raw/ct/"], "key": ["ct/0001.dcm"]}``). Exactly one of the two."""
    return await in_thread(_delete, index, entry, body)


def _bookkeeping(point: StoredPoint) -> PointBookkeeping:
    fields = {name: point.payload[name] for name in BOOKKEEPING_FIELDS if name in point.payload}
    return PointBookkeeping(id=point.id, **fields)


def _lookup(index: VectorIndex, entry: CollectionEntry, body: PointsLookup) -> PointsBookkeeping:
    stored = index.retrieve(entry.name, [str(point_id) for point_id in body.ids])
    return PointsBookkeeping(collection=entry.name, points=[_bookkeeping(p) for p in stored])


@router.post("/{name}/points/lookup")
async def lookup_points(entry: CollectionDep, body: PointsLookup, index: IndexDep) -> PointsBookkeeping:
    """The points that exist among ``ids``, with their bookkeeping fields only (source, key,
    frame, n_frames, etag, size, labels_hash): enough to skip objects already stored at the same ETag."""
    return await in_thread(_lookup, index, entry, body)


def _scroll(index: VectorIndex, entry: CollectionEntry, body: PointsScroll) -> PointsBookkeeping:
    search_filter = parse_filter(body.filter)
    offset = str(body.offset) if body.offset is not None else None
    points, next_offset = index.scroll_page(
        entry.name, filter=search_filter, offset=offset, batch_size=body.limit
    )
    return PointsBookkeeping(
        collection=entry.name,
        points=[_bookkeeping(p) for p in points],
        next_offset=str(next_offset) if next_offset is not None else None,
    )


@router.post("/{name}/points/scroll", responses=error_responses(InvalidFilter))
async def scroll_points(entry: CollectionDep, body: PointsScroll, index: IndexDep) -> PointsBookkeeping:
    """A page of the collection's points (those matching ``filter``), bookkeeping fields only;
    pass ``next_offset`` back as ``offset`` for the next page, until it is null."""
    return await in_thread(_scroll, index, entry, body)


def _optimize(index: VectorIndex, entry: CollectionEntry) -> OptimizePublic:
    info: dict[str, Any] = index.collection_info(entry.name)
    if info.get("status") != "green":
        index.optimize(entry.name)
        info = index.collection_info(entry.name)
    # a bulk load through this API ends here: the "no close match" threshold follows its data
    calibrate_loaded(index, entry.name)
    return OptimizePublic(
        collection=entry.name,
        points=int(info["points"]),
        indexed_vectors=info.get("indexed_vectors"),
        status=str(info.get("status", "unknown")),
    )


@router.post("/{name}/optimize", responses=error_responses(StoreFull, StoreOwned))
async def optimize_collection(entry: CollectionDep, index: IndexDep) -> OptimizePublic:
    """Build the collection's search index (HNSW) now, as a bulk load ends, and answer its points
    and indexed vectors; returns at once when the index is already built. A large collection takes
    minutes, during which writes to it wait."""
    return await in_thread(_optimize, index, entry)


def takes_batches(info: RouteInfo) -> bool:
    """Whether the route takes a batch of points (the large body limit, like an upload)."""
    return getattr(info.route, "endpoint", None) is upsert_points
