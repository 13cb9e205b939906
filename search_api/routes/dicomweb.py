"""DICOMweb in and out: a STOW-RS receiver (a PACS or modality pushes instances) and search by
UID (a viewer names an instance, radsearch fetches it from the configured PACS by WADO-RS)."""

from __future__ import annotations

import logging
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from core.catalog import Catalog
from core.config import Settings
from core.errors import CollectionNotFound, ConfigError
from ingest.received import Received, ingest_received, read_identity
from ingest.sources.multipart import boundary_of, split_multipart
from search_api.deps import CatalogDep, SettingsDep, check_name
from search_api.errors import ApiError, error_responses
from search_api.middleware import RouteInfo
from search_api.security import Role, require_role

__all__ = ["router", "takes_uploads"]

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
    readable = [item for item in items if item.sop_instance]
    report = ingest_received(catalog, settings, collection, readable)
    refused = {f.key for f in report.failed} | {f.key for f in report.quarantined}
    stored: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for item in items:
        if item.sop_instance is None:
            failed.append({**_reference(item), _FAILURE_REASON: {"vr": "US", "Value": [_CANNOT_UNDERSTAND]}})
        elif item.sop_instance in refused:
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
    result = await run_in_threadpool(partial(_store, catalog, settings, name, items))
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
