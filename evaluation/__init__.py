"""Retrieval evaluation: the reference paper's protocol on a collection or on embedding files.

Independent of ingest: it reads a collection through `core.index.VectorIndex` or files from disk.
A layer above `core` (which it imports); the command line (`radsearch.commands.eval`) and the
API's evaluation route run it.
"""

from evaluation.data import (
    EvalData,
    EvalInputError,
    LabelledSet,
    Record,
    export_collection,
    load_collection,
    load_files,
)
from evaluation.protocol import DEFAULT_FRACTIONS, EvalOptions, evaluate, index_size_curve, score_ranking
from evaluation.report import comparison_table, json_safe, plot_index_size_curve, to_markdown
from evaluation.run import evaluate_collection, evaluate_files
from evaluation.search import collection_topk, exact_topk

__all__ = [
    "DEFAULT_FRACTIONS",
    "EvalData",
    "EvalInputError",
    "EvalOptions",
    "LabelledSet",
    "Record",
    "collection_topk",
    "comparison_table",
    "evaluate",
    "evaluate_collection",
    "evaluate_files",
    "exact_topk",
    "export_collection",
    "index_size_curve",
    "json_safe",
    "load_collection",
    "load_files",
    "plot_index_size_curve",
    "score_ranking",
    "to_markdown",
]
