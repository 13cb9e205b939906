"""The reference paper's retrieval metric (modified precision at k), micro and macro, and its kin.

For a query of class y with C_y index images of class y, n = min(k, C_y) and
P@k = (neighbours of class y among the top n) / n. Micro = mean over queries, macro = mean over
classes of the per-class mean. Queries whose class has no index images are left out (and counted).

The array functions work on integer class codes: ``neighbour_labels[i, j]`` is the class of query
i's j-th hit (best first) and -1 where there is no hit (a short result list counts as misses).
``class_sizes[i]`` is C_y of query i's class; passing it per query lets the caller shrink it for
leave-one-patient-out evaluation. Every per-query function returns NaN for queries with C_y = 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "DEFAULT_KS",
    "ann_recall",
    "average_precision",
    "chance_precision",
    "majority_vote_correct",
    "micro_macro",
    "modified_precision",
    "modified_precision_at_k",
]

DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10)

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]

# Queries per block in the majority vote, whose k x k comparison would otherwise be n x k x k.
_VOTE_BLOCK = 65_536


def _check(query_labels: IntArray, neighbour_labels: IntArray, ks: Sequence[int]) -> None:
    if neighbour_labels.ndim != 2 or neighbour_labels.shape[0] != query_labels.shape[0]:
        raise ValueError(
            f"neighbour_labels must be [n_queries, depth], got {neighbour_labels.shape} "
            f"for {query_labels.shape[0]} queries"
        )
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive, got {list(ks)}")


def _hits(query_labels: IntArray, neighbour_labels: IntArray, depth: int) -> NDArray[np.bool_]:
    width = neighbour_labels.shape[1]
    hits = np.zeros((query_labels.shape[0], depth), dtype=bool)
    used = min(depth, width)
    hits[:, :used] = (neighbour_labels[:, :used] == query_labels[:, None]) & (neighbour_labels[:, :used] >= 0)
    return hits


def modified_precision(
    query_labels: IntArray, neighbour_labels: IntArray, class_sizes: IntArray, ks: Sequence[int] = DEFAULT_KS
) -> FloatArray:
    """Per-query modified P@k ``[n_queries, len(ks)]``: class-y hits in the top n over n, n = min(k, C_y)."""
    _check(query_labels, neighbour_labels, ks)
    hits = _hits(query_labels, neighbour_labels, max(ks))
    cum = np.cumsum(hits, axis=1, dtype=np.int64)
    out = np.full((query_labels.shape[0], len(ks)), np.nan)
    valid = class_sizes > 0
    for j, k in enumerate(ks):
        n = np.minimum(k, class_sizes)
        idx = np.clip(n - 1, 0, None)[:, None]
        got = np.take_along_axis(cum, idx, axis=1)[:, 0]
        out[valid, j] = got[valid] / n[valid]
    return out


def average_precision(
    query_labels: IntArray, neighbour_labels: IntArray, class_sizes: IntArray, ks: Sequence[int] = DEFAULT_KS
) -> FloatArray:
    """Per-query AP@k = sum over ranks i <= k of P(i) * rel(i), divided by min(k, C_y).

    The min(k, C_y) denominator is the one the modified P@k uses, so a perfect ranking scores 1
    even for classes smaller than k.
    """
    _check(query_labels, neighbour_labels, ks)
    depth = max(ks)
    hits = _hits(query_labels, neighbour_labels, depth)
    ranks = np.arange(1, depth + 1, dtype=np.float64)
    precision_at_rank = np.cumsum(hits, axis=1) / ranks
    gained = np.cumsum(precision_at_rank * hits, axis=1)
    out = np.full((query_labels.shape[0], len(ks)), np.nan)
    valid = class_sizes > 0
    for j, k in enumerate(ks):
        n = np.minimum(k, class_sizes)
        out[valid, j] = gained[valid, k - 1] / n[valid]
    return out


def majority_vote_correct(
    query_labels: IntArray, neighbour_labels: IntArray, class_sizes: IntArray, ks: Sequence[int] = DEFAULT_KS
) -> FloatArray:
    """Per-query 1.0/0.0: is the most frequent class among the top k the query's class?

    Plain k for every query (not min(k, C_y): that would leak the true label into the vote). Ties go
    to the tied class ranked highest; missing hits do not vote; no hits at all is wrong.
    """
    _check(query_labels, neighbour_labels, ks)
    n_q = query_labels.shape[0]
    depth = max(ks)
    labels = np.full((n_q, depth), -1, dtype=np.int64)
    used = min(depth, neighbour_labels.shape[1])
    labels[:, :used] = neighbour_labels[:, :used]
    out = np.full((n_q, len(ks)), np.nan)
    valid = class_sizes > 0
    for start in range(0, n_q, _VOTE_BLOCK):
        block = labels[start : start + _VOTE_BLOCK]
        truth = query_labels[start : start + _VOTE_BLOCK]
        present = block >= 0
        for j, k in enumerate(ks):
            top = block[:, :k]
            # votes[i, r] = how often the class at rank r occurs in the top k; argmax takes the first
            # maximum, i.e. the highest-ranked of tied classes.
            votes = ((top[:, :, None] == top[:, None, :]) & present[:, None, :k]).sum(axis=2)
            votes[~present[:, :k]] = 0
            best = np.argmax(votes, axis=1)
            predicted = np.take_along_axis(top, best[:, None], axis=1)[:, 0]
            correct = (predicted == truth) & (votes.max(axis=1) > 0)
            out[start : start + _VOTE_BLOCK, j] = correct.astype(np.float64)
    out[~valid] = np.nan
    return out


def ann_recall(approx: IntArray, exact: IntArray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean over queries of |ANN top-k ∩ exact top-k| / |exact top-k| (ids as ints, -1 = none)."""
    if approx.shape[0] != exact.shape[0]:
        raise ValueError("approx and exact must rank the same queries")
    out: dict[str, float] = {}
    for k in ks:
        scores: list[float] = []
        for a_row, e_row in zip(approx[:, :k], exact[:, :k], strict=True):
            truth = {int(v) for v in e_row if v >= 0}
            if not truth:
                continue
            found = {int(v) for v in a_row if v >= 0}
            scores.append(len(truth & found) / len(truth))
        out[f"R@{k}"] = float(np.mean(scores)) if scores else float("nan")
    return out


