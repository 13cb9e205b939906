"""DICOMweb in and out: a STOW-RS receiver (a PACS or modality pushes instances) and search by
UID (a viewer names an instance, radsearch fetches it from the configured PACS by WADO-RS)."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

import numpy as np
import requests
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from core.catalog import Catalog, CollectionEntry
from core.config import Settings
from core.errors import (
    BadInput,
    CollectionNotFound,
    ConfigError,
    DecodeError,
    InvalidFilter,
    ObjectNotFound,
    SourceError,
    TooLarge,
    UnsupportedFormat,
)
from ingest.received import Received, ingest_received, read_identity
from ingest.sources.dicomweb import SERIES_UID, SOP_UID, DicomwebSource
from ingest.sources.multipart import boundary_of, split_multipart
from search_api import results, services
from search_api.deps import (
    CatalogDep,
    CollectionDep,
    IndexDep,
    InferenceLimiterDep,
    SettingsDep,
    StoredValuesDep,
    check_limit,
    check_name,
)
from search_api.errors import ApiError, NotInPacs, UpstreamUnavailable, error_responses
from search_api.offload import in_inference_thread, in_thread, on_index
from search_api.reidentify import reidentify_response
from search_api.results import Found, Shape
from search_api.routing import RouteInfo
from search_api.schemas import (
    GROUP_BY_DESCRIPTION,
    ExcludeIn,
    GroupBy,
    ScoreThreshold,
    SearchFilterIn,
    SearchResponse,
    SearchWarning,
    parse_filter,
)
from search_api.security import Role, require_role

__all__ = ["DicomwebSearchQuery", "router", "search_router", "takes_uploads"]

logger = logging.getLogger(__name__)

STOW_PATH = "/v1/dicomweb/studies"

router = APIRouter(tags=["dicomweb"])

# PS3.18 STOW-RS response attributes (DICOM JSON).
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_CLASS = "00081150"
_REFERENCED_SOP_INSTANCE = "00081155"
_FAILURE_REASON = "00081197"
# PS3.7 status codes: "processing failure" and "cannot understand".
_PROCESSING_FAILURE = 0x0110
_CANNOT_UNDERSTAND = 0xC000


def takes_uploads(info: RouteInfo) -> bool:
    """Whether a route receives DICOM files in its body (the upload size limit applies)."""
    return info.path.startswith(STOW_PATH)


def _parts(body: bytes, content_type: str) -> list[Received]:
    if 'type="application/dicom"' not in content_type.replace("'", '"') and (
        "type=application/dicom" not in content_type
    ):
        raise ApiError(
            415,
            "unsupported_media_type",
            'STOW-RS takes multipart/related; type="application/dicom"',
            field="Content-Type",
        )
    try:
        boundary = boundary_of(content_type)
    except ConfigError as exc:
        raise ApiError(415, "unsupported_media_type", str(exc), field="Content-Type") from exc
    received = []
    for headers, content in split_multipart(body, boundary):
        part_type = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        if part_type != "application/dicom":
            received.append(Received(None, None, b""))
            continue
        received.append(read_identity(content))
    if not received:
        raise ApiError(400, "bad_input", "the multipart body holds no part", field="body")
    return received


def _reference(item: Received) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if item.sop_class:
        out[_REFERENCED_SOP_CLASS] = {"vr": "UI", "Value": [item.sop_class]}
    if item.sop_instance:
        out[_REFERENCED_SOP_INSTANCE] = {"vr": "UI", "Value": [item.sop_instance]}
    return out


def _store(catalog: Catalog, settings: Settings, collection: str, items: list[Received]) -> dict[str, Any]:
    catalog.get(collection)  # 404 before anything is decoded
    report, keys = ingest_received(catalog, settings, collection, items)
    refused = {f.key for f in report.failed} | {f.key for f in report.quarantined}
    stored: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for item, key in zip(items, keys, strict=True):
        if key is None:
            failed.append({**_reference(item), _FAILURE_REASON: {"vr": "US", "Value": [_CANNOT_UNDERSTAND]}})
        elif key in refused:
            failed.append({**_reference(item), _FAILURE_REASON: {"vr": "US", "Value": [_PROCESSING_FAILURE]}})
        else:
            stored.append(_reference(item))
    # counts only: never a UID or anything about the patient
    logger.info(
        "stow collection=%s received=%d stored=%d failed=%d frames=%d",
        collection,
        len(items),
        len(stored),
        len(failed),
        report.frames_indexed,
    )
    body: dict[str, Any] = {}
    if stored:
        body[_REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": stored}
    if failed:
        body[_FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    return body


async def _stow(
    request: Request, catalog: Catalog, settings: Settings, collection: str | None
) -> JSONResponse:
    name = collection or settings.dicomweb.stow_collection
    check_name(name)
    body = await request.body()
    items = _parts(body, request.headers.get("content-type", ""))
    result = await in_thread(_store, catalog, settings, name, items)
    n_failed = len((result.get(_FAILED_SOP_SEQUENCE) or {}).get("Value", []))
    # PS3.18 10.5.3: 200 all stored, 202 some failed, 409 none stored.
    status = 200 if n_failed == 0 else 202 if n_failed < len(items) else 409
    return JSONResponse(result, status_code=status, media_type="application/dicom+json")


CollectionQuery = Annotated[
    str | None,
    Query(description="the collection to index into (default: settings dicomweb.stow_collection)"),
]


@router.post(
    STOW_PATH,
    dependencies=[require_role(Role.INGEST)],
    responses=error_responses(CollectionNotFound, 415),
    response_class=JSONResponse,
)
async def stow_instances(
    request: Request, catalog: CatalogDep, settings: SettingsDep, collection: CollectionQuery = None
) -> JSONResponse:
    """STOW-RS (PS3.18 10.5): store instances sent as ``multipart/related;
    type="application/dicom"``; each is indexed through the ingest pipeline (same readers,
    labels, PHI allow-list and quarantine), its point ids from its SOP Instance UID. The answer
    is the DICOM JSON store response (ReferencedSOPSequence, FailedSOPSequence)."""
    return await _stow(request, catalog, settings, collection)


@router.post(
    STOW_PATH + "/{study_uid}",
    dependencies=[require_role(Role.INGEST)],
    responses=error_responses(CollectionNotFound, 415),
    response_class=JSONResponse,
)
async def stow_study_instances(
    study_uid: str,
    request: Request,
    catalog: CatalogDep,
    settings: SettingsDep,
    collection: CollectionQuery = None,
) -> JSONResponse:
    """STOW-RS to a study's URL: the same as ``POST /v1/dicomweb/studies``."""
    del study_uid  # each instance names its own study
    return await _stow(request, catalog, settings, collection)


