"""Request and response models of the HTTP API (a leaf: imports nothing of search_api)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from core.encoders.spec import EncoderSpec
from core.errors import ConfigError, InvalidFilter
from core.index.base import COLLECTION_NAME_PATTERN, check_collection_name
from core.jobs import JobCounts, JobRecord
from core.payload import SearchFilter

__all__ = [
    "AliasPublic",
    "AliasSwitchedPublic",
    "AliasUpdate",
    "AliasesPublic",
    "BackfillCreate",
    "BackfillJobPublic",
    "CalibrationPublic",
    "CollectionCreate",
    "CollectionDetailPublic",
    "CollectionPublic",
    "CompareResponse",
    "CompareResult",
    "FailedItemPublic",
    "FusedHit",
    "IndexingPublic",
    "IngestJobPublic",
    "IngestJobsPublic",
    "ItemPublic",
    "JobCounts",
    "JobOptions",
    "JobSummary",
    "JobSummaryField",
    "JobThroughput",
    "OptimizePublic",
    "PayloadPublic",
    "PointBookkeeping",
    "PointIn",
    "PointPayloadIn",
    "SourceOverlapPublic",
    "SourceOverlaps",
    "SourceRegistration",
    "PointsBookkeeping",
    "PointPayloadUpdate",
    "PointsDelete",
    "PointsPayloadOverwrite",
    "PointsDeleted",
    "PointsLookup",
    "PointsScroll",
    "PointsUpsert",
    "PointsUpserted",
    "CollectionsPublic",
    "FacetsPublic",
    "HealthPublic",
    "PointPublic",
    "ExcludeIn",
    "GroupBy",
    "ROI_MAX",
    "TEXT_MAX",
    "Roi",
    "SearchFilterIn",
    "SearchGroup",
    "SearchHit",
    "SearchQuery",
    "SearchResponse",
    "SearchWarning",
    "parse_filter",
]


def parse_filter(raw: Any) -> SearchFilter | None:
    """An untrusted filter mapping → `SearchFilter` (None when empty); `InvalidFilter` otherwise."""
    if raw is None:
        return None
    if isinstance(raw, BaseModel):
        raw = raw.model_dump(exclude_none=True)
    try:
        search_filter = SearchFilter.from_mapping(raw)
    except ValidationError as exc:
        # e.g. too many values for one field: still the client's filter at fault, not a 500
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidFilter(f"invalid filter: {errors}") from exc
    # conditions() refuses fields given with no values rather than silently widening the search
    return search_filter if search_filter.conditions() else None


def _values(max_items: int) -> Any:
    return Field(default=None, max_length=max_items)


class SearchFilterIn(BaseModel):
    """A search filter: field → the values to match (any of the values within a field, all of the
    fields); a single string stands for a one-value list. The fields of `core.payload.SearchFilter`."""

    model_config = ConfigDict(extra="forbid")

    modality: list[str] | str | None = _values(100)
    anatomy: list[str] | str | None = _values(100)
    pathology: list[str] | str | None = _values(100)
    dataset: list[str] | str | None = _values(100)
    split: list[str] | str | None = _values(100)
    source: list[str] | str | None = _values(100)
    key: list[str] | str | None = _values(1000)


GroupBy = Literal["object", "series", "study"]
_HASH = r"^[0-9a-f]{32}$"
_MAX_EXAMPLES = 64

GROUP_BY_DESCRIPTION = (
    "group hits by object (all frames of one file), series or study (the keyed hashes in the payload); "
    "``limit`` then counts groups, each of up to ``group_size`` hits, ranked by its best hit. Points "
    "without the field (PNG/JPEG have no series or study) are left out of series and study groups. "
    "The Qdrant server backend groups in the engine (query_points_groups); the embedded Qdrant Edge "
    "store over-fetches hits (4 x limit x group_size, growing 4-fold, at most 4096) and groups those."
)


class ExcludeIn(BaseModel):
    """Hits to leave out: the query's own patient or study, or listed ones (keyed hashes, as in
    payloads' ``patient_hash`` / ``study_hash``)."""

    model_config = ConfigDict(extra="forbid")

    same_patient: bool = Field(
        default=False,
        description="leave out the query's patient (a stored point's or an uploaded DICOM's PatientID, "
        "as its keyed hash); 400 for a query that has none (a vector, a text, a PNG)",
    )
    same_study: bool = Field(default=False, description="leave out the query's study, as same_patient")
    patients: list[Annotated[str, Field(pattern=_HASH)]] | None = Field(default=None, max_length=1000)
    studies: list[Annotated[str, Field(pattern=_HASH)]] | None = Field(default=None, max_length=1000)


