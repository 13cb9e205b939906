from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from numpy.typing import NDArray

from core.catalog import Catalog, CollectionEntry
from core.config import Settings
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
from core.index.base import VectorIndex
from core.payload import SearchFilter
from search_api import results, services
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
from search_api.reidentify import reidentify_response
from search_api.results import Found, InvalidQuery, Shape
from search_api.schemas import (
    GROUP_BY_DESCRIPTION,
    ExcludeIn,
    GroupBy,
    Roi,
    ScoreThreshold,
    SearchQuery,
    SearchResponse,
    SearchWarning,
    parse_filter,
)
from search_api.security import Role, require_role
from search_api.uploads import (
    FORM_NULL,
    check_form_fields,
    filter_from_form,
    model_from_form,
    point_ids_from_form,
    read_upload,
    upload_name,
)

_IMAGE_FORM_FIELDS = (
    "file",
    "role",
    "positive",
    "negative",
    "filter",
    "exclude",
    "group_by",
    "group_size",
    "roi",
    "limit",
    "offset",
    "score_threshold",
)
#: At most this many uploaded examples in one search (each within the upload size limit).
MAX_UPLOADS = 8

#: The role every search needs (the direct path checks the same, `search_api.direct_search`).
SEARCH_ROLE = Role.READER
router = APIRouter(prefix="/v1/collections", tags=["search"], dependencies=[require_role(SEARCH_ROLE)])
logger = logging.getLogger(__name__)


async def respond(
    request: Request,
    entry: CollectionEntry,
    found: tuple[Found, list[SearchWarning]],
    started: float,
    mode: str,
) -> SearchResponse:
    result, warnings = found
    took_ms = (time.perf_counter() - started) * 1000
    # collection, mode, counts and timings only: nothing about the query image or its patient
    logger.info(
        "search collection=%s mode=%s hits=%d took_ms=%.1f", entry.name, mode, len(result.hits), took_ms
    )
    response = SearchResponse(
        hits=results.hits_out(result.hits, result.threshold),
        collection=entry.name,
        took_ms=round(took_ms, 3),
        warnings=warnings,
        **results.describe(result),
    )
    await reidentify_response(request, entry.name, response)
    return response


def _with_warnings(
    run: Callable[[], Found],
    *,
    index: VectorIndex,
    entry: CollectionEntry,
    search_filter: SearchFilter | None,
    stored: StoredValues,
) -> tuple[Found, list[SearchWarning]]:
    """The hits, and a warning per filter value the collection does not hold (one thread hop)."""
    found = run()
    warnings = services.search_warnings(
        index=index, entry=entry, search_filter=search_filter, stored=stored, ungroupable=found.ungroupable
    )
    return found, warnings


def _example_vectors(
    *, index: VectorIndex, entry: CollectionEntry, ids: list[str], role: str
) -> list[tuple[str, NDArray[np.float32], dict[str, object]]]:
    """(id, vector, payload) of each example point; `PointNotFound` naming the first missing one
    by its position."""
    points = {p.id: p for p in index.retrieve(entry.name, ids, with_vectors=True)} if ids else {}
    out = []
    for position, point_id in enumerate(ids):
        point = points.get(point_id)
        if point is None or point.vector is None:
            raise PointNotFound(f"{role}[{position}]: no such point in {entry.name!r}")
        out.append((point_id, point.vector, point.payload))
    return out


