"""The two entry points: evaluate a collection (its own search path) or embedding files (exact)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.index.base import VectorIndex
from evaluation.data import load_collection, load_files
from evaluation.grouped import GROUP_OVERFETCH, group_codes, group_sizes, keep_group_best
from evaluation.protocol import EvalOptions, Ranker, evaluate, score_ranking
from evaluation.search import IntArray, collection_topk, exact_topk

__all__ = ["evaluate_collection", "evaluate_files"]


def evaluate_collection(
    index: VectorIndex,
    collection: str,
    options: EvalOptions | None = None,
    *,
    index_splits: Sequence[str] = ("train",),
    query_splits: Sequence[str] = ("test",),
    search: Literal["ann", "exact"] = "ann",
    compare_exact: bool = False,
    hnsw_ef: int | None = None,
    exclude_same: str | None = None,
    group_by: str | None = None,
) -> dict[str, Any]:
    """The paper's protocol on a collection, queries answered by ``VectorIndex.search``.

    ``search="ann"`` uses the collection's HNSW index as users get it; ``compare_exact`` adds the
    store's exact search and the ANN recall against it. ``exclude_same`` ("patient" or "study")
    adds a leave-one-patient/study-out result from the payload hashes. ``group_by`` ("study",
    "series", "object") adds ``grouped``: the same metrics over distinct groups
    (`evaluation.grouped`), with ``exclude_same`` applied too when given.
    """
    opts = options or EvalOptions()
    data = load_collection(
        index, collection, index_splits=index_splits, query_splits=query_splits, exclude_same=exclude_same
    )
    depth = max(opts.ks)

    def ranker(exact: bool, deep: int = depth) -> Ranker:
        def rank(exclude: bool) -> IntArray:
            return collection_topk(
                index,
                collection,
                data.queries.vectors,
                data.index.ids,
                deep,
                index_splits=index_splits,
                exact=exact,
                hnsw_ef=hnsw_ef,
                query_groups=data.queries.groups if exclude else None,
                index_groups=data.index.groups if exclude else None,
            )

        return rank

    result = evaluate(
        data,
        ranker(search == "exact"),
        opts,
        search=search,
        exact_rank=ranker(True) if compare_exact and search == "ann" else None,
    )
    if group_by is not None:
        codes = group_codes(index, collection, data.index.ids, index_splits, group_by)
        exclude = data.group_field is not None
        deep = min(len(data.index), depth * GROUP_OVERFETCH)
        ranking = keep_group_best(ranker(search == "exact", deep)(exclude), codes, depth)
        scored = score_ranking(data, ranking, opts.ks, sizes_of=group_sizes(data, codes, exclude=exclude))
        result["grouped"] = {
            "group_by": group_by,
            "exclude_same": exclude_same,
            "n_groups": int(len(np.unique(codes))),
            **{
                key: scored[key]
                for key in ("n_queries", "n_skipped_queries", "micro", "macro", "map", "levels")
            },
        }
    return {"mode": "collection", "collection": collection, **result}


def evaluate_files(
    embeddings: Sequence[Path],
    labels: Sequence[Path],
    options: EvalOptions | None = None,
    *,
    ids: Path | None = None,
    index_splits: Sequence[str] = ("train",),
    query_splits: Sequence[str] = ("test",),
    exclude_same: str | None = None,
    group_column: str | None = None,
) -> dict[str, Any]:
    """The paper's protocol on embedding files and labels CSVs, by exact cosine search in chunks."""
    opts = options or EvalOptions()
    data = load_files(
        embeddings,
        labels,
        ids=ids,
        index_splits=index_splits,
        query_splits=query_splits,
        exclude_same=exclude_same,
        group_column=group_column,
    )
    depth = max(opts.ks)

    def rank(exclude: bool) -> IntArray:
        return exact_topk(
            data.queries.vectors,
            data.index.vectors,
            depth,
            query_groups=data.queries.groups if exclude else None,
            index_groups=data.index.groups if exclude else None,
            chunk_bytes=opts.chunk_bytes,
        )

    result = evaluate(data, rank, opts, search="exact", curve_uses_primary=True)
    return {"mode": "files", **result}
