"""The paper's protocol on an `EvalData`: rankings in, one JSON-ready result dict out."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from evaluation.data import EvalData, EvalInputError, LabelledSet
from evaluation.metrics import (
    DEFAULT_KS,
    ann_recall,
    average_precision,
    majority_vote_correct,
    micro_macro,
    modified_precision,
)
from evaluation.search import DEFAULT_CHUNK_BYTES, exact_topk

__all__ = [
    "DEFAULT_FRACTIONS",
    "EvalOptions",
    "Ranker",
    "class_sizes",
    "evaluate",
    "index_size_curve",
    "score_ranking",
]

DEFAULT_FRACTIONS: tuple[float, ...] = (0.01, 0.1, 0.25, 0.5, 1.0)

IntArray = NDArray[np.int64]
# exclude_same_group -> ranking [n_queries, depth] of positions in data.index
Ranker = Callable[[bool], IntArray]


@dataclass(frozen=True)
class EvalOptions:
    """``fractions`` empty = no index-size curve; ``max_queries`` samples queries with ``seed``."""

    ks: tuple[int, ...] = DEFAULT_KS
    fractions: tuple[float, ...] = ()
    seed: int = 0
    max_queries: int | None = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES

    def __post_init__(self) -> None:
        # a k given twice would be reported once ("P@1" is one key), the other silently dropped
        for name, values in (("ks", self.ks), ("index fractions", self.fractions)):
            if len(set(values)) != len(values):
                raise EvalInputError(f"{name} must not repeat a value")


def _named(prefix: str, ks: Sequence[int], values: NDArray[np.float64]) -> dict[str, float]:
    return {f"{prefix}@{k}": _clean(v) for k, v in zip(ks, values, strict=True)}


def _clean(value: float) -> float:
    v = float(value)
    return v if math.isfinite(v) else float("nan")


def class_sizes(
    query_codes: IntArray,
    index_codes: IntArray,
    n_codes: int,
    *,
    query_groups: IntArray | None = None,
    index_groups: IntArray | None = None,
) -> IntArray:
    """C_y per query: index images of the query's class, less those of its own group if given."""
    sizes = np.bincount(index_codes, minlength=n_codes)[query_codes].astype(np.int64)
    if query_groups is None or index_groups is None:
        return sizes
    grouped = index_groups >= 0
    n_groups = int(max(index_groups.max(initial=-1), query_groups.max(initial=-1))) + 1
    keys = index_codes[grouped] * n_groups + index_groups[grouped]
    uniq, counts = np.unique(keys, return_counts=True)
    if len(uniq) == 0:
        return sizes
    q_keys = query_codes * n_groups + query_groups
    at = np.clip(np.searchsorted(uniq, q_keys), 0, len(uniq) - 1)
    same = (query_groups >= 0) & (uniq[at] == q_keys)
    return sizes - np.where(same, counts[at], 0)


def _labels_of(ranking: IntArray, codes: IntArray) -> IntArray:
    return np.where(ranking >= 0, codes[np.clip(ranking, 0, None)], -1)


def score_ranking(
    data: EvalData,
    ranking: IntArray,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    index: LabelledSet | None = None,
    exclude_same_group: bool = False,
    sizes_of: tuple[IntArray, IntArray] | None = None,
) -> dict[str, Any]:
    """Every metric of one ranking: modified P@k, mAP@k, majority vote, anatomy level, per modality.

    ``index`` defaults to ``data.index`` (a subsample for the index-size curve). ``sizes_of``
    gives each query's C_y (pathology, anatomy) where the ranking is not of images (of studies:
    `evaluation.grouped`).
    """
    idx = index if index is not None else data.index
    q = data.queries
    groups: dict[str, IntArray] = (
        {"query_groups": q.groups, "index_groups": idx.groups} if exclude_same_group else {}
    )
    if sizes_of is not None:
        sizes, anatomy_sizes = sizes_of
    else:
        sizes = class_sizes(q.labels, idx.labels, len(data.classes), **groups)
        anatomy_sizes = class_sizes(q.anatomy, idx.anatomy, len(data.anatomies), **groups)
    labels = _labels_of(ranking, idx.labels)
    anatomy = _labels_of(ranking, idx.anatomy)

    precision = modified_precision(q.labels, labels, sizes, ks)
    ap = average_precision(q.labels, labels, sizes, ks)
    vote = majority_vote_correct(q.labels, labels, sizes, ks)
    anatomy_precision = modified_precision(q.anatomy, anatomy, anatomy_sizes, ks)
    chance = np.where(sizes > 0, sizes / max(len(idx), 1), np.nan)

    micro, macro = micro_macro(precision, q.labels)
    a_micro, a_macro = micro_macro(anatomy_precision, q.anatomy)
    ap_micro, ap_macro = micro_macro(ap, q.labels)
    v_micro, v_macro = micro_macro(vote, q.labels)
    c_micro, c_macro = micro_macro(chance, q.labels)
    used = int((sizes > 0).sum())
    per_modality: dict[str, Any] = {}
    for code, name in enumerate(data.modalities):
        rows = q.modality == code
        if not rows.any():
            continue
        m_micro, m_macro = micro_macro(precision[rows], q.labels[rows])
        am_micro, am_macro = micro_macro(anatomy_precision[rows], q.anatomy[rows])
        per_modality[name] = {
            "n_queries": int((sizes[rows] > 0).sum()),
            "micro": _named("P", ks, m_micro),
            "macro": _named("P", ks, m_macro),
            "anatomy": {"micro": _named("P", ks, am_micro), "macro": _named("P", ks, am_macro)},
        }
    return {
        "n_queries": used,
        "n_skipped_queries": int(len(q) - used),
        "micro": _named("P", ks, micro),
        "macro": _named("P", ks, macro),
        "map": {"micro": _named("mAP", ks, ap_micro), "macro": _named("mAP", ks, ap_macro)},
        "majority_vote": {"micro": _named("acc", ks, v_micro), "macro": _named("acc", ks, v_macro)},
        "levels": {
            "pathology": {"micro": _named("P", ks, micro), "macro": _named("P", ks, macro)},
            "anatomy": {"micro": _named("P", ks, a_micro), "macro": _named("P", ks, a_macro)},
        },
        "chance": {"micro": _clean(c_micro[0]), "macro": _clean(c_macro[0])},
        "per_modality": per_modality,
    }


