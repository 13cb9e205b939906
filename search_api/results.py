"""What a search returns beyond a flat list of hits, for every search route: groups (object, series,
study), exclusion of the query's patient or study, several examples (positives and negatives),
region-of-interest crops of uploads, and the calibrated "no close match" (`core.calibration`).

Blocking functions; the routes run them off the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from core.catalog import CollectionEntry
from core.config import Settings
from core.errors import BadInput, DecodeError
from core.frame import Frame
from core.index.base import Hit, HitGroup, VectorIndex
from core.metrics import timed_search
from core.payload import GROUP_FIELDS, SearchFilter
from core.vectors import validate_vectors
from search_api import services
from search_api.schemas import ExcludeIn, Roi, SearchGroup, SearchHit

__all__ = [
    "RECOMMEND_STRATEGY",
    "Found",
    "InvalidQuery",
    "QueryImage",
    "Shape",
    "apply_exclusions",
    "close_match",
    "describe",
    "found",
    "payload_str",
    "average_vector",
    "crop",
    "find",
    "groups_out",
    "hits_out",
    "read_upload_image",
]

#: How several examples make one query: Qdrant's ``average_vector`` recommendation strategy.
RECOMMEND_STRATEGY = "average_vector"


class InvalidQuery(BadInput):
    """A search request whose parts do not fit together (400 ``invalid_query``, naming the field)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.args = (reason,)
        self.field = field


@dataclass(frozen=True)
class Shape:
    """How the hits come back: a page of hits, or ``limit`` groups of ``group_size`` hits."""

    limit: int
    offset: int = 0
    score_threshold: float | None = None
    group_by: str | None = None
    group_size: int = 3


@dataclass
class Found:
    hits: list[Hit]
    groups: list[HitGroup] | None
    threshold: float | None  # the collection's calibrated threshold, None when never calibrated
    # the group_by of a grouped search that found no group while hits exist: none of them holds
    # the group's field (a PNG has no series or study)
    ungroupable: str | None = None


@dataclass(frozen=True)
class QueryImage:
    """An uploaded image's query frame and the keyed hashes of its patient and study (DICOM)."""

    frame: Frame
    patient_hash: str | None = None
    study_hash: str | None = None
    n_frames: int = 1


def average_vector(
    positive: Sequence[NDArray[np.float32]], negative: Sequence[NDArray[np.float32]]
) -> NDArray[np.float32]:
    """Qdrant's ``average_vector`` strategy: the mean of the positives, moved away from the mean of
    the negatives by as much (``avg_pos + (avg_pos - avg_neg)``); the positives' mean alone when
    there are no negatives. Inputs are unit vectors; the result is normalised by the search."""
    if not positive:
        raise InvalidQuery("positive", "give at least one positive example")
    pos = np.mean(np.stack(positive).astype(np.float64), axis=0)
    if not negative:
        return np.asarray(pos, dtype=np.float32)
    neg = np.mean(np.stack(negative).astype(np.float64), axis=0)
    return np.asarray(pos + (pos - neg), dtype=np.float32)


def crop(frame: Frame, roi: Roi, name: str) -> Frame:
    """The ``roi`` of ``frame`` (pixel coordinates of the rendered frame); `InvalidQuery` when the
    region is not inside it."""
    height, width = frame.shape[:2]
    if roi.x + roi.width > width or roi.y + roi.height > height:
        raise InvalidQuery("roi", f"the region does not fit inside the {width}x{height} frame of {name}")
    return np.ascontiguousarray(frame[roi.y : roi.y + roi.height, roi.x : roi.x + roi.width])