# The largest coordinate or side of a region, in pixels (the command line's --roi checks it too).
ROI_MAX = 65535
# The longest query text, in characters (the command line's --text checks it too).
TEXT_MAX = 2000


class Roi(BaseModel):
    """A region of the uploaded image, in pixels of its rendered query frame: the crop is embedded."""

    model_config = ConfigDict(extra="forbid")

    x: int = Field(ge=0, le=ROI_MAX)
    y: int = Field(ge=0, le=ROI_MAX)
    width: int = Field(ge=1, le=ROI_MAX)
    height: int = Field(ge=1, le=ROI_MAX)


def canonical_point_id(value: str) -> str:
    """A point id in its canonical form; `ValueError` ("point ids are UUIDs") for a value that is
    no UUID: it cannot name a point. The rule of JSON bodies (`PointId`) and form fields alike."""
    try:
        return str(UUID(value))
    except ValueError:
        raise ValueError("point ids are UUIDs") from None


PointId = Annotated[str, Field(max_length=64), AfterValidator(canonical_point_id)]


# Scores are cosine similarities: a threshold outside -1 to 1 would leave every hit out, or none.
ScoreThreshold = Annotated[
    float,
    Field(
        ge=-1.0,
        le=1.0,
        allow_inf_nan=False,
        description="cosine similarity, -1 to 1: hits scoring below it are left out",
    ),
]


class SearchQuery(BaseModel):
    """Search by exactly one of a stored point id, a raw vector, a text (encoders with a text tower)
    or ``positive`` examples (with optional ``negative`` ones).

    ``filter`` maps field names (modality, anatomy, pathology, dataset, split, source, key) to lists of
    values: any of the values within a field, all of the fields.
    """

    model_config = ConfigDict(extra="forbid")

    point_id: PointId | None = None
    vector: list[float] | None = Field(default=None, min_length=1, max_length=65536)
    text: str | None = Field(default=None, min_length=1, max_length=TEXT_MAX)
    positive: list[PointId] | None = Field(
        default=None,
        min_length=1,
        max_length=_MAX_EXAMPLES,
        description="point ids of examples to search like, scored as Qdrant's recommendation query "
        "with the average_vector strategy (avg(positive) + (avg(positive) - avg(negative))); the "
        "examples themselves are left out of the hits",
    )
    negative: list[PointId] | None = Field(
        default=None, max_length=_MAX_EXAMPLES, description="point ids of examples to search away from"
    )
    filter: SearchFilterIn | None = None
    exclude: ExcludeIn | None = None
    group_by: GroupBy | None = Field(default=None, description=GROUP_BY_DESCRIPTION)
    group_size: int = Field(default=3, ge=1, le=100, description="hits per group (with group_by)")
    limit: int = Field(default=10, ge=1, description="at most the server's max_limit (1000 by default)")
    offset: int = Field(default=0, ge=0, le=100_000)
    score_threshold: ScoreThreshold | None = None

    @model_validator(mode="after")
    def _exactly_one_query(self) -> SearchQuery:
        given = [
            name for name in ("point_id", "vector", "text", "positive") if getattr(self, name) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of point_id, vector, text or positive"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.negative and self.positive is None:
            raise ValueError("negative examples go with positive ones")
        return self


def _shown() -> Any:
    return Field(default=None, exclude_if=lambda value: value is None)


class PayloadPublic(BaseModel):
    """A point's stored payload: the allow-listed fields of ``core.payload`` (only those a point
    has appear). No patient-identifying attribute is ever among them; ``*_hash`` are keyed hashes."""

    modality: str | None = _shown()
    anatomy: str | None = _shown()
    pathology: list[str] | None = _shown()
    dataset: str | None = _shown()
    split: str | None = _shown()
    source: str | None = _shown()
    key: str | None = _shown()
    frame: int | None = _shown()
    n_frames: int | None = _shown()
    frames_sampled: int | None = _shown()
    etag: str | None = _shown()
    size: int | None = _shown()
    rows: int | None = _shown()
    cols: int | None = _shown()
    encoder: str | None = _shown()
    weights: str | None = _shown()
    ingested_at: str | None = _shown()
    study_hash: str | None = _shown()
    series_hash: str | None = _shown()
    instance_hash: str | None = _shown()
    patient_hash: str | None = _shown()
    labels_hash: str | None = _shown()


_CLINICIAN = "clinician role only: the instance's UID, from the re-identification table"


class SearchHit(BaseModel):
    id: str
    score: float
    payload: PayloadPublic
    weak: bool | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="the score is below the collection's calibrated threshold (no close match); "
        "absent when the collection was never calibrated",
    )
    # For the clinician role only, where the re-identification table holds the instance (each such
    # hit is audited); absent for every other role.
    study_uid: str | None = Field(default=None, exclude_if=lambda v: v is None, description=_CLINICIAN)
    series_uid: str | None = Field(default=None, exclude_if=lambda v: v is None, description=_CLINICIAN)
    instance_uid: str | None = Field(default=None, exclude_if=lambda v: v is None, description=_CLINICIAN)
    viewer_url: str | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="clinician role only: the study in the configured viewer (RADSEARCH_DICOMWEB__VIEWER)",
    )


