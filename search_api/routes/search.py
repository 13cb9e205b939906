from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from numpy.typing import NDArray

from core.catalog import CollectionEntry
from core.errors import (
    BadInput,
    DecodeError,
    InvalidFilter,
    InvalidVector,
    NoTextTower,
    PointNotFound,
    TooLarge,
    UnsupportedFormat,
)
from core.filter_warnings import StoredValues
from core.index.base import Hit, VectorIndex
from core.payload import SearchFilter
from search_api import services
from search_api.deps import (
    CatalogDep,
    CollectionDep,
    IndexDep,
    InferenceLimiterDep,
    SettingsDep,
    StoredValuesDep,
    check_limit,
)
from search_api.errors import UnknownField, error_responses
from search_api.offload import in_inference_thread, on_index
from search_api.schemas import SearchHit, SearchQuery, SearchResponse, SearchWarning, parse_filter
from search_api.security import Role, require_role
from search_api.uploads import check_form_fields, filter_from_form, read_upload, upload_name

_IMAGE_FORM_FIELDS = ("file", "filter", "limit", "offset", "score_threshold")

router = APIRouter(prefix="/v1/collections", tags=["search"], dependencies=[require_role(Role.READER)])
logger = logging.getLogger(__name__)


def _response(
    entry: CollectionEntry, found: tuple[list[Hit], list[SearchWarning]], started: float, mode: str
) -> SearchResponse:
    hits, warnings = found
    took_ms = (time.perf_counter() - started) * 1000
    # collection, mode, counts and timings only: nothing about the query image or its patient
    logger.info("search collection=%s mode=%s hits=%d took_ms=%.1f", entry.name, mode, len(hits), took_ms)
    return SearchResponse(
        hits=[SearchHit(id=hit.id, score=hit.score, payload=hit.payload) for hit in hits],
        collection=entry.name,
        took_ms=round(took_ms, 3),
        warnings=warnings,
    )


def _with_warnings(
    run: Callable[[], list[Hit]],
    *,
    index: VectorIndex,
    entry: CollectionEntry,
    search_filter: SearchFilter | None,
    stored: StoredValues,
) -> tuple[list[Hit], list[SearchWarning]]:
    """The hits, and a warning per filter value the collection does not hold (one thread hop)."""
    hits = run()
    warnings = services.search_warnings(index=index, entry=entry, search_filter=search_filter, stored=stored)
    return hits, warnings


@router.post(
    "/{name}/search", responses=error_responses(InvalidFilter, InvalidVector, NoTextTower, PointNotFound)
)
async def search_collection(
    entry: CollectionDep,
    query: SearchQuery,
    index: IndexDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    limiter: InferenceLimiterDep,
    stored: StoredValuesDep,
) -> SearchResponse:
    """Search by a stored point id, a raw vector or a text, with filters and paging; ``warnings``
    names each filter value that matches no stored value, with the closest stored ones."""
    check_limit(query.limit, settings, loc=("body", "limit"))
    search_filter = parse_filter(query.filter)
    started = time.perf_counter()
    warned = partial(_with_warnings, index=index, entry=entry, search_filter=search_filter, stored=stored)
    search = partial(
        services.search,
        index=index,
        entry=entry,
        search_filter=search_filter,
        limit=query.limit,
        offset=query.offset,
        score_threshold=query.score_threshold,
    )
    vector: list[float] | NDArray[np.float32]
    if query.point_id is not None:
        by_point = partial(
            services.search_near_point,
            index=index,
            entry=entry,
            point_id=query.point_id,
            search_filter=search_filter,
            limit=query.limit,
            offset=query.offset,
            score_threshold=query.score_threshold,
        )
        return _response(entry, await on_index(index, warned, by_point), started, "point")
    if query.text is not None:
        mode = "text"
        vector = await in_inference_thread(
            limiter, services.embed_text, catalog=catalog, entry=entry, text=query.text
        )
    else:
        assert query.vector is not None
        mode = "vector"
        vector = query.vector
    found = await on_index(index, warned, partial(search, vector=vector))
    return _response(entry, found, started, mode)


@router.post(
    "/{name}/search/image",
    responses=error_responses(
        InvalidFilter, UnknownField, BadInput, DecodeError, TooLarge, UnsupportedFormat
    ),
)
async def search_by_image(
    request: Request,
    entry: CollectionDep,
    file: Annotated[UploadFile, File(description="A DICOM, PNG or JPEG image")],
    index: IndexDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    limiter: InferenceLimiterDep,
    stored: StoredValuesDep,
    filter_json: Annotated[
        str | None,
        Form(alias="filter", description='JSON object, e.g. {"modality": ["CT"], "anatomy": ["chest"]}'),
    ] = None,
    limit: Annotated[int, Form(ge=1)] = 10,
    offset: Annotated[int, Form(ge=0, le=100_000)] = 0,
    score_threshold: Annotated[float | None, Form(allow_inf_nan=False)] = None,
) -> SearchResponse:
    """Search by an uploaded image (its middle frame for multi-frame DICOM); ``warnings`` as for
    the JSON search."""
    check_limit(limit, settings, loc=("body", "limit"))
    # One file per search: the parsed form is cached on the request, so this re-reads nothing.
    check_form_fields(await request.form(), _IMAGE_FORM_FIELDS)
    name = upload_name(file.filename)
    search_filter = filter_from_form(filter_json)
    data = await read_upload(file, settings.api.max_upload_bytes, name)
    started = time.perf_counter()
    vector = await in_inference_thread(
        limiter,
        services.embed_upload,
        catalog=catalog,
        entry=entry,
        settings=settings,
        data=data,
        filename=name,
    )
    search = partial(
        services.search,
        index=index,
        entry=entry,
        vector=vector,
        search_filter=search_filter,
        limit=limit,
        offset=offset,
        score_threshold=score_threshold,
    )
    found = await on_index(
        index, _with_warnings, search, index=index, entry=entry, search_filter=search_filter, stored=stored
    )
    return _response(entry, found, started, "image")