def index_size_curve(
    data: EvalData, options: EvalOptions, full_ranking: IntArray | None = None
) -> list[dict[str, Any]]:
    """Exact-search P@k with the index subsampled to each fraction (nested samples, fixed seed)."""
    depth = max(options.ks)
    order = np.random.default_rng(options.seed).permutation(len(data.index))
    points: list[dict[str, Any]] = []
    for fraction in sorted(options.fractions):
        if not 0 < fraction <= 1:
            raise ValueError(f"index fractions must be in (0, 1], got {fraction}")
        size = max(1, round(fraction * len(data.index)))
        if size == len(data.index):
            subset = data.index
            ranking = (
                full_ranking
                if full_ranking is not None
                else exact_topk(data.queries.vectors, subset.vectors, depth, chunk_bytes=options.chunk_bytes)
            )
        else:
            subset = data.index.subset(np.sort(order[:size]))
            ranking = exact_topk(data.queries.vectors, subset.vectors, depth, chunk_bytes=options.chunk_bytes)
        scored = score_ranking(data, ranking, options.ks, index=subset)
        points.append(
            {
                "fraction": fraction,
                "n_index": size,
                "n_queries": scored["n_queries"],
                "n_skipped_queries": scored["n_skipped_queries"],
                "micro": scored["micro"],
                "macro": scored["macro"],
                "chance": scored["chance"],
            }
        )
    return points


def _sample_queries(data: EvalData, options: EvalOptions) -> None:
    if options.max_queries is None or options.max_queries >= len(data.queries):
        return
    rng = np.random.default_rng(options.seed)
    rows = np.sort(rng.choice(len(data.queries), size=options.max_queries, replace=False))
    data.notes["sampled_queries_from"] = len(data.queries)
    data.queries = data.queries.subset(rows.astype(np.int64))


def evaluate(
    data: EvalData,
    rank: Ranker,
    options: EvalOptions,
    *,
    search: str,
    exact_rank: Ranker | None = None,
    curve_uses_primary: bool = False,
) -> dict[str, Any]:
    """Run the protocol: the primary ranking, then the exact comparison, exclusion and the curve.

    ``rank``/``exact_rank`` are called after query sampling, so they must read ``data.queries``
    when called. ``curve_uses_primary`` reuses the primary ranking for the 100 % point (when the
    primary search is already exact and in-memory).
    """
    started = time.perf_counter()
    _sample_queries(data, options)
    primary = rank(False)
    result: dict[str, Any] = {
        "source": data.source,
        "search": search,
        "ks": list(options.ks),
        "n_index": len(data.index),
        "n_classes": len(data.classes),
    }
    result.update(score_ranking(data, primary, options.ks))
    if exact_rank is not None:
        exact = exact_rank(False)
        exact_scores = score_ranking(data, exact, options.ks)
        result["exact"] = {
            key: exact_scores[key] for key in ("micro", "macro", "map", "majority_vote", "levels")
        }
        result["ann_recall"] = ann_recall(primary, exact, options.ks)
    if data.group_field is not None:
        excluded = score_ranking(data, rank(True), options.ks, exclude_same_group=True)
        result["exclude_same"] = {
            "field": data.group_field,
            **{key: excluded[key] for key in ("n_queries", "n_skipped_queries", "micro", "macro", "levels")},
        }
    if options.fractions:
        result["index_size_curve"] = index_size_curve(data, options, primary if curve_uses_primary else None)
    result["notes"] = dict(data.notes)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result