class SearchGroup(BaseModel):
    """Hits sharing one object key, series hash or study hash, best first."""

    key: str = Field(description="the object's key, or the keyed series/study hash")
    hits: list[SearchHit]


class SearchWarning(BaseModel):
    """A filter value that matches no stored value of its field: the search ran, and found only
    what the other values allow (often nothing). Or a ``group_by`` that found no group where
    hits exist (``field`` "group_by"): none of them holds the group's field."""

    field: str = Field(description="the filter field, e.g. anatomy; or group_by")
    value: str = Field(description="the filter value that matched no stored value; or the group_by")
    message: str
    suggestions: list[str] = Field(description="the closest stored values of the field, best first")


class SearchResponse(BaseModel):
    hits: list[SearchHit] = Field(description="the hits; with group_by, those of the groups in group order")
    groups: list[SearchGroup] | None = Field(
        default=None, exclude_if=lambda value: value is None, description="with group_by: the groups"
    )
    close_match: bool | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description="false when the best hit is weak (or there is none); absent when the collection "
        "was never calibrated (radsearch collections calibrate)",
    )
    collection: str
    took_ms: float
    warnings: list[SearchWarning] = Field(
        default_factory=list,
        description="filter values that match no stored value, and a group_by no hit can be grouped by",
    )


class CollectionPublic(BaseModel):
    name: str
    encoder: str
    dim: int
    points: int
    weights: str
    text_search: bool
    created_at: str


class CollectionDetailPublic(CollectionPublic):
    """One collection's full record (``GET /v1/collections/{name}``)."""

    spec: EncoderSpec
    quantization: Literal["none", "int8"]
    on_disk: bool
    accept_burned_in: bool = Field(
        default=False,
        description="an ingest accepted objects with burned-in annotation (--accept-burned-in): "
        "they are indexed and their thumbnails served",
    )
    indexing: IndexingPublic
    aliases: list[str]
    id_scheme: Literal["v1", "v2"] = Field(
        default="v1", description="how point ids derive: v1 source path + key, v2 the image itself"
    )


