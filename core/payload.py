"""Payload schema: point ids, the payload allow-list, keyed hashes and search filters.

The allow-list is enforced here and only here: every payload written to a collection goes through
`build_payload`, so no DICOM attribute outside it (names, ids, dates, free text) can reach a store.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.errors import InvalidFilter
from core.suggest import named_with_suggestions

__all__ = [
    "EXCLUDABLE_FIELDS",
    "FILTER_FIELDS",
    "GROUP_FIELDS",
    "INDEXED_FIELDS",
    "LABEL_FIELDS",
    "NO_RULES_HASH",
    "PAYLOAD_FIELDS",
    "SearchFilter",
    "build_payload",
    "ID_SCHEMES",
    "image_point_id",
    "keyed_hash",
    "match_forms",
    "normalise_modality",
    "labels_hash",
    "point_id",
    "unknown_filter_fields",
]

#: How a collection derives point ids. v1 (collections created before stable identity): the
#: source URI, the key and the frame. v2: the image itself (`image_point_id`).
ID_SCHEMES: tuple[str, ...] = ("v1", "v2")

# Namespace of radsearch point ids (a fixed, arbitrary UUID).
_POINT_NAMESPACE = uuid.UUID("5b0a3c1e-7d2f-4c55-9e0a-2f7b6c1d9a41")

#: The labels an image carries (manifest, path template, object metadata, DICOM tags).
LABEL_FIELDS: tuple[str, ...] = ("modality", "anatomy", "pathology", "dataset", "split")
#: The fields searches filter on and facets count: the labels and the source's name.
FILTER_FIELDS: tuple[str, ...] = (*LABEL_FIELDS, "source")
# Keyword payload indexes, created before any data is written.
INDEXED_FIELDS: tuple[str, ...] = (*FILTER_FIELDS, "key", "study_hash", "series_hash", "patient_hash")
#: The payload fields a search can exclude values of (``exclude``: same patient, same study): keyed
#: hashes only, never an identifier. Set on a `SearchFilter` by the server, never from a client filter.
EXCLUDABLE_FIELDS: tuple[str, ...] = ("patient_hash", "study_hash")
PAYLOAD_FIELDS: frozenset[str] = frozenset(
    {
        *INDEXED_FIELDS,
        "frame",
        "n_frames",
        # how many frames of the object were embedded (long series are sampled): reconcile's count
        "frames_sampled",
        "etag",
        "size",
        "rows",
        "cols",
        "encoder",
        "weights",
        "ingested_at",
        "series_hash",
        "instance_hash",
        "patient_hash",
        "labels_hash",
    }
)
#: What a search can group hits by (``group_by``) → the payload field holding the group key: the
#: object's key (all frames of one file), the keyed hash of its Series or Study Instance UID.
GROUP_FIELDS: dict[str, str] = {"object": "key", "series": "series_hash", "study": "study_hash"}
_LIST_FIELDS = frozenset({"pathology"})
# Fields whose values are case-insensitive codes, stored and matched upper-case (DICOM's defined
# terms for Modality: CT, MR, CR, DX, US, ...). Other labels keep the case they were given.
UPPER_CASE_FIELDS: frozenset[str] = frozenset({"modality"})
# Labels that ingest stores lower-case (`ingest.labels`): a filter value matches its lower-case form
# too ("Chest" finds "chest"), and a value written as given through the points API still matches.
LOWER_CASE_FIELDS: frozenset[str] = frozenset({"anatomy", "pathology", "dataset", "split"})


def match_forms(field: str, value: str) -> list[str]:
    """The stored values a filter value of ``field`` matches: itself; for a modality also its lower-
    and title-case forms (payloads stored before codes were upper-cased), for a label of
    `LOWER_CASE_FIELDS` its lower-case form."""
    if field in UPPER_CASE_FIELDS:
        return list(dict.fromkeys((value, value.lower(), value.title())))
    if field in LOWER_CASE_FIELDS:
        return list(dict.fromkeys((value, value.lower())))
    return [value]


def point_id(source: str, key: str, frame: int) -> str:
    """Deterministic id of one frame: UUIDv5 of (source URI, object key, frame index) (id scheme
    v1, kept by collections created before `image_point_id`)."""
    return str(uuid.uuid5(_POINT_NAMESPACE, f"{source}\x1f{key}\x1f{frame}"))


def image_point_id(frame: int, *, instance_hash: str | None, source_name: str, key: str) -> str:
    """Deterministic id of one frame from the image, not its location (id scheme v2).

    A DICOM frame: the keyed hash of its SOP Instance UID and the frame number, so the same
    instance is one image wherever it is stored and in whatever transfer syntax. Any other file:
    the stable source name and the key relative to the ingested root.
    """
    if instance_hash:
        identity = f"dicom\x1f{instance_hash}\x1f{frame}"
    else:
        identity = f"file\x1f{source_name}\x1f{key}\x1f{frame}"
    return str(uuid.uuid5(_POINT_NAMESPACE, identity))


def labels_hash(labels: Mapping[str, Any]) -> str:
    """A short digest of the label-rule results of one object (manifest row, path template), stored
    with its points so that a re-ingest notices a changed label without reading the object."""
    present = {k: v for k, v in labels.items() if v not in (None, "", [], {})}
    text = json.dumps(present, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: ``labels_hash`` of an object no label rule said anything about.
NO_RULES_HASH = labels_hash({})


def keyed_hash(key: bytes, value: str) -> str:
    """HMAC-SHA-256 of an identifier (UID, patient id), truncated to 32 hex characters."""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


def _normalise_label(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def normalise_modality(value: str) -> str:
    """A modality code as stored and matched: stripped, upper-case (``" mr"`` → ``"MR"``)."""
    return value.strip().upper()


def build_payload(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Keep only allow-listed fields, normalise labels; ``pathology`` is always a list of strings.

    Unknown fields are dropped silently on purpose: readers and label rules may offer more than the
    allow-list and the allow-list decides.
    """
    payload: dict[str, Any] = {}
    for name, value in fields.items():
        if name not in PAYLOAD_FIELDS or value is None:
            continue
        if name in _LIST_FIELDS:
            items = [value] if isinstance(value, str) else list(value)
            labels = [label for label in (_normalise_label(v) for v in items) if label]
            payload[name] = labels
        elif name in INDEXED_FIELDS:
            label = _normalise_label(value)
            if label is not None:
                payload[name] = label.upper() if name in UPPER_CASE_FIELDS else label
        else:
            payload[name] = value
    payload.setdefault("ingested_at", datetime.now(UTC).isoformat(timespec="seconds"))
    return payload