def _search_json(
    *,
    query: SearchQuery,
    index: VectorIndex,
    entry: CollectionEntry,
    search_filter: SearchFilter | None,
    vector: list[float] | NDArray[np.float32] | None,
) -> Found:
    """The JSON searches `find_json` does not await: by a point with exclusions or groups, by
    examples, by vector (or text) with groups."""
    shape = _shape(query)
    find = partial(results.find, index=index, entry=entry, shape=shape)
    if query.point_id is not None:
        point = services.read_point(index=index, entry=entry, point_id=query.point_id, with_vector=True)
        assert point.vector is not None
        narrowed = results.apply_exclusions(
            search_filter,
            query.exclude,
            patients=[results.payload_str(point.payload, "patient_hash")],
            studies=[results.payload_str(point.payload, "study_hash")],
            source="point",
        )
        return find(vector=point.vector, search_filter=narrowed, exclude_ids=(point.id,))
    if query.positive is not None:
        positive = _example_vectors(index=index, entry=entry, ids=query.positive, role="positive")
        negative = _example_vectors(index=index, entry=entry, ids=query.negative or [], role="negative")
        examples = positive + negative
        narrowed = results.apply_exclusions(
            search_filter,
            query.exclude,
            patients=[results.payload_str(p, "patient_hash") for _, _, p in examples],
            studies=[results.payload_str(p, "study_hash") for _, _, p in examples],
            source="examples",
        )
        combined = results.average_vector([v for _, v, _ in positive], [v for _, v, _ in negative])
        return find(vector=combined, search_filter=narrowed, exclude_ids=[pid for pid, _, _ in examples])
    assert vector is not None
    narrowed = results.apply_exclusions(search_filter, query.exclude, source="vector or text query")
    return find(vector=vector, search_filter=narrowed)


def search_mode(query: SearchQuery) -> str:
    """What the search goes by, for its log line: point, examples, text or vector."""
    if query.point_id is not None:
        return "point"
    if query.positive is not None:
        return "examples"
    return "text" if query.text is not None else "vector"


def is_plain(query: SearchQuery) -> bool:
    """A search `find_json` awaits on the index: by a point without exclusions, or by a vector
    (or text), without groups or examples."""
    point_exclusions = query.point_id is not None and query.exclude is not None
    return query.group_by is None and query.positive is None and not point_exclusions


def _shape(query: SearchQuery) -> Shape:
    return Shape(
        limit=query.limit,
        offset=query.offset,
        score_threshold=query.score_threshold,
        group_by=query.group_by,
        group_size=query.group_size,
    )


async def find_json(
    *,
    query: SearchQuery,
    index: VectorIndex,
    entry: CollectionEntry,
    search_filter: SearchFilter | None,
    vector: list[float] | NDArray[np.float32] | None,
    stored: StoredValues,
) -> tuple[Found, list[SearchWarning]]:
    """The JSON search's hits and warnings. The plain searches (by a point, or by a vector or text,
    without groups) are awaited on the index: no worker thread where the store has a process of its
    own (`VectorIndex.search_async`). The others run `_search_json` and the warnings in one."""
    if not is_plain(query):
        run = partial(
            _search_json, query=query, index=index, entry=entry, search_filter=search_filter, vector=vector
        )
        return await on_index(
            index, _with_warnings, run, index=index, entry=entry, search_filter=search_filter, stored=stored
        )
    if query.point_id is not None:
        hits = await services.search_near_point(
            index=index,
            entry=entry,
            point_id=query.point_id,
            search_filter=search_filter,
            limit=query.limit,
            offset=query.offset,
            score_threshold=query.score_threshold,
        )
        found = results.found(entry=entry, hits=hits)
    else:
        assert vector is not None
        narrowed = results.apply_exclusions(search_filter, query.exclude, source="vector or text query")
        found = await results.find_plain(
            index=index, entry=entry, vector=vector, search_filter=narrowed, shape=_shape(query)
        )
    # after the search, as `_with_warnings`: a query the search refuses reads nothing more
    warnings = await services.search_warnings_async(
        index=index, entry=entry, search_filter=search_filter, stored=stored, ungroupable=found.ungroupable
    )
    return found, warnings