class IndexingPublic(BaseModel):
    """How much of the collection its search index covers: ``indexed_vectors`` of ``points``.

    ``status``: green = indexed (what is left unindexed is small enough for a full scan), yellow =
    an index build is due, scheduled or running (``optimizing``: the store's owner builds it in
    the background, or a bulk load's end does), unknown where the store does not say. Fields the
    store does not report are null."""

    status: str
    points: int | None = None
    indexed_vectors: int | None
    unindexed_vectors: int | None = None
    optimizing: bool | None = None
    segments: int | None = None


def _collection_name(value: str) -> str:
    try:
        return check_collection_name(value, "a collection name")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


#: A collection's (or alias's) name: checked by the catalog's own rule, which names itself in the
#: 422 (not a regular expression); the pattern documents it in the OpenAPI schema.
CollectionName = Annotated[
    str, Field(json_schema_extra={"pattern": COLLECTION_NAME_PATTERN}), AfterValidator(_collection_name)
]


class CollectionCreate(BaseModel):
    """A new collection: ``encoder`` is a registry name or a full encoder spec."""

    model_config = ConfigDict(extra="forbid")

    name: CollectionName
    encoder: Annotated[str, Field(max_length=200)] | dict[str, Any] = Field(examples=["biomedclip"])
    weights: str | None = Field(
        default=None, max_length=1100, description="path, s3:// URI, hub id or 'random' (overrides the spec)"
    )
    quantization: Literal["none", "int8"] | None = Field(
        default=None, description="int8 (rescored with the originals) or none; default: the server's"
    )
    on_disk: bool = False