def micro_macro(per_query: FloatArray, query_labels: IntArray) -> tuple[FloatArray, FloatArray]:
    """Micro (mean over queries) and macro (mean over classes of the per-class mean), per column.

    NaN rows (queries whose class is absent from the index) are left out; an all-NaN input gives NaN.
    """
    if per_query.ndim == 1:
        per_query = per_query[:, None]
    valid = ~np.isnan(per_query[:, 0])
    values = per_query[valid]
    labels = query_labels[valid]
    if values.shape[0] == 0:
        nan = np.full(per_query.shape[1], np.nan)
        return nan, nan.copy()
    micro = values.mean(axis=0)
    classes, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((classes.shape[0], values.shape[1]))
    np.add.at(sums, inverse, values)
    counts = np.bincount(inverse, minlength=classes.shape[0]).astype(np.float64)
    macro = (sums / counts[:, None]).mean(axis=0)
    return micro, macro


def modified_precision_at_k(
    query_labels: Sequence[str],
    neighbour_labels: Sequence[Sequence[str]],
    index_class_counts: Mapping[str, int],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, Any]:
    """``{"micro": {"P@k": ...}, "macro": {...}, "n_queries", "n_skipped_queries"}``.

    ``neighbour_labels[i]`` are the classes of query i's hits, best first (at least max(ks) long
    where the index allows).
    """
    codes: dict[str, int] = {}

    def code(label: str) -> int:
        return codes.setdefault(label, len(codes))

    q = np.array([code(label) for label in query_labels], dtype=np.int64)
    depth = max([max(ks), *(len(n) for n in neighbour_labels)])
    nb = np.full((len(query_labels), depth), -1, dtype=np.int64)
    for i, row in enumerate(neighbour_labels):
        nb[i, : len(row)] = [code(label) for label in row]
    sizes = np.array([index_class_counts.get(label, 0) for label in query_labels], dtype=np.int64)
    per_query = modified_precision(q, nb, sizes, ks)
    micro, macro = micro_macro(per_query, q)
    used = int((sizes > 0).sum())

    def as_dict(values: FloatArray) -> dict[str, float]:
        return {f"P@{k}": (float(v) if used else 0.0) for k, v in zip(ks, values, strict=True)}

    return {
        "micro": as_dict(micro),
        "macro": as_dict(macro),
        "n_queries": used,
        "n_skipped_queries": len(query_labels) - used,
    }


def chance_precision(query_labels: Sequence[str], index_labels: Sequence[str]) -> float:
    """Expected micro P@k of a random ranking: mean over queries of C_y / N (the same for every k)."""
    counts = Counter(index_labels)
    total = len(index_labels)
    scored = [counts[label] / total for label in query_labels if counts.get(label)]
    return sum(scored) / len(scored) if scored else 0.0