def read_upload_image(*, settings: Settings, data: bytes, filename: str) -> QueryImage:
    """Decode an upload: its middle frame and (DICOM) the keyed hashes of its patient and study,
    hashed with the key ingest uses, so they match stored payloads."""
    decoded = services.decode_upload(settings=settings, data=data, filename=filename)
    if not decoded.frames:
        raise DecodeError(filename, "no image frames")
    meta = decoded.meta
    patient, study = meta.get("patient_hash"), meta.get("study_hash")
    return QueryImage(
        frame=decoded.frames[len(decoded.frames) // 2],
        patient_hash=patient if isinstance(patient, str) else None,
        study_hash=study if isinstance(study, str) else None,
        n_frames=len(decoded.frames),
    )


def apply_exclusions(
    search_filter: SearchFilter | None,
    exclude: ExcludeIn | None,
    *,
    patients: Sequence[str | None] = (),
    studies: Sequence[str | None] = (),
    source: str = "query",
) -> SearchFilter | None:
    """The filter with ``exclude``'s patients and studies left out: ``same_patient`` and
    ``same_study`` take the query's own (``patients``, ``studies``: one per example), ``patients``
    and ``studies`` lists are taken as given (keyed hashes). `InvalidQuery` when the query has no
    patient (or study) to exclude (a vector, a text, a PNG): nothing is silently not excluded."""
    if exclude is None:
        return search_filter
    result = search_filter or SearchFilter()
    excluded_patients = list(exclude.patients or [])
    excluded_studies = list(exclude.studies or [])
    if exclude.same_patient:
        if not patients or any(p is None for p in patients):
            raise InvalidQuery(
                "exclude.same_patient", f"the {source} has no patient to exclude (a DICOM with a PatientID)"
            )
        excluded_patients += [p for p in patients if p is not None]
    if exclude.same_study:
        if not studies or any(s is None for s in studies):
            raise InvalidQuery(
                "exclude.same_study",
                f"the {source} has no study to exclude (a DICOM with a StudyInstanceUID)",
            )
        excluded_studies += [s for s in studies if s is not None]
    if excluded_patients:
        result = result.excluding("patient_hash", excluded_patients)
    if excluded_studies:
        result = result.excluding("study_hash", excluded_studies)
    return result if not result.is_empty() else None


def find(
    *,
    index: VectorIndex,
    entry: CollectionEntry,
    vector: Sequence[float] | NDArray[np.float32],
    search_filter: SearchFilter | None,
    shape: Shape,
    exclude_ids: Sequence[str] = (),
) -> Found:
    """The hits (or groups) of one query vector, and the collection's calibrated threshold."""
    query = validate_vectors(vector, entry.dim, field="vector")[0]
    with timed_search(entry.name, search_filter):
        hits, groups = _search(index, entry, query, search_filter, shape, exclude_ids)
    ungroupable = None
    if groups == [] and index.search(
        entry.name,
        query,
        filter=search_filter,
        limit=1,
        score_threshold=shape.score_threshold,
        exclude_ids=exclude_ids,
    ):
        ungroupable = shape.group_by
    return Found(hits=hits, groups=groups, threshold=entry.calibration_threshold, ungroupable=ungroupable)


async def find_plain(
    *,
    index: VectorIndex,
    entry: CollectionEntry,
    vector: Sequence[float] | NDArray[np.float32],
    search_filter: SearchFilter | None,
    shape: Shape,
) -> Found:
    """`find` for a shape without groups, awaited on the index (`VectorIndex.search_async`)."""
    query = validate_vectors(vector, entry.dim, field="vector")[0]
    with timed_search(entry.name, search_filter):
        hits = await index.search_async(
            entry.name,
            query,
            filter=search_filter,
            limit=shape.limit,
            offset=shape.offset,
            score_threshold=shape.score_threshold,
        )
    return Found(hits=hits, groups=None, threshold=entry.calibration_threshold)


def _search(
    index: VectorIndex,
    entry: CollectionEntry,
    query: NDArray[np.float32],
    search_filter: SearchFilter | None,
    shape: Shape,
    exclude_ids: Sequence[str],
) -> tuple[list[Hit], list[HitGroup] | None]:
    groups: list[HitGroup] | None = None
    if shape.group_by is not None:
        groups = index.search_groups(
            entry.name,
            query,
            group_by=GROUP_FIELDS[shape.group_by],
            group_size=shape.group_size,
            limit=shape.limit,
            filter=search_filter,
            score_threshold=shape.score_threshold,
            exclude_ids=exclude_ids,
        )
        hits = [hit for group in groups for hit in group.hits]
    else:
        hits = index.search(
            entry.name,
            query,
            filter=search_filter,
            limit=shape.limit,
            offset=shape.offset,
            score_threshold=shape.score_threshold,
            exclude_ids=exclude_ids,
        )
    return hits, groups


def found(*, entry: CollectionEntry, hits: list[Hit]) -> Found:
    """Plain ``hits`` found elsewhere (`VectorIndex.search_near_point`), with the threshold."""
    return Found(hits=hits, groups=None, threshold=entry.calibration_threshold)


def payload_str(payload: Mapping[str, Any], name: str) -> str | None:
    """A payload's string field, or None."""
    value = payload.get(name)
    return value if isinstance(value, str) and value else None


def _hit_out(hit: Hit, threshold: float | None) -> SearchHit:
    weak = None if threshold is None else hit.score < threshold
    return SearchHit(id=hit.id, score=hit.score, payload=hit.payload, weak=weak)


def hits_out(hits: Sequence[Hit], threshold: float | None) -> list[SearchHit]:
    """Response hits; ``weak`` set where the collection is calibrated."""
    return [_hit_out(hit, threshold) for hit in hits]


def groups_out(groups: Sequence[HitGroup] | None, threshold: float | None) -> list[SearchGroup] | None:
    if groups is None:
        return None
    return [SearchGroup(key=g.key, hits=hits_out(g.hits, threshold)) for g in groups]


def close_match(hits: Sequence[Hit], threshold: float | None) -> bool | None:
    """False when the best hit is weak (or there is none), None when the collection is uncalibrated."""
    if threshold is None:
        return None
    return bool(hits) and max(hit.score for hit in hits) >= threshold


def describe(found: Found) -> dict[str, Any]:
    """The response fields `find` adds to the hits: groups, close_match."""
    return {
        "groups": groups_out(found.groups, found.threshold),
        "close_match": close_match(found.hits, found.threshold),
    }
