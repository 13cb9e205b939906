"""The protocol a radiologist's search follows: hits grouped by study (or series, object), the
query's own patient left out, as ``group_by`` and ``exclude`` do in the search API.

A grouped ranking keeps each group's best hit only: P@k counts the first k distinct studies. It is
made from an image ranking ``GROUP_OVERFETCH`` times deeper (a group whose best image ranks below
that is not found, as the API's over-fetch bound says). C_y becomes the number of distinct groups
of class y in the index (less those of the query's own patient when it is excluded; a study lies
within one patient).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from core.index.base import VectorIndex
from core.payload import GROUP_FIELDS, SearchFilter
from evaluation.data import EvalData

__all__ = ["GROUP_OVERFETCH", "group_codes", "group_sizes", "keep_group_best"]

GROUP_OVERFETCH = 32

IntArray = NDArray[np.int64]


def group_codes(
    index: VectorIndex, collection: str, ids: Sequence[str], splits: Sequence[str], group_by: str
) -> IntArray:
    """A code per index position for the ``group_by`` payload field; a point without it is a
    group of its own."""
    field = GROUP_FIELDS[group_by]
    values = {
        p.id: p.payload.get(field) for p in index.scroll(collection, filter=SearchFilter(split=list(splits)))
    }
    vocab: dict[str, int] = {}
    codes = np.empty(len(ids), dtype=np.int64)
    for position, pid in enumerate(ids):
        value = values.get(pid)
        key = str(value) if isinstance(value, str) and value else f"\x00own\x00{pid}"
        codes[position] = vocab.setdefault(key, len(vocab))
    return codes


def keep_group_best(ranking: IntArray, codes: IntArray, depth: int) -> IntArray:
    """Each row's first hit per group, ``depth`` long (-1 padded)."""
    out = np.full((ranking.shape[0], depth), -1, dtype=np.int64)
    for row in range(ranking.shape[0]):
        seen: set[int] = set()
        kept = 0
        for position in ranking[row]:
            if position < 0:
                break
            code = int(codes[position])
            if code in seen:
                continue
            seen.add(code)
            out[row, kept] = position
            kept += 1
            if kept == depth:
                break
    return out


def _sizes(
    query_classes: IntArray, index_classes: IntArray, data: EvalData, codes: IntArray, exclude: bool
) -> IntArray:
    total: dict[int, set[int]] = defaultdict(set)
    own: dict[tuple[int, int], set[int]] = defaultdict(set)
    for position, cls in enumerate(index_classes.tolist()):
        total[cls].add(int(codes[position]))
        if exclude and data.index.groups[position] >= 0:
            own[(cls, int(data.index.groups[position]))].add(int(codes[position]))
    sizes = np.empty(len(query_classes), dtype=np.int64)
    for row, cls in enumerate(query_classes.tolist()):
        group = int(data.queries.groups[row])
        removed = len(own.get((cls, group), ())) if exclude and group >= 0 else 0
        sizes[row] = len(total.get(cls, ())) - removed
    return sizes


def group_sizes(data: EvalData, codes: IntArray, *, exclude: bool) -> tuple[IntArray, IntArray]:
    """C_y per query in groups, for pathology classes and for anatomy."""
    return (
        _sizes(data.queries.labels, data.index.labels, data, codes, exclude),
        _sizes(data.queries.anatomy, data.index.anatomy, data, codes, exclude),
    )