@router.post(
    "/{name}/search",
    responses=error_responses(InvalidFilter, InvalidVector, InvalidQuery, NoTextTower, PointNotFound),
)
async def search_collection(
    request: Request,
    entry: CollectionDep,
    query: SearchQuery,
    index: IndexDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    limiter: InferenceLimiterDep,
    stored: StoredValuesDep,
) -> SearchResponse:
    """Search by a stored point id, a raw vector, a text, or positive (and negative) example points,
    with filters and paging; ``group_by`` groups hits by object, series or study; ``exclude``
    leaves out the query's patient or study; ``warnings`` names each filter value that matches no
    stored value, with the closest stored ones. In a calibrated collection every hit says whether
    it is ``weak`` and ``close_match`` whether the best one is not."""
    check_limit(query.limit, settings, loc=("body", "limit"))
    if query.group_by is not None and query.offset:
        raise InvalidQuery("offset", "offset does not page groups: leave it out with group_by")
    search_filter = parse_filter(query.filter)
    started = time.perf_counter()
    vector: list[float] | NDArray[np.float32] | None = None
    mode = search_mode(query)
    if query.text is not None:
        vector = await in_inference_thread(
            limiter, services.embed_text, catalog=catalog, entry=entry, text=query.text
        )
    elif query.vector is not None:
        vector = query.vector
    found = await find_json(
        query=query, index=index, entry=entry, search_filter=search_filter, vector=vector, stored=stored
    )
    return await respond(request, entry, found, started, mode)


def _embed_uploads(
    *,
    catalog: Catalog,
    entry: CollectionEntry,
    settings: Settings,
    uploads: list[tuple[str, bytes]],
    roi: Roi | None,
) -> list[tuple[NDArray[np.float32], results.QueryImage]]:
    """Decode each upload, crop its query frame to ``roi``, embed it with the collection's encoder."""
    out = []
    for name, data in uploads:
        image = results.read_upload_image(settings=settings, data=data, filename=name)
        frame = results.crop(image.frame, roi, name) if roi is not None else image.frame
        out.append((services.embed_frame(catalog=catalog, entry=entry, frame=frame), image))
    return out


def _search_uploads(
    *,
    index: VectorIndex,
    entry: CollectionEntry,
    embedded: list[tuple[NDArray[np.float32], results.QueryImage]],
    roles: list[str],
    positive_ids: list[str],
    negative_ids: list[str],
    search_filter: SearchFilter | None,
    exclude: ExcludeIn | None,
    shape: Shape,
) -> Found:
    positive = [vector for (vector, _), role in zip(embedded, roles, strict=True) if role == "positive"]
    negative = [vector for (vector, _), role in zip(embedded, roles, strict=True) if role == "negative"]
    patients = [image.patient_hash for _, image in embedded]
    studies = [image.study_hash for _, image in embedded]
    by_id = _example_vectors(index=index, entry=entry, ids=positive_ids, role="positive")
    by_id_neg = _example_vectors(index=index, entry=entry, ids=negative_ids, role="negative")
    positive += [v for _, v, _ in by_id]
    negative += [v for _, v, _ in by_id_neg]
    for _, _, payload in by_id + by_id_neg:
        patients.append(results.payload_str(payload, "patient_hash"))
        studies.append(results.payload_str(payload, "study_hash"))
    narrowed = results.apply_exclusions(
        search_filter, exclude, patients=patients, studies=studies, source="upload"
    )
    vector = (
        positive[0] if len(positive) == 1 and not negative else results.average_vector(positive, negative)
    )
    example_ids = [pid for pid, _, _ in by_id + by_id_neg]
    return results.find(
        index=index, entry=entry, vector=vector, search_filter=narrowed, shape=shape, exclude_ids=example_ids
    )


def _roles(raw: list[str] | None, files: int) -> list[str]:
    if not raw:
        return ["positive"] * files
    if len(raw) != files:
        raise InvalidQuery("role", f"give one role per file ({files} files, {len(raw)} roles) or none")
    for position, role in enumerate(raw):
        if role not in ("positive", "negative"):
            raise InvalidQuery(f"role[{position}]", "a role is positive or negative")
    return list(raw)