class BackfillCreate(BaseModel):
    """Embed every image another collection (or alias) knows, or an ``s3://`` source, into this one."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(alias="from", min_length=1, max_length=1100, examples=["biomedclip"])
    path_template: str | None = Field(default=None, max_length=300)


class AliasUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: CollectionName
    force: bool = Field(
        default=False, description="switch even while a backfill writes to it or its index is not built"
    )


class AliasPublic(BaseModel):
    """An alias as listed (``GET /v1/aliases``, ``radsearch collections aliases --json``)."""

    alias: str
    collection: str


class AliasSwitchedPublic(AliasPublic):
    """An alias just set: ``previous`` is the collection it named before, or null for a new alias."""

    previous: str | None = None


class AliasesPublic(BaseModel):
    aliases: list[AliasPublic]


class ItemPublic(BaseModel):
    """One object a job could not use: its key and why (never anything from inside the file)."""

    key: str
    reason: str


class JobSummary(BaseModel):
    """A finished owner-run job's summary: the shape of ``radsearch ingest --json``. Documents
    `JobSummaryField`; the summary itself is passed on as the job wrote it (its keys in its order,
    as the command line prints them)."""

    model_config = ConfigDict(extra="allow")

    collection: str | None = _shown()
    objects: int | None = _shown()
    frames_indexed: int | None = _shown()
    skipped: int | None = _shown()
    failed: int | None = _shown()
    quarantined: int | None = _shown()
    errors: list[ItemPublic] | None = _shown()
    quarantined_items: list[ItemPublic] | None = _shown()
    deleted: int | None = _shown()
    deleted_items: list[str] | None = _shown()
    accept_burned_in: bool | None = _shown()
    seconds: float | None = _shown()


# The summary as the job wrote it, declared as `JobSummary` (`search_api.openapi` adds the component).
JobSummaryField = Annotated[
    dict[str, Any] | None,
    WithJsonSchema({"anyOf": [{"$ref": "#/components/schemas/JobSummary"}, {"type": "null"}]}),
]


class JobOptions(BaseModel):
    manifest: str | None
    path_template: str | None
    skip_unchanged: bool
    encoder: str | None
    batch_size: int | None
    accept_burned_in: bool = False
    prune: bool = False
    dry_run: bool = False
    max_delete_fraction: float = 0.1
    force: bool = False
    source_name: str | None = None


class JobThroughput(BaseModel):
    objects_per_s: float | None
    frames_per_s: float | None


class FailedItemPublic(BaseModel):
    key: str
    reason: str


class IngestJobPublic(BaseModel):
    id: str
    kind: Literal["ingest", "reconcile", "events", "requeue"]
    state: Literal["queued", "planning", "running", "done", "failed"]
    source: str
    collections: list[str]
    options: JobOptions
    counts: JobCounts
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    seconds: float | None
    throughput: JobThroughput
    error: str | None = None
    drift: dict[str, dict[str, Any]] | None = Field(
        default=None,
        description="reconcile: per collection, counts and the keys deleted (deleted_items); a dry "
        "run lists every key that would be added, changed or deleted; refused: the guard said no",
    )
    failed_items: list[FailedItemPublic] = Field(default_factory=list)
    executor: Literal["celery", "owner"] = "celery"
    summary: JobSummaryField = Field(
        default=None,
        description="owner jobs, once done: collection, objects, frames_indexed, skipped, failed, "
        "quarantined, errors, quarantined_items, deleted, deleted_items, accept_burned_in, seconds (the "
        "shape of `radsearch ingest --json`); a dry run: dry_run and diffs",
    )
    error_status: int | None = Field(
        default=None, description="owner jobs, once failed: the HTTP status of their error"
    )
    waiting: str | None = Field(
        default=None,
        description="why an unfinished job does not move, e.g. 'no live worker on queue plan' "
        "(no worker of that queue heard from for celery.worker_dead_after_s); null otherwise",
    )
    resumed: int = Field(default=0, description="owner jobs: how often a restart of the server ran it again")

    @classmethod
    def from_record(cls, record: JobRecord, *, with_items: bool = True) -> IngestJobPublic:
        """An ingest job (the workers' or an owner-run one) as the ingest-jobs routes show it."""
        return cls.model_validate(record.to_dict(with_items=with_items))


class IngestJobsPublic(BaseModel):
    data: list[IngestJobPublic]
    count: int
    warning: str | None = Field(
        default=None, description="set when the job store lost its state (jobs created before are gone)"
    )


class BackfillJobPublic(BaseModel):
    """A backfill job, in the ingest jobs' shape (``source`` is the collection or URI it reads)."""

    id: str
    kind: Literal["backfill"]
    state: Literal["queued", "planning", "running", "done", "failed"]
    source: str
    collections: list[str]
    counts: dict[str, int]
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    seconds: float | None
    throughput: dict[str, float | None]
    error: str | None = None
    failed_items: list[dict[str, str]] = Field(default_factory=list)
    summary: JobSummaryField = Field(
        default=None,
        description="once done: objects, frames_indexed, skipped, failed, quarantined, errors, "
        "quarantined_items (the shape of `radsearch collections backfill --json`)",
    )
    error_status: int | None = Field(default=None, description="once failed: the HTTP status of its error")
    resumed: int = Field(default=0, description="how often a restart of the server ran it again")

    @classmethod
    def from_record(cls, record: JobRecord) -> BackfillJobPublic:
        """A backfill job as the backfill routes show it (a `JobRecord` of kind backfill)."""
        return cls.model_validate(record.to_dict())


class CalibrationPublic(BaseModel):
    """A collection's "no close match" threshold (``core.calibration``): hits scoring below it are
    ``weak``. ``threshold`` is null for a collection of fewer than two points (nothing stored)."""

    collection: str
    threshold: float | None
    quantile: float | None = None
    queries: int | None = None
    points: int | None = None
    method: str | None = None
    computed_at: str | None = None


class CompareResult(BaseModel):
    collection: str
    encoder: str
    hits: list[SearchHit]
    groups: list[SearchGroup] | None = Field(default=None, exclude_if=lambda value: value is None)
    close_match: bool | None = Field(default=None, exclude_if=lambda value: value is None)
    took_ms: float
    warnings: list[SearchWarning] = Field(
        default_factory=list,
        description="filter values that match no stored value of this collection, and a group_by no hit "
        "can be grouped by",
    )


class FusedHit(BaseModel):
    """Reciprocal-rank fusion: ``score`` = sum over collections of 1 / (k + rank)."""

    id: str
    score: float
    ranks: dict[str, int]
    payload: PayloadPublic


class CompareResponse(BaseModel):
    results: list[CompareResult]
    fused: list[FusedHit] | None = None


class CollectionsPublic(BaseModel):
    collections: list[CollectionPublic]


class PointPublic(BaseModel):
    id: str
    payload: PayloadPublic


class FacetsPublic(BaseModel):
    field: str
    counts: dict[str, int]
    warnings: list[SearchWarning] = Field(
        default_factory=list, description="filter values that match no stored value (as a search's)"
    )


class HealthPublic(BaseModel):
    status: str


# -- points written through the store's owner (``routes/points.py``, role ingest) -------------------


def _label() -> Any:
    return Field(default=None, max_length=200)


def _hash() -> Any:
    return Field(default=None, max_length=64)


def _count() -> Any:
    return Field(default=None, ge=0)


class PointPayloadIn(BaseModel):
    """A point's payload: the allow-list of ``core.payload``; any other field is refused (400
    ``unknown_field``, naming it), never stored. ``pathology`` is a list of labels."""

    model_config = ConfigDict(extra="forbid")

    modality: str | None = _label()
    anatomy: str | None = _label()
    pathology: list[str] | str | None = Field(default=None, max_length=100)
    dataset: str | None = _label()
    split: str | None = _label()
    source: str | None = Field(default=None, max_length=2048)
    key: str | None = Field(default=None, max_length=2048)
    frame: int | None = _count()
    n_frames: int | None = _count()
    frames_sampled: int | None = _count()
    etag: str | None = _label()
    size: int | None = _count()
    rows: int | None = _count()
    cols: int | None = _count()
    encoder: str | None = _label()
    weights: str | None = _label()
    ingested_at: str | None = Field(default=None, max_length=64)
    study_hash: str | None = _hash()
    series_hash: str | None = _hash()
    instance_hash: str | None = _hash()
    patient_hash: str | None = _hash()
    labels_hash: str | None = _hash()


_LABELS_FROM = (
    "a stored point (this one, or another frame of its object) whose labels (modality, anatomy, "
    "pathology, dataset, split, labels_hash) this point takes instead of its payload's, where that "
    "point exists: a re-embedded object whose label rules this run lacks keeps its labels"
)


class PointIn(BaseModel):
    """One point to write: its id (a UUID: the same id overwrites), vector and payload."""

    model_config = ConfigDict(extra="forbid")

    id: UUID
    vector: list[float] = Field(min_length=1, max_length=65536)
    payload: PointPayloadIn = Field(default_factory=PointPayloadIn)
    labels_from: UUID | None = Field(default=None, description=_LABELS_FROM)


class PointsUpsert(BaseModel):
    """A batch of points computed elsewhere (a worker, your own pipeline). Vectors are checked
    (the collection's dimension, finite, non-zero) and L2-normalised; ``insert_only`` leaves points
    that already exist untouched."""

    model_config = ConfigDict(extra="forbid")

    points: list[PointIn] = Field(min_length=1, max_length=10_000)
    insert_only: bool = False


class PointsUpserted(BaseModel):
    collection: str
    upserted: int


class PointPayloadUpdate(BaseModel):
    """A point's new payload (replaces the whole stored payload; its vector stays)."""

    model_config = ConfigDict(extra="forbid")

    id: UUID
    payload: PointPayloadIn
    labels_from: UUID | None = Field(default=None, description=_LABELS_FROM)


class PointsPayloadOverwrite(BaseModel):
    """Relabel points without re-embedding them: each listed point that exists gets ``payload``."""

    model_config = ConfigDict(extra="forbid")

    points: list[PointPayloadUpdate] = Field(min_length=1, max_length=10_000)


class SourceRegistration(BaseModel):
    """Where the objects of a stable source name are read from (kept in the collection's metadata,
    never shown in payloads)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    uri: str = Field(min_length=1, max_length=2048)


class SourceOverlapPublic(BaseModel):
    """Another source name of the collection that reaches the same files, and how its keys differ."""

    name: str
    strip: str = Field(description="the key prefix the asked source's keys carry and this one's lack")
    add: str = Field(description="the key prefix this source's keys carry and the asked one's lack")


class SourceOverlaps(BaseModel):
    overlaps: list[SourceOverlapPublic]


class PointsDelete(BaseModel):
    """Delete by ``ids`` or by ``filter`` (field → any-of values, e.g. ``{"source": [...], "key":
    [...]}``): exactly one of them; the filter must name at least one field."""

    model_config = ConfigDict(extra="forbid")

    ids: list[UUID] | None = Field(default=None, min_length=1, max_length=10_000)
    filter: SearchFilterIn | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PointsDelete:
        if (self.ids is None) == (self.filter is None):
            raise ValueError("give exactly one of ids or filter")
        return self


class PointsDeleted(BaseModel):
    """``deleted``: the points that matched when the deletion ran."""

    collection: str
    deleted: int


class PointsLookup(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[UUID] = Field(min_length=1, max_length=10_000)


class PointsScroll(BaseModel):
    """A page of the collection's points (matching ``filter``), from ``offset`` (a previous page's
    ``next_offset``; none: the first page)."""

    model_config = ConfigDict(extra="forbid")

    filter: SearchFilterIn | None = None
    limit: int = Field(default=1000, ge=1, le=10_000)
    offset: UUID | None = None


class PointBookkeeping(BaseModel):
    """What the ingest side needs to know about a stored point: where it came from and at which
    version (ETag, size), never its labels or pixels."""

    id: str
    source: str | None = None
    key: str | None = None
    frame: int | None = None
    n_frames: int | None = None
    frames_sampled: int | None = None
    etag: str | None = None
    size: int | None = None
    labels_hash: str | None = None
    instance_hash: str | None = Field(default=None, description="a DICOM frame's instance, as a keyed hash")


class PointsBookkeeping(BaseModel):
    collection: str
    points: list[PointBookkeeping]
    next_offset: str | None = None


class OptimizePublic(BaseModel):
    """The collection once its index is built: ``indexed_vectors`` equals ``points`` unless the
    collection is small enough to be searched exactly (``status`` green either way)."""

    collection: str
    points: int
    indexed_vectors: int | None
    status: str


# -- backups: the trash and snapshots (embedded store) ---------------------------------------------


class CollectionDropped(BaseModel):
    """What a drop did: moved to the trash until ``expires_at`` (embedded store), or deleted for
    good (``trashed`` false: a Qdrant server)."""

    name: str
    trashed: bool
    points: int | None = None
    dropped_at: str | None = None
    expires_at: str | None = None
    message: str


class CollectionRestore(BaseModel):
    """Bring a dropped collection back from the trash, under its name or ``as``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    as_: CollectionName | None = Field(default=None, alias="as")