def unknown_filter_fields(names: Iterable[str]) -> InvalidFilter:
    """The error for filter fields that are none (``{"not": ...}``), naming them, the field each
    typo is closest to (``modaliti``: did you mean 'modality'?) and the fields a filter takes; the
    same words for a JSON body's filter and a form's."""
    allowed = (*FILTER_FIELDS, "key")
    shown = named_with_suggestions((name[:40] for name in sorted(names)[:10]), allowed)
    return InvalidFilter(f"unknown filter field(s) {shown}; allowed: {', '.join(allowed)}")


class SearchFilter(BaseModel):
    """Any-of within a field, all-of across fields. Only known fields; values are plain strings.

    ``modality`` values are upper-cased (as `build_payload` stores them); since collections built
    before that may hold lower- or mixed-case codes, `conditions` also matches a modality's lower-
    and title-case forms (``MR`` matches stored ``MR``, ``mr`` and ``Mr``), and a label's lower-case
    form (``Chest`` matches ``chest``, as ingest stores it): `match_forms`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    modality: list[str] | None = Field(default=None, max_length=100)
    anatomy: list[str] | None = Field(default=None, max_length=100)
    pathology: list[str] | None = Field(default=None, max_length=100)
    dataset: list[str] | None = Field(default=None, max_length=100)
    split: list[str] | None = Field(default=None, max_length=100)
    source: list[str] | None = Field(default=None, max_length=100)
    key: list[str] | None = Field(default=None, max_length=1000)
    # none of these values may appear (must-not): set by the search services, not a client filter
    not_patient_hash: list[str] | None = Field(default=None, max_length=1000)
    not_study_hash: list[str] | None = Field(default=None, max_length=1000)

    @field_validator("modality")
    @classmethod
    def _upper_case_modality(cls, values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        return list(dict.fromkeys(normalise_modality(v) for v in values))

    def conditions(self) -> list[tuple[str, list[str]]]:
        """The non-empty (field, any-of values) pairs, as the stores match them: each value in
        its `match_forms`."""
        return [
            (name, list(dict.fromkeys(form for v in values for form in match_forms(name, v))))
            for name, values in self.fields()
        ]

    def fields(self) -> list[tuple[str, list[str]]]:
        """The non-empty (field, any-of values) pairs as given (modality upper-cased); `InvalidFilter`
        for a field given with no values."""
        out: list[tuple[str, list[str]]] = []
        for name in (*FILTER_FIELDS, "key"):
            values = getattr(self, name)
            if values is None:
                continue
            if not values:
                raise InvalidFilter(f"filter field {name!r} needs at least one value")
            out.append((name, [str(v) for v in values]))
        return out

    def exclusions(self) -> list[tuple[str, list[str]]]:
        """The (field, none-of values) pairs: points holding any of the values are left out."""
        return [
            (name, list(values)) for name in EXCLUDABLE_FIELDS if (values := getattr(self, f"not_{name}"))
        ]

    def excluding(self, field: str, values: Iterable[str]) -> SearchFilter:
        """This filter with ``values`` of ``field`` (one of `EXCLUDABLE_FIELDS`) also excluded."""
        if field not in EXCLUDABLE_FIELDS:
            raise InvalidFilter(f"cannot exclude by {field!r}")
        current = getattr(self, f"not_{field}") or []
        merged = list(dict.fromkeys([*current, *values]))
        return self.model_copy(update={f"not_{field}": merged or None})

    def is_empty(self) -> bool:
        return not any(getattr(self, name) for name in (*FILTER_FIELDS, "key")) and not self.exclusions()

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> SearchFilter:
        """Build from untrusted JSON; unknown fields or non-string values raise `InvalidFilter`."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise InvalidFilter("filter must be a JSON object mapping field names to lists of values")
        unknown = set(raw) - {*FILTER_FIELDS, "key"}
        if unknown:
            raise unknown_filter_fields(unknown)
        clean: dict[str, list[str]] = {}
        for name, values in raw.items():
            if values is None:
                continue
            items: Iterable[Any] = [values] if isinstance(values, str) else values
            if not isinstance(items, list | tuple):
                raise InvalidFilter(f"filter field {name!r} must be a list of strings")
            if not all(isinstance(v, str) for v in items):
                raise InvalidFilter(f"filter field {name!r} must be a list of strings")
            clean[name] = list(items)
        return cls(**clean)
