"""Side-by-side comparison: one query image searched in several collections (one per encoder)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Form, Request, UploadFile
from numpy.typing import NDArray

from core.catalog import Catalog, CollectionEntry
from core.config import Settings
from core.errors import (
    BadInput,
    CollectionNotFound,
    ConfigError,
    DecodeError,
    InvalidFilter,
    TooLarge,
    UnsupportedFormat,
)
from core.filter_warnings import StoredValues
from core.index.base import COLLECTION_NAME, Hit, VectorIndex
from core.payload import SearchFilter
from search_api import results, services
from search_api.deps import (
    CatalogDep,
    IndexDep,
    InferenceLimiterDep,
    SettingsDep,
    StoredValuesDep,
    check_limit,
)
from search_api.errors import UnknownField, error_responses
from search_api.offload import in_inference_thread, in_thread, on_index
from search_api.reidentify import reidentify_response
from search_api.results import InvalidQuery, Shape
from search_api.schemas import (
    GROUP_BY_DESCRIPTION,
    CompareResponse,
    CompareResult,
    ExcludeIn,
    FusedHit,
    GroupBy,
    Roi,
    SearchWarning,
)
from search_api.security import Role, require_role
from search_api.uploads import (
    FORM_NULL,
    check_form_fields,
    filter_from_form,
    model_from_form,
    read_upload,
    upload_name,
)

_FORM_FIELDS = ("file", "collections", "limit", "fuse", "filter", "exclude", "group_by", "group_size", "roi")

router = APIRouter(prefix="/v1/search", tags=["search"], dependencies=[require_role(Role.READER)])

_MAX_COLLECTIONS = 8
# The constant of Cormack et al.'s reciprocal-rank fusion; damps the weight of the very top ranks.
RRF_K = 60


def reciprocal_rank_fusion(
    rankings: dict[str, list[Hit]], *, k: int = RRF_K, limit: int | None = None
) -> list[FusedHit]:
    """Fuse ranked hit lists by point id: score = sum of 1 / (k + rank), ranks from 1.

    Point ids are the same image in every collection (UUIDv5 of source, key, frame), so one image
    found by several encoders accumulates their votes.
    """
    scores: dict[str, float] = {}
    ranks: dict[str, dict[str, int]] = {}
    payloads: dict[str, dict[str, Any]] = {}
    for collection, hits in rankings.items():
        for rank, hit in enumerate(hits, start=1):
            scores[hit.id] = scores.get(hit.id, 0.0) + 1.0 / (k + rank)
            ranks.setdefault(hit.id, {})[collection] = rank
            payloads.setdefault(hit.id, hit.payload)
    order = sorted(scores, key=lambda pid: (-scores[pid], min(ranks[pid].values()), pid))
    fused = [FusedHit(id=pid, score=scores[pid], ranks=ranks[pid], payload=payloads[pid]) for pid in order]
    return fused[:limit] if limit is not None else fused


def _parse_collections(raw: list[str]) -> list[str]:
    names = [name.strip() for item in raw for name in item.split(",") if name.strip()]
    if not names:
        raise ConfigError("name at least one collection")
    if len(set(names)) != len(names):
        raise ConfigError("collections must not repeat")
    if len(names) > _MAX_COLLECTIONS:
        raise ConfigError(f"compare at most {_MAX_COLLECTIONS} collections")
    for position, name in enumerate(names):
        if not COLLECTION_NAME.match(name):
            # the position, not the value: an error body never echoes what was sent
            raise CollectionNotFound(f"collections[{position}]: no such collection")
    return names


def _embed_all(
    *,
    catalog: Catalog,
    entries: list[CollectionEntry],
    settings: Settings,
    data: bytes,
    filename: str,
    roi: Roi | None,
) -> tuple[list[NDArray[np.float32]], results.QueryImage]:
    """Decode once, crop to ``roi``; embed the frame with each collection's own encoder."""
    image = results.read_upload_image(settings=settings, data=data, filename=filename)
    frame = results.crop(image.frame, roi, filename) if roi is not None else image.frame
    return [services.embed_frame(catalog=catalog, entry=e, frame=frame) for e in entries], image