# -- search by UID ----------------------------------------------------------------------------

_UID_FIELD = r"^[0-9]+(\.[0-9]+)*$"


class DicomwebSearchQuery(BaseModel):
    """Search with an instance of the configured PACS, named by its UIDs: the instance
    (``instance_uid``), else the middle instance (by InstanceNumber) of the series
    (``series_uid``), else of the study's first series; ``frame`` picks a frame of a multi-frame
    instance (default: its middle one). ``filter``, ``exclude`` (the query instance's patient or
    study), ``group_by``, ``limit``, ``offset`` and ``score_threshold`` as for the JSON search."""

    model_config = ConfigDict(extra="forbid")

    study_uid: str = Field(max_length=64, pattern=_UID_FIELD)
    series_uid: str | None = Field(default=None, max_length=64, pattern=_UID_FIELD)
    instance_uid: str | None = Field(default=None, max_length=64, pattern=_UID_FIELD)
    frame: int | None = Field(default=None, ge=0, le=100_000)
    filter: SearchFilterIn | None = None
    exclude: ExcludeIn | None = None
    group_by: GroupBy | None = Field(default=None, description=GROUP_BY_DESCRIPTION)
    group_size: int = Field(default=3, ge=1, le=100, description="hits per group (with group_by)")
    limit: int = Field(default=10, ge=1, description="at most the server's max_limit (1000 by default)")
    offset: int = Field(default=0, ge=0, le=100_000)
    score_threshold: ScoreThreshold | None = None


def _retrieve(source: DicomwebSource, study: str, series: str, instance: str, field: str) -> bytes:
    try:
        return source.retrieve(study, series, instance, key=field)
    except ObjectNotFound as exc:
        raise NotInPacs(field, "the PACS has no such instance") from exc


