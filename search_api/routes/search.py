from __future__ import annotations

import json
import logging
import re
import time
from functools import partial
from pathlib import PurePosixPath
from typing import Annotated

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from numpy.typing import NDArray
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile

from core.catalog import CollectionEntry
from core.errors import BadInput, DecodeError, InvalidFilter, TooLarge
from core.index.base import Hit
from search_api import services
from search_api.deps import (
    CatalogDep,
    CollectionDep,
    IndexDep,
    InferenceLimiterDep,
    SettingsDep,
    check_limit,
)
from search_api.schemas import SearchHit, SearchQuery, SearchResponse, parse_filter
from search_api.security import Role, require_role

router = APIRouter(prefix="/v1/collections", tags=["search"], dependencies=[require_role(Role.READER)])
logger = logging.getLogger(__name__)

_UNSAFE_NAME_CHARS = re.compile(r"[^\w.\- ]")


def _upload_name(filename: str | None) -> str:
    """The upload's base name, made safe to echo in messages (never any header value)."""
    base = PurePosixPath((filename or "").replace("\\", "/")).name
    return _UNSAFE_NAME_CHARS.sub("_", base)[:128] or "upload"


def _response(entry: CollectionEntry, hits: list[Hit], started: float, mode: str) -> SearchResponse:
    took_ms = (time.perf_counter() - started) * 1000
    # collection, mode, counts and timings only: nothing about the query image or its patient
    logger.info("search collection=%s mode=%s hits=%d took_ms=%.1f", entry.name, mode, len(hits), took_ms)
    return SearchResponse(
        hits=[SearchHit(id=hit.id, score=hit.score, payload=hit.payload) for hit in hits],
        collection=entry.name,
        took_ms=round(took_ms, 3),
    )


@router.post("/{name}/search")
async def search_collection(
    entry: CollectionDep,
    query: SearchQuery,
    index: IndexDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    limiter: InferenceLimiterDep,
) -> SearchResponse:
    """Search by a stored point id, a raw vector or a text, with filters and paging."""
    check_limit(query.limit, settings, loc=("body", "limit"))
    search_filter = parse_filter(query.filter)
    started = time.perf_counter()
    exclude_ids: tuple[str, ...] = ()
    vector: list[float] | NDArray[np.float32]
    if query.point_id is not None:
        mode = "point"
        vector = await run_in_threadpool(
            partial(services.point_vector, index=index, entry=entry, point_id=query.point_id)
        )
        exclude_ids = (query.point_id,)
    elif query.text is not None:
        mode = "text"
        vector = await anyio.to_thread.run_sync(
            partial(services.embed_text, catalog=catalog, entry=entry, text=query.text), limiter=limiter
        )
    else:
        assert query.vector is not None
        mode = "vector"
        vector = query.vector
    hits = await run_in_threadpool(
        partial(
            services.search,
            index=index,
            entry=entry,
            vector=vector,
            search_filter=search_filter,
            limit=query.limit,
            offset=query.offset,
            score_threshold=query.score_threshold,
            exclude_ids=exclude_ids,
        )
    )
    return _response(entry, hits, started, mode)


@router.post("/{name}/search/image")
async def search_by_image(
    request: Request,
    entry: CollectionDep,
    file: Annotated[UploadFile, File(description="A DICOM, PNG or JPEG image")],
    index: IndexDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    limiter: InferenceLimiterDep,
    filter_json: Annotated[
        str | None,
        Form(alias="filter", description='JSON object, e.g. {"modality": ["CT"], "anatomy": ["chest"]}'),
    ] = None,
    limit: Annotated[int, Form(ge=1)] = 10,
    offset: Annotated[int, Form(ge=0, le=100_000)] = 0,
    score_threshold: Annotated[float | None, Form(allow_inf_nan=False)] = None,
) -> SearchResponse:
    """Search by an uploaded image (its middle frame for multi-frame DICOM)."""
    check_limit(limit, settings, loc=("body", "limit"))
    # One file per search: the parsed form is cached on the request, so this re-reads nothing.
    form = await request.form()
    if sum(1 for _, value in form.multi_items() if isinstance(value, StarletteUploadFile)) != 1:
        raise BadInput("upload", "exactly one file per search request")
    name = _upload_name(file.filename)
    search_filter = None
    if filter_json is not None and filter_json.strip():
        try:
            raw_filter = json.loads(filter_json)
        except json.JSONDecodeError as exc:
            raise InvalidFilter(f"filter is not valid JSON: {exc.msg} at position {exc.pos}") from None
        search_filter = parse_filter(raw_filter)
    max_bytes = settings.api.max_upload_bytes
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge(name, f"upload is larger than {max_bytes} bytes")
    if not data:
        raise DecodeError(name, "empty upload")
    started = time.perf_counter()
    vector = await anyio.to_thread.run_sync(
        partial(
            services.embed_upload, catalog=catalog, entry=entry, settings=settings, data=data, filename=name
        ),
        limiter=limiter,
    )
    hits = await run_in_threadpool(
        partial(
            services.search,
            index=index,
            entry=entry,
            vector=vector,
            search_filter=search_filter,
            limit=limit,
            offset=offset,
            score_threshold=score_threshold,
        )
    )
    return _response(entry, hits, started, "image")
