"""Helpers both index backends share: name and id checks, paging, config (de)serialisation."""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from core.errors import IndexStoreError, InvalidFilter
from core.index.base import CollectionConfig
from core.payload import SearchFilter

__all__ = [
    "OVERSAMPLING",
    "canonical_id",
    "check_name",
    "check_page",
    "config_from_dict",
    "config_to_dict",
    "filter_conditions",
    "is_valid_name",
    "known_ids",
    "vector_from_raw",
]

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


def canonical_id(point_id: str) -> str:
    try:
        return str(uuid.UUID(str(point_id)))
    except ValueError:
        raise IndexStoreError(f"point id {point_id!r} is not a UUID") from None


def known_ids(ids: Sequence[str]) -> list[str]:
    """The ids that could exist (UUIDs), canonical; anything else cannot be stored, so it is absent."""
    out: list[str] = []
    for point_id in ids:
        try:
            out.append(str(uuid.UUID(str(point_id))))
        except ValueError:
            continue
    return out


def check_page(limit: int, offset: int) -> None:
    if limit < 1:
        raise IndexStoreError(f"limit must be at least 1, got {limit}")
    if offset < 0:
        raise IndexStoreError(f"offset must not be negative, got {offset}")


def config_to_dict(config: CollectionConfig) -> dict[str, Any]:
    """The config as plain JSON data; what is stored is exactly what comes back."""
    try:
        parsed: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(config)))
    except (TypeError, ValueError) as exc:
        raise IndexStoreError(f"collection metadata must be JSON-serialisable: {exc}") from exc
    return parsed


def config_from_dict(data: dict[str, Any]) -> CollectionConfig:
    known = {f.name for f in dataclasses.fields(CollectionConfig)}
    return CollectionConfig(**{k: v for k, v in data.items() if k in known})


def filter_conditions(filter: SearchFilter | None, *, require: bool = False) -> list[tuple[str, list[str]]]:
    """The filter's (field, any-of values) pairs; ``require`` refuses a filter that matches all."""
    conditions = filter.conditions() if filter is not None else []
    if require and not conditions:
        raise InvalidFilter("an empty filter would match every point; name at least one field")
    return conditions


def vector_from_raw(raw: Any) -> NDArray[np.float32] | None:
    if raw is None:
        return None
    if isinstance(raw, dict):
        raw = raw.get("")
    return None if raw is None else np.asarray(raw, dtype=np.float32)