@router.post(
    "/{name}/search/image",
    responses=error_responses(
        InvalidFilter,
        InvalidQuery,
        UnknownField,
        BadInput,
        DecodeError,
        PointNotFound,
        TooLarge,
        UnsupportedFormat,
    ),
)
async def search_by_image(
    request: Request,
    entry: CollectionDep,
    file: Annotated[
        list[UploadFile],
        File(description=f"A DICOM, PNG or JPEG image; repeat for several examples (at most {MAX_UPLOADS})"),
    ],
    index: IndexDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    limiter: InferenceLimiterDep,
    stored: StoredValuesDep,
    role: Annotated[
        list[str] | None,
        Form(description="positive or negative, one per file in order (default: all positive)"),
    ] = None,
    positive: Annotated[
        list[str] | None, Form(description="point ids of more positive examples (repeat or comma-separate)")
    ] = None,
    negative: Annotated[
        list[str] | None, Form(description="point ids of negative examples (repeat or comma-separate)")
    ] = None,
    filter_json: Annotated[
        str | None,
        Form(alias="filter", description='JSON object, e.g. {"modality": ["CT"], "anatomy": ["chest"]}'),
    ] = None,
    exclude_json: Annotated[
        str | None,
        Form(
            alias="exclude",
            description='JSON object, e.g. {"same_patient": true, "same_study": true}: the uploaded '
            "DICOM's PatientID and StudyInstanceUID, hashed with the ingest key",
        ),
    ] = None,
    group_by: Annotated[GroupBy | None, FORM_NULL, Form(description=GROUP_BY_DESCRIPTION)] = None,
    group_size: Annotated[int, Form(ge=1, le=100)] = 3,
    roi_json: Annotated[
        str | None,
        Form(
            alias="roi",
            description='JSON {"x", "y", "width", "height"} in pixels of the rendered query frame: '
            "the crop is embedded (one file only)",
        ),
    ] = None,
    limit: Annotated[int, Form(ge=1)] = 10,
    offset: Annotated[int, Form(ge=0, le=100_000)] = 0,
    score_threshold: Annotated[ScoreThreshold | None, FORM_NULL, Form()] = None,
) -> SearchResponse:
    """Search by uploaded images (the middle frame of a multi-frame DICOM), optionally cropped to
    ``roi``; several files (``role`` positive/negative) and example point ids combine as the JSON
    search's examples. ``group_by``, ``exclude`` and ``warnings`` as for the JSON search."""
    check_limit(limit, settings, loc=("body", "limit"))
    # the parsed form is cached on the request, so this re-reads nothing
    await check_form_fields(request, _IMAGE_FORM_FIELDS, max_files=MAX_UPLOADS)
    roles = _roles(role, len(file))
    if group_by is not None and offset:
        raise InvalidQuery("offset", "offset does not page groups: leave it out with group_by")
    search_filter = filter_from_form(filter_json)
    exclude = model_from_form(ExcludeIn, exclude_json, "exclude")
    roi = model_from_form(Roi, roi_json, "roi")
    if roi is not None and len(file) != 1:
        raise InvalidQuery("roi", "a region goes with exactly one uploaded file")
    positive_ids = point_ids_from_form(positive, "positive")
    negative_ids = point_ids_from_form(negative, "negative")
    if "positive" not in roles and not positive_ids:
        raise InvalidQuery("role", "give at least one positive example")
    uploads = []
    for upload in file:
        name = upload_name(upload.filename)
        uploads.append((name, await read_upload(upload, settings.api.max_upload_bytes, name)))
    started = time.perf_counter()
    embedded = await in_inference_thread(
        limiter, _embed_uploads, catalog=catalog, entry=entry, settings=settings, uploads=uploads, roi=roi
    )
    run = partial(
        _search_uploads,
        index=index,
        entry=entry,
        embedded=embedded,
        roles=roles,
        positive_ids=positive_ids,
        negative_ids=negative_ids,
        search_filter=search_filter,
        exclude=exclude,
        shape=Shape(
            limit=limit,
            offset=offset,
            score_threshold=score_threshold,
            group_by=group_by,
            group_size=group_size,
        ),
    )
    found = await on_index(
        index, _with_warnings, run, index=index, entry=entry, search_filter=search_filter, stored=stored
    )
    return await respond(request, entry, found, started, "image")
