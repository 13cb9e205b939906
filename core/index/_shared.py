"""Helpers both index backends share: name and id checks, paging, config (de)serialisation."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict, TypeVar

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from core.config import StoreSettings
from core.errors import IndexStoreError, InvalidFilter, InvalidVector, StoreDamaged, field_names, os_reason
from core.index.base import CollectionConfig, StoredPoint
from core.index.combinations import public_payload
from core.payload import INDEXED_FIELDS, LABEL_FIELDS, NO_RULES_HASH, SearchFilter
from core.vectors import validate_vectors

__all__ = [
    "OVERSAMPLING",
    "HnswParams",
    "canonical_id",
    "check_batch",
    "check_config",
    "check_facet",
    "check_name",
    "check_page",
    "config_from_dict",
    "config_to_dict",
    "facet_counts",
    "filter_conditions",
    "hnsw_params",
    "is_valid_name",
    "known_ids",
    "query_vector",
    "read_config_file",
    "read_json_record",
    "stored_point",
    "stored_points",
    "vector_from_raw",
]

T = TypeVar("T")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# int8 quantization loses a little ranking precision; fetch extra candidates and rescore them
# with the original vectors.
OVERSAMPLING = 2.0


def is_valid_name(name: object) -> bool:
    return isinstance(name, str) and bool(_NAME_RE.match(name))


def check_name(name: str) -> None:
    if not is_valid_name(name):
        raise IndexStoreError(
            f"invalid collection name {name!r}: letters, digits, '.', '_', '-', at most 128, "
            "starting with a letter or digit"
        )


def canonical_id(point_id: str, *, position: int | None = None) -> str:
    """The id's canonical UUID string; `IndexStoreError` naming its ``position`` in a batch (never
    the value: whatever a caller sent where an id goes) when it is not a UUID."""
    try:
        return str(uuid.UUID(str(point_id)))
    except ValueError:
        where = "a point id" if position is None else f"point id [{position}]"
        raise IndexStoreError(f"{where} is not a UUID") from None


def known_ids(ids: Sequence[str]) -> list[str]:
    """The ids that could exist (UUIDs), canonical; anything else cannot be stored, so it is absent."""
    out: list[str] = []
    for point_id in ids:
        try:
            out.append(canonical_id(point_id))
        except IndexStoreError:
            continue
    return out


def check_page(limit: int, offset: int) -> None:
    if limit < 1:
        raise IndexStoreError(f"limit must be at least 1, got {limit}")
    if offset < 0:
        raise IndexStoreError(f"offset must not be negative, got {offset}")


def check_config(config: CollectionConfig) -> None:
    """Refuse a config no backend can create (name, dimension, quantization)."""
    check_name(config.name)
    if config.dim < 1:
        raise IndexStoreError(f"collection dimension must be positive, got {config.dim}")
    if config.quantization not in ("none", "int8"):
        raise IndexStoreError(f"unknown quantization {config.quantization!r}")


class HnswParams(TypedDict):
    m: int
    ef_construct: int
    payload_m: int
    full_scan_threshold: int


def hnsw_params(config: CollectionConfig, store: StoreSettings) -> HnswParams:
    """The collection's HNSW settings, each falling back to the store's default."""
    return HnswParams(
        m=config.hnsw_m if config.hnsw_m is not None else store.hnsw_m,
        ef_construct=(
            config.hnsw_ef_construct if config.hnsw_ef_construct is not None else store.hnsw_ef_construct
        ),
        payload_m=config.hnsw_payload_m if config.hnsw_payload_m is not None else store.hnsw_payload_m,
        full_scan_threshold=(
            config.full_scan_threshold_kb
            if config.full_scan_threshold_kb is not None
            else store.full_scan_threshold_kb
        ),
    )


def check_batch(
    ids: Sequence[str], vectors: NDArray[np.float32], payloads: Sequence[dict[str, Any]], dim: int
) -> tuple[NDArray[np.float32], list[str]]:
    """An upsert batch, validated: the vectors as float32 rows and the canonical ids."""
    arr = validate_vectors(vectors, dim)
    if arr.shape[0] != len(ids):
        raise InvalidVector(f"got {arr.shape[0]} vectors for {len(ids)} ids")
    if len(payloads) != len(ids):
        raise IndexStoreError(f"got {len(payloads)} payloads for {len(ids)} ids")
    return arr, [canonical_id(point_id, position=i) for i, point_id in enumerate(ids)]


def query_vector(vector: NDArray[np.float32], dim: int, limit: int, offset: int) -> list[float]:
    """A search's one query vector (validated) as a list, after checking the page."""
    query = validate_vectors(vector, dim)
    if query.shape[0] != 1:
        raise InvalidVector(f"search takes one query vector, got {query.shape[0]}")
    check_page(limit, offset)
    row: list[float] = query[0].tolist()
    return row


def check_facet(field: str, limit: int) -> None:
    if field not in INDEXED_FIELDS:
        raise InvalidFilter(f"cannot facet on {field!r}; indexed fields: {', '.join(INDEXED_FIELDS)}")
    if limit < 1:
        raise IndexStoreError(f"limit must be at least 1, got {limit}")


def facet_counts(hits: Iterable[Any]) -> dict[str, int]:
    """Facet hits (``.value``, ``.count``) as value → count, largest first, then by value; a value no
    point holds any more (the engine's exact facet lists one whose points were deleted, at 0) is
    left out."""
    counts = sorted(
        ((str(h.value), int(h.count)) for h in hits if int(h.count) > 0), key=lambda vc: (-vc[1], vc[0])
    )
    return dict(counts)