def _fetch_query_instance(settings: Settings, query: DicomwebSearchQuery) -> bytes:
    """The Part 10 bytes of the instance the query names, by QIDO-RS/WADO-RS from the PACS."""
    if not settings.dicomweb.url:
        raise ApiError(
            503, "pacs_not_configured", "no PACS is configured (set RADSEARCH_DICOMWEB__URL)", field=None
        )
    source = DicomwebSource(
        settings.dicomweb.url,
        settings.dicomweb,
        hash_key=settings.hash_key_bytes(),
        max_object_bytes=settings.api.max_upload_bytes,
    )
    try:
        study, series, instance = query.study_uid, query.series_uid, query.instance_uid
        if instance is not None:
            if series is None:
                try:
                    found_study, series = source.locate(instance)
                except BadInput as exc:
                    raise NotInPacs("instance_uid", "the PACS has no such instance") from exc
                if found_study != study:
                    raise NotInPacs("instance_uid", "the instance is not in that study")
            return _retrieve(source, study, series, instance, "instance_uid")
        if series is None:
            first = next(
                (
                    item
                    for item in source.client.search_for_series(study_instance_uid=study, limit=1)
                    if item.get(SERIES_UID)
                ),
                None,
            )
            if first is None:
                raise NotInPacs("study_uid", "the PACS has no series in that study")
            series = str(first[SERIES_UID]["Value"][0])
        items = source.client.search_for_instances(
            study_instance_uid=study, series_instance_uid=series, fields=["InstanceNumber"]
        )

        def order(item: dict[str, Any]) -> tuple[int, str]:
            number = (item.get("00200013") or {}).get("Value") or [0]
            try:
                return int(number[0]), str(item[SOP_UID]["Value"][0])
            except (TypeError, ValueError, KeyError, IndexError):
                return 0, ""

        ranked = sorted((i for i in items if i.get(SOP_UID)), key=order)
        if not ranked:
            raise NotInPacs("series_uid", "the PACS has no instance in that series")
        middle = str(ranked[len(ranked) // 2][SOP_UID]["Value"][0])
        return _retrieve(source, study, series, middle, "series_uid")
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status == 404:
            raise NotInPacs("study_uid", "the PACS has no such study") from exc
        raise UpstreamUnavailable(f"the PACS answered HTTP {status}") from exc
    except requests.RequestException as exc:
        raise UpstreamUnavailable(f"the PACS does not answer: {type(exc).__name__}") from exc
    except SourceError as exc:
        raise UpstreamUnavailable(str(exc)) from exc
    finally:
        source.close()


def _query_vector(
    catalog: Catalog, entry: CollectionEntry, settings: Settings, query: DicomwebSearchQuery
) -> tuple[NDArray[np.float32], dict[str, str | None]]:
    """The query vector and the keyed hashes of the query instance's patient and study (for
    ``exclude``)."""
    from search_api.services import _decode, embed_frame, pick_frame

    data = _fetch_query_instance(settings, query)
    decoded = _decode(data, "instance_uid", settings)
    if not decoded.frames:
        raise BadInput("instance_uid", "the instance has no image frames")
    if query.frame is None:
        frame = decoded.frames[len(decoded.frames) // 2]
    else:
        frames = int(decoded.meta.get("n_frames") or len(decoded.frames))
        if query.frame >= frames:  # the nearest frame would stand in for one the file does not have
            raise results.InvalidQuery(
                "frame", f"the instance has {frames} frame(s): frame is 0 to {frames - 1}"
            )
        _, frame = pick_frame(decoded, query.frame)
    hashes = {
        name: value if isinstance(value := decoded.meta.get(name), str) else None
        for name in ("patient_hash", "study_hash")
    }
    return embed_frame(catalog=catalog, entry=entry, frame=frame), hashes


search_router = APIRouter(prefix="/v1/collections", tags=["search"], dependencies=[require_role(Role.READER)])


@search_router.post(
    "/{name}/search/dicomweb",
    responses=error_responses(
        InvalidFilter,
        results.InvalidQuery,
        NotInPacs,
        BadInput,
        DecodeError,
        TooLarge,
        UnsupportedFormat,
        502,
        503,
    ),
)
async def search_by_dicomweb(
    request: Request,
    entry: CollectionDep,
    query: DicomwebSearchQuery,
    index: IndexDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    limiter: InferenceLimiterDep,
    stored: StoredValuesDep,
) -> SearchResponse:
    """Search with an instance of the configured PACS named by its UIDs (fetched by WADO-RS):
    the same hits as an upload of the same file. For the ``clinician`` role hits carry their
    Study/Series/SOP Instance UIDs and a ``viewer_url``; every other role sees keyed hashes only."""
    check_limit(query.limit, settings, loc=("body", "limit"))
    search_filter = parse_filter(query.filter)
    started = time.perf_counter()
    vector, query_hashes = await in_inference_thread(limiter, _query_vector, catalog, entry, settings, query)
    narrowed = results.apply_exclusions(
        search_filter,
        query.exclude,
        patients=[query_hashes["patient_hash"]],
        studies=[query_hashes["study_hash"]],
        source="instance",
    )
    shape = Shape(
        limit=query.limit,
        offset=query.offset,
        score_threshold=query.score_threshold,
        group_by=query.group_by,
        group_size=query.group_size,
    )

    def run() -> tuple[Found, list[SearchWarning]]:
        found = results.find(index=index, entry=entry, vector=vector, search_filter=narrowed, shape=shape)
        return found, services.search_warnings(
            index=index,
            entry=entry,
            search_filter=search_filter,
            stored=stored,
            ungroupable=found.ungroupable,
        )

    found, warnings = await on_index(index, run)
    took_ms = (time.perf_counter() - started) * 1000
    logger.info(
        "search collection=%s mode=dicomweb hits=%d took_ms=%.1f", entry.name, len(found.hits), took_ms
    )
    response = SearchResponse(
        hits=results.hits_out(found.hits, found.threshold),
        collection=entry.name,
        took_ms=round(took_ms, 3),
        warnings=warnings,
        **results.describe(found),
    )
    await reidentify_response(request, entry.name, response)
    return response