def _search_all(
    *,
    index: VectorIndex,
    entries: list[CollectionEntry],
    vectors: list[NDArray[np.float32]],
    search_filter: SearchFilter | None,
    shape: Shape,
    stored: StoredValues,
) -> list[tuple[results.Found, float, list[SearchWarning]]]:
    out: list[tuple[results.Found, float, list[SearchWarning]]] = []
    for entry, vector in zip(entries, vectors, strict=True):
        started = time.perf_counter()
        found = results.find(
            index=index, entry=entry, vector=vector, search_filter=search_filter, shape=shape
        )
        took = (time.perf_counter() - started) * 1000
        warnings = services.search_warnings(
            index=index,
            entry=entry,
            search_filter=search_filter,
            stored=stored,
            ungroupable=found.ungroupable,
        )
        out.append((found, took, warnings))
    return out


@router.post(
    "/compare",
    responses=error_responses(
        CollectionNotFound,
        ConfigError,
        InvalidFilter,
        InvalidQuery,
        UnknownField,
        BadInput,
        DecodeError,
        TooLarge,
        UnsupportedFormat,
    ),
)
async def compare_collections(
    request: Request,
    file: Annotated[UploadFile, File(description="A DICOM, PNG or JPEG image")],
    collections: Annotated[
        list[str],
        Form(
            min_length=1,
            max_length=_MAX_COLLECTIONS,
            description=f"collections or aliases (repeat, or comma-separate; at most {_MAX_COLLECTIONS})",
        ),
    ],
    index: IndexDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    limiter: InferenceLimiterDep,
    stored: StoredValuesDep,
    limit: Annotated[int, Form(ge=1)] = 10,
    fuse: Annotated[bool, Form(description="add a reciprocal-rank-fusion list")] = False,
    filter_json: Annotated[str | None, Form(alias="filter", description="JSON filter object")] = None,
    exclude_json: Annotated[
        str | None,
        Form(alias="exclude", description='JSON object as for the image search, e.g. {"same_patient": true}'),
    ] = None,
    group_by: Annotated[GroupBy | None, FORM_NULL, Form(description=GROUP_BY_DESCRIPTION)] = None,
    group_size: Annotated[int, Form(ge=1, le=100)] = 3,
    roi_json: Annotated[
        str | None, Form(alias="roi", description='JSON {"x", "y", "width", "height"}: embed the crop')
    ] = None,
) -> CompareResponse:
    """Search one image in several collections: each collection's hits (and ``warnings`` for filter
    values it does not hold), and optionally a fused list (of the hits; with ``group_by`` each
    collection also answers groups). ``exclude``, ``roi`` as for the image search."""
    check_limit(limit, settings, loc=("body", "limit"))
    await check_form_fields(request, _FORM_FIELDS)
    names = _parse_collections(collections)
    exclude = model_from_form(ExcludeIn, exclude_json, "exclude")
    roi = model_from_form(Roi, roi_json, "roi")
    entries = await in_thread(lambda: [catalog.get(name) for name in names])
    filename = upload_name(file.filename)
    data = await read_upload(file, settings.api.max_upload_bytes, filename)
    vectors, image = await in_inference_thread(
        limiter,
        _embed_all,
        catalog=catalog,
        entries=entries,
        settings=settings,
        data=data,
        filename=filename,
        roi=roi,
    )
    search_filter = results.apply_exclusions(
        filter_from_form(filter_json),
        exclude,
        patients=[image.patient_hash],
        studies=[image.study_hash],
        source="upload",
    )
    searched = await on_index(
        index,
        _search_all,
        index=index,
        entries=entries,
        vectors=vectors,
        search_filter=search_filter,
        shape=Shape(limit=limit, group_by=group_by, group_size=group_size),
        stored=stored,
    )
    answers = [
        CompareResult(
            collection=name,
            encoder=entry.encoder.name,
            hits=results.hits_out(found.hits, found.threshold),
            took_ms=round(took, 3),
            warnings=warnings,
            **results.describe(found),
        )
        for name, entry, (found, took, warnings) in zip(names, entries, searched, strict=True)
    ]
    for answer in answers:
        await reidentify_response(request, answer.collection, answer)
    fused = (
        reciprocal_rank_fusion(
            {name: found.hits for name, (found, _, _) in zip(names, searched, strict=True)}, limit=limit
        )
        if fuse
        else None
    )
    return CompareResponse(results=answers, fused=fused)