class TrashEntryPublic(BaseModel):
    id: str
    name: str
    points: int | None = Field(description="null where the collection was damaged when dropped")
    dropped_at: str
    expires_at: str


class TrashPublic(BaseModel):
    trash: list[TrashEntryPublic]


class CollectionRestored(BaseModel):
    name: str
    source: str
    points: int


class SnapshotCreate(BaseModel):
    """Collections to snapshot (their own names); none: every collection."""

    model_config = ConfigDict(extra="forbid")

    collections: list[CollectionName] | None = Field(default=None, max_length=1000)


class SnapshotCollectionPublic(BaseModel):
    name: str
    points: int
    catalog: dict[str, Any]


class SnapshotPublic(BaseModel):
    id: str
    created_at: str
    radsearch_version: str
    collections: list[SnapshotCollectionPublic]


class SnapshotsPublic(BaseModel):
    snapshots: list[SnapshotPublic]


class SnapshotRestore(BaseModel):
    """Restore a snapshot's collections, or ``collection`` alone (as ``as``); ``force`` replaces a
    collection of the same name (it goes to the trash)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    collection: CollectionName | None = None
    as_: CollectionName | None = Field(default=None, alias="as")
    force: bool = False


class SnapshotRestored(BaseModel):
    snapshot: str
    restored: list[CollectionRestored]
