from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from core.catalog import Catalog, CollectionEntry
from core.errors import InvalidFilter, PointNotFound
from core.index.base import VectorIndex
from core.payload import FILTER_FIELDS
from core.suggest import did_you_mean
from search_api import admin_services, rendering, services
from search_api.deps import CatalogDep, CollectionDep, FacetFilterDep, IndexDep, SettingsDep, StoredValuesDep
from search_api.errors import (
    ObjectGone,
    ObjectQuarantined,
    UnknownField,
    UpstreamUnavailable,
    error_responses,
)
from search_api.offload import in_thread
from search_api.results import InvalidQuery
from search_api.schemas import (
    CollectionDetailPublic,
    CollectionPublic,
    CollectionsPublic,
    FacetsPublic,
    PointPublic,
)
from search_api.security import Role, require_role

router = APIRouter(prefix="/v1/collections", tags=["collections"])

# Collection metadata (names, encoders, counts) is for every role; points and pixels for readers.
_ANY_ROLE = [require_role(Role.READER, Role.INGEST, Role.ADMIN)]
_READER = [require_role(Role.READER)]

_PNG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        "description": "A PNG thumbnail",
    },
    **error_responses(PointNotFound, ObjectGone, ObjectQuarantined, UpstreamUnavailable),
}


def _collection_public(index: VectorIndex, entry: CollectionEntry) -> CollectionPublic:
    return CollectionPublic(
        name=entry.name,
        encoder=entry.encoder.name,
        dim=entry.dim,
        points=index.count(entry.name),
        weights=entry.weights_version,
        text_search=entry.encoder.text_tower,
        created_at=entry.created_at,
    )


def _list_collections(index: VectorIndex, catalog: Catalog) -> CollectionsPublic:
    return CollectionsPublic(collections=[_collection_public(index, entry) for entry in catalog.list()])


@router.get("", dependencies=_ANY_ROLE)
async def read_collections(index: IndexDep, catalog: CatalogDep) -> CollectionsPublic:
    """List collections with their encoder, dimension and point count."""
    return await in_thread(_list_collections, index, catalog)


@router.get("/{name}", dependencies=_ANY_ROLE)
async def read_collection(entry: CollectionDep, catalog: CatalogDep) -> CollectionDetailPublic:
    """One collection (or the one an alias points at): encoder spec, dim, points, indexing state,
    quantization and aliases."""
    return await in_thread(admin_services.collection_detail, catalog=catalog, name=entry.name)


@router.get("/{name}/points/{point_id}", dependencies=_READER, responses=error_responses(PointNotFound))
async def read_point(entry: CollectionDep, point_id: str, index: IndexDep) -> PointPublic:
    """One stored point's payload."""
    point = await in_thread(services.read_point, index=index, entry=entry, point_id=point_id)
    return PointPublic(id=point.id, payload=point.payload)


@router.get(
    "/{name}/facets/{field}", dependencies=_READER, responses=error_responses(UnknownField, InvalidFilter)
)
async def read_facets(
    entry: CollectionDep,
    field: str,
    index: IndexDep,
    search_filter: FacetFilterDep,
    stored: StoredValuesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> FacetsPublic:
    """Point counts per value of a filter field, optionally within a filter; ``warnings`` names
    each filter value no point holds (as a search's do), where counts are empty for that reason."""
    if field not in FILTER_FIELDS:
        # the path segment is not echoed: it is whatever the caller sent
        raise UnknownField(
            "field",
            f"unknown facet field{did_you_mean(field, FILTER_FIELDS)}; allowed: {', '.join(FILTER_FIELDS)}",
        )
    counts = await in_thread(index.facet, entry.name, field, filter=search_filter, limit=limit)
    warnings = await services.search_warnings_async(
        index=index, entry=entry, search_filter=search_filter, stored=stored, ungroupable=None
    )
    return FacetsPublic(field=field, counts=counts, warnings=warnings)


@router.get(
    "/{name}/points/{point_id}/thumbnail",
    response_class=Response,
    responses=_PNG_RESPONSE,
    dependencies=_READER,
)
async def read_thumbnail(
    entry: CollectionDep,
    point_id: str,
    index: IndexDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    size: Annotated[int, Query(ge=16, le=1024)] = 256,
) -> Response:
    """A PNG of the point's image, longest side ``size`` pixels, rendered from pixels only; 404
    when its source object was deleted, 410 when it is quarantined now (burned-in annotation)
    and the collection did not accept burned-in objects."""
    point = await in_thread(services.read_point, index=index, entry=entry, point_id=point_id)
    source_uri = await in_thread(services.source_location, catalog, entry.name, point)
    png = await in_thread(
        services.render_thumbnail,
        settings=settings,
        point=point,
        size=size,
        source_uri=source_uri,
        accept_burned_in=entry.accept_burned_in,
    )
    return Response(content=png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


_IMAGE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        "description": "A PNG of the frame in the window; X-Radsearch-Frame: the file's frame index",
    },
    **error_responses(PointNotFound, InvalidQuery, ObjectGone, ObjectQuarantined, UpstreamUnavailable),
}


@router.get(
    "/{name}/points/{point_id}/image",
    response_class=Response,
    responses=_IMAGE_RESPONSE,
    dependencies=_READER,
)
async def read_point_image(
    entry: CollectionDep,
    point_id: str,
    index: IndexDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    window: Annotated[str, Query(max_length=40, description=rendering.WINDOW_DESCRIPTION)] = "auto",
    size: Annotated[
        int | None, Query(ge=16, le=2048, description="longest side; native size if absent")
    ] = None,
) -> Response:
    """The point's frame for the viewer, in a window preset or C,W, from pixels only (never
    overlays); 404/410 as for thumbnails (deleted, quarantined)."""
    parsed = rendering.parse_window(window)
    point = await in_thread(services.read_point, index=index, entry=entry, point_id=point_id)
    source_uri = await in_thread(services.source_location, catalog, entry.name, point)
    rendered = await in_thread(
        rendering.render_point,
        settings=settings,
        entry=entry,
        point=point,
        source_uri=source_uri,
        window=parsed,
        size=size,
    )
    return Response(
        content=rendered.png,
        media_type="image/png",
        headers={"Cache-Control": "private, max-age=300", "X-Radsearch-Frame": str(rendered.frame)},
    )