def stored_point(record: Any, with_vectors: bool) -> StoredPoint:
    """An engine record (``.id``, ``.payload``, ``.vector``) as a `StoredPoint`."""
    return StoredPoint(
        id=str(record.id),
        payload=public_payload(record.payload),
        vector=vector_from_raw(record.vector) if with_vectors else None,
    )


def stored_points(wanted: Sequence[str], records: Iterable[Any], with_vectors: bool) -> list[StoredPoint]:
    """The records among ``wanted`` (canonical ids), in ``wanted``'s order; missing ids left out."""
    by_id = {str(r.id): r for r in records}
    return [stored_point(by_id[pid], with_vectors) for pid in wanted if pid in by_id]


def config_to_dict(config: CollectionConfig) -> dict[str, Any]:
    """The config as plain JSON data; what is stored is exactly what comes back."""
    try:
        parsed: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(config)))
    except (TypeError, ValueError) as exc:
        raise IndexStoreError(f"collection metadata must be JSON-serialisable: {exc}") from exc
    return parsed


def carry_labels(
    stored: Callable[[list[str]], list[StoredPoint]],
    ids: Sequence[str],
    payloads: Sequence[dict[str, Any]],
    labels_from: Mapping[str, str] | None,
) -> list[dict[str, Any]]:
    """``payloads`` (of ``ids``), each whose id ``labels_from`` maps to a stored point (read
    with ``stored``) that label rules gave labels (its ``labels_hash`` is not that of no rules)
    holding that point's label fields (`LABEL_FIELDS`) and ``labels_hash`` instead of its own;
    the others as they are."""
    if not labels_from:
        return list(payloads)
    sources = {point.id: point.payload for point in stored(sorted(set(labels_from.values())))}
    carried = []
    for pid, payload in zip(ids, payloads, strict=True):
        source = sources.get(labels_from.get(pid, ""))
        if source is None or source.get("labels_hash") in (None, NO_RULES_HASH):
            carried.append(payload)
            continue
        kept = {k: v for k, v in payload.items() if k not in _CARRIED_LABELS}
        carried.append({**kept, **{k: source[k] for k in _CARRIED_LABELS if k in source}})
    return carried


_CARRIED_LABELS = (*LABEL_FIELDS, "labels_hash")


def payloads_to_overwrite(
    stored: Callable[[list[str]], list[StoredPoint]],
    payloads: Mapping[str, dict[str, Any]],
    labels_from: Mapping[str, str] | None,
) -> dict[str, dict[str, Any]]:
    """`VectorIndex.overwrite_payloads`' payloads by canonical id (ids that are none left out),
    with the labels ``labels_from`` names carried (`carry_labels`)."""
    wanted = {canonical: payload for pid, payload in payloads.items() for canonical in known_ids([pid])}
    return dict(
        zip(wanted, carry_labels(stored, list(wanted), list(wanted.values()), labels_from), strict=True)
    )


def read_json_record(path: Path, parse: Callable[[Any], T], what: str, advice: str, *, kind: str) -> T:
    """``parse`` of the JSON in ``path`` (one of the store's own records); `StoreDamaged` naming
    ``what``, the file (by its name: the message may reach an HTTP client) and why it cannot be
    read (not JSON, which line; not ``kind``, which fields), then ``advice``; never what the file
    holds. ``parse`` raises TypeError, ValueError or AttributeError for a document of another kind."""
    try:
        return parse(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        reason = os_reason(exc, "cannot be read")
    except UnicodeDecodeError:
        reason = "not UTF-8 text"
    except json.JSONDecodeError as exc:
        reason = f"not JSON (line {exc.lineno})"
    except ValidationError as exc:
        reason = f"not {kind} (fields missing or of the wrong kind: {field_names(exc.errors())})"
    except (TypeError, ValueError, AttributeError):
        reason = f"not {kind} (fields missing or of the wrong kind)"
    raise StoreDamaged(f"{what} is damaged: its {path.name}: {reason}; {advice}")


def read_config_file(path: Path, what: str, advice: str) -> CollectionConfig:
    """The `CollectionConfig` stored in ``path`` (a collection.json), by `read_json_record`."""
    return read_json_record(path, config_from_dict, what, advice, kind="a collection's record")


def config_from_dict(data: dict[str, Any]) -> CollectionConfig:
    known = {f.name for f in dataclasses.fields(CollectionConfig)}
    fields = {k: v for k, v in data.items() if k in known}
    # JSON has no tuples; a collection.json from before combined_fields existed indexes none
    fields["combined_fields"] = tuple(fields.get("combined_fields") or ())
    return CollectionConfig(**fields)


def filter_conditions(filter: SearchFilter | None, *, require: bool = False) -> list[tuple[str, list[str]]]:
    """The filter's (field, any-of values) pairs; ``require`` refuses a filter that matches all."""
    conditions = filter.conditions() if filter is not None else []
    if require and not conditions:
        raise InvalidFilter("an empty filter would match every point; name at least one field")
    return conditions


def filter_exclusions(filter: SearchFilter | None) -> list[tuple[str, list[str]]]:
    """The filter's (field, none-of values) pairs (`SearchFilter.exclusions`)."""
    return filter.exclusions() if filter is not None else []


def unnamed_vector(raw: Any) -> Any:
    """The collection's one (unnamed) vector of an engine record's ``.vector``, as the engine gave
    it, or None; the engine may hand it as a dict of named vectors."""
    return raw.get("") if isinstance(raw, dict) else raw


def vector_from_raw(raw: Any) -> NDArray[np.float32] | None:
    raw = unnamed_vector(raw)
    return None if raw is None else np.asarray(raw, dtype=np.float32)
