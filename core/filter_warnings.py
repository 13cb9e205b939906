"""Warnings for filter values that match no stored value, with the closest stored ones.

A search with ``{"anatomy": ["lugn"]}`` is valid and finds nothing; the caller gets its (empty or
partial) hits plus a warning naming the field, the value and the stored values it is close to.

Stored values come from the store's facets and are cached per collection. A value missing from
the cache triggers one refresh of that field (at most every `StoredValues.refresh_s` seconds), so
values written since the cache was filled are found without every write path invalidating it;
`StoredValues.invalidate` drops a collection's entry outright (on drop, or after a write the
caller knows of).
"""

from __future__ import annotations

import difflib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from core.index.base import VectorIndex
from core.payload import FILTER_FIELDS, LOWER_CASE_FIELDS, UPPER_CASE_FIELDS, SearchFilter, match_forms

__all__ = ["FilterWarning", "StoredValues", "filter_warnings"]

# Distinct values read per field: facets list the most frequent first, so a collection with more
# distinct values than this may warn about a rare value that is stored (the warning says "no
# stored value" only of the values it saw).
MAX_VALUES = 1000
_SUGGESTIONS = 3
# Labels are short; a longer filter value is quoted cut to this length, and not compared (difflib
# is quadratic in the lengths).
_MAX_QUOTED = 100


@dataclass(frozen=True)
class FilterWarning:
    """One filter value that matched no stored value of its field."""

    field: str
    value: str
    message: str
    suggestions: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["suggestions"] = list(self.suggestions)
        return out


@dataclass
class _Field:
    values: frozenset[str]
    read_at: float


def _fold(field: str, value: str) -> str:
    """A value as suggestions are compared (``CHEST`` is close to ``chest``)."""
    if field in UPPER_CASE_FIELDS:
        return value.strip().upper()
    return value.strip().lower() if field in LOWER_CASE_FIELDS else value


def _held(field: str, value: str, stored: frozenset[str]) -> bool:
    """Whether a filter value matches a stored value, as the stores match it (`match_forms`)."""
    return any(form in stored for form in match_forms(field, value))


class StoredValues:
    """The distinct stored values of each filter field, per collection, read from the store's
    facets on first use and cached; thread-safe."""

    def __init__(
        self, *, ttl_s: float = 300.0, refresh_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.refresh_s = refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], _Field] = {}

    def invalidate(self, collection: str | None = None) -> None:
        """Forget a collection's values (every collection's with None)."""
        with self._lock:
            for key in [k for k in self._cache if collection is None or k[0] == collection]:
                del self._cache[key]

    def _read(self, index: VectorIndex, collection: str, field: str) -> _Field:
        # the values only: the engine's approximate counts (1 M points: 0.1 ms against 80-250 ms per
        # field exact, each a stall of the store's one search thread)
        values = frozenset(index.facet(collection, field, limit=MAX_VALUES, exact=False))
        entry = _Field(values, self._clock())
        with self._lock:
            self._cache[(collection, field)] = entry
        return entry

    def get(self, index: VectorIndex, collection: str, field: str, *, missing: str | None = None) -> _Field:
        """The field's cached values; read afresh when expired, or when ``missing`` (a value the
        caller looked for) is not among them and the last read is older than ``refresh_s``."""
        with self._lock:
            entry = self._cache.get((collection, field))
        if entry is None or self._due(entry, field, missing, self._clock()):
            return self._read(index, collection, field)
        return entry

    def answers(self, collection: str, search_filter: SearchFilter | None) -> bool:
        """Whether `filter_warnings` for ``search_filter`` needs no read of the store: every field
        it warns on is cached and due for no read (a caller on an event loop then needs no thread)."""
        if search_filter is None:
            return True
        now = self._clock()
        with self._lock:
            for field, value in _warned_values(search_filter):
                entry = self._cache.get((collection, field))
                if entry is None or self._due(entry, field, value, now):
                    return False
        return True

    def _due(self, entry: _Field, field: str, missing: str | None, now: float) -> bool:
        if now - entry.read_at > self.ttl_s:
            return True
        return (
            missing is not None
            and not _held(field, missing, entry.values)
            and now - entry.read_at > self.refresh_s
        )


def _warning(field: str, value: str, stored: frozenset[str]) -> FilterWarning:
    candidates = sorted(stored)
    close: list[str] = []
    parts: list[str] = []
    if len(value) > _MAX_QUOTED:
        value = value[:_MAX_QUOTED] + "..."
    else:
        close = difflib.get_close_matches(
            _fold(field, value), [_fold(field, v) for v in candidates], n=_SUGGESTIONS
        )
        parts = [part.strip() for part in value.split(",")]
    by_fold = {_fold(field, v): v for v in candidates}
    suggestions = tuple(dict.fromkeys(by_fold[c] for c in close))
    if len(parts) > 1 and all(part and _held(field, part, stored) for part in parts):
        # "MR,CT" typed for "MR or CT": each part is stored, the whole is one value that is not
        suggestions = tuple(parts)
        hint = (
            f"; it is one value, while {', '.join(parts)} are each stored: for any of them give each "
            f"as its own value (a list in the filter; --{field} repeated on the command line)"
        )
    elif suggestions:
        hint = f"; closest stored: {', '.join(suggestions)}"
    elif candidates:
        hint = "; none is close" + (
            f" (stored: {', '.join(candidates[:10])}{', ...' if len(candidates) > 10 else ''})"
        )
    else:
        hint = f"; the collection stores no {field} values"
    return FilterWarning(
        field=field,
        value=value,
        message=f"filter {field}={value!r} matches no stored value{hint}",
        suggestions=suggestions,
    )


def filter_warnings(
    index: VectorIndex, collection: str, search_filter: SearchFilter | None, stored: StoredValues
) -> list[FilterWarning]:
    """A warning per filter value (of modality, anatomy, pathology, dataset, split, source; not key)
    that no point of ``collection`` holds. Nothing to do without a filter; a value found in the
    cache costs one set lookup."""
    if search_filter is None:
        return []
    warnings: list[FilterWarning] = []
    for field, value in _warned_values(search_filter):
        entry = stored.get(index, collection, field, missing=value)
        if not _held(field, value, entry.values):
            warnings.append(_warning(field, value, entry.values))
    return warnings


def _warned_values(search_filter: SearchFilter) -> Iterator[tuple[str, str]]:
    """(field, value) of each filter value a warning may name: the fields of `FILTER_FIELDS`."""
    for field, values in search_filter.fields():
        if field in FILTER_FIELDS:
            for value in values:
                yield field, value
