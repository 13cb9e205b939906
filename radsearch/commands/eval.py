"""``radsearch eval``: retrieval quality by the reference paper's protocol (`evaluation`), on a
collection (here, or computed by the server that owns the store) or on embedding files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from core.config import Settings
from core.errors import EvalInputError
from radsearch.commands.arg_types import at_least

__all__ = ["add_eval_command", "run_eval_command", "run_remote_eval_command"]

_CHUNK_MB = 1024
_PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _fraction_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions, got {text!r}") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"fractions must be in (0, 1], got {text!r}")
    return values


def add_eval_command(sub: Any) -> None:
    """Register ``radsearch eval`` (collection mode or files mode) on the ``radsearch`` subparsers."""
    parser = sub.add_parser("eval", help="retrieval quality by the reference paper's protocol (P@k, ...)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--collection", help="evaluate a collection through its own search path")
    source.add_argument(
        "--embeddings",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="embedding files: .npy [n, dim] (with --ids) or the paper's .h5 (one dataset per image)",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        nargs="+",
        metavar="CSV",
        help="labels CSV(s) in the paper's schema: filepath, dataset, split, modality, anatomic_region, "
        "then one one-hot column per label",
    )
    parser.add_argument("--ids", type=Path, help=".npy mode: file paths, one a line (default: CSV row order)")
    parser.add_argument("--index-split", action="append", help="split(s) forming the index (default: train)")
    parser.add_argument("--query-split", action="append", help="split(s) forming the queries (default: test)")
    parser.add_argument(
        "--search",
        choices=("ann", "exact"),
        help="collection mode: the HNSW index users get (ann, the default) or the store's exact search",
    )
    parser.add_argument(
        "--compare-exact", action="store_true", help="collection mode: also exact search, and ANN recall"
    )
    parser.add_argument("--hnsw-ef", type=at_least(1), help="collection mode: HNSW ef at query time")
    parser.add_argument("--ks", type=_int_list, help="k values (default 1,3,5,10)")
    parser.add_argument(
        "--exclude-same",
        choices=("patient", "study"),
        help="also report results with hits from the query's own patient/study removed",
    )
    parser.add_argument(
        "--exclude",
        choices=("same-patient", "same-study"),
        help="as --exclude-same patient|study (the search API's exclude)",
    )
    parser.add_argument(
        "--group-by",
        choices=("study", "series", "object"),
        help="collection mode: also report the metrics over distinct groups (hits grouped as the "
        "search API's group_by does), with --exclude applied",
    )
    parser.add_argument("--group-column", help="files mode: the CSV column holding the patient/study id")
    parser.add_argument(
        "--index-fractions",
        type=_fraction_list,
        help="index-size curve at these fractions (default with --plot: 0.01,0.1,0.25,0.5,1.0)",
    )
    parser.add_argument(
        "--seed", type=at_least(0), default=0, help="seed for index subsampling and --max-queries"
    )
    parser.add_argument(
        "--max-queries", type=at_least(1), help="evaluate a random sample of this many queries"
    )
    parser.add_argument(
        "--chunk-mb", type=at_least(1), help=f"files mode: score block size in MiB (default {_CHUNK_MB})"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of markdown")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="also write the markdown tables here")
    parser.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="plot the index-size curve to a PNG (or .svg, .pdf)"
    )
    parser.set_defaults(handler=_cmd_eval, remote_handler=_remote_eval)


def _cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    return run_eval_command(args, settings, sys.stdout)


def _remote_eval(args: argparse.Namespace, settings: Settings, url: str) -> int:
    return run_remote_eval_command(args, settings, url, sys.stdout)


def _exclude_same(args: argparse.Namespace) -> str | None:
    """``--exclude same-patient`` is ``--exclude-same patient``; both given must agree."""
    alias = args.exclude.removeprefix("same-") if getattr(args, "exclude", None) else None
    if alias and args.exclude_same and alias != args.exclude_same:
        raise EvalInputError("--exclude and --exclude-same disagree: give one")
    chosen: str | None = alias or args.exclude_same
    return chosen


# Options of one mode only: given in the other, they are refused rather than left unused.
_COLLECTION_OPTIONS = {"search": "--search", "compare_exact": "--compare-exact", "hnsw_ef": "--hnsw-ef"}
_FILES_OPTIONS = {
    "labels": "--labels",
    "ids": "--ids",
    "group_column": "--group-column",
    "chunk_mb": "--chunk-mb",
}


def _check_mode_options(args: argparse.Namespace) -> None:
    """`EvalInputError` for an option of the other mode (collection or files), or one that
    another option must come with."""
    if not args.collection and getattr(args, "group_by", None):
        raise EvalInputError("--group-by needs --collection (the payload's series/study hashes)")
    mode, other = (
        ("--collection", _FILES_OPTIONS) if args.collection else ("--embeddings", _COLLECTION_OPTIONS)
    )
    given = [flag for name, flag in other.items() if getattr(args, name, None) not in (None, False)]
    if given:
        applies = "--embeddings (files mode)" if args.collection else "--collection"
        raise EvalInputError(f"{', '.join(given)} only with {applies}, not with {mode}")
    if args.group_column and not (args.exclude_same or args.exclude):
        raise EvalInputError("--group-column names the patient or study column of --exclude-same: give both")


def _checked(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` once its options fit together and its outputs can be written, with the defaults
    of the options that had to be seen unset (given or not) filled in."""
    _check_mode_options(args)
    _check_outputs(args)
    # evaluation (and NumPy with it) is imported here, not at every command's start
    from evaluation.metrics import DEFAULT_KS
    from evaluation.protocol import DEFAULT_FRACTIONS

    defaults = {
        "search": args.search or "ann",
        "chunk_mb": args.chunk_mb or _CHUNK_MB,
        "ks": args.ks or DEFAULT_KS,
        "index_fractions": args.index_fractions or (DEFAULT_FRACTIONS if args.plot else ()),
    }
    return argparse.Namespace(**{**vars(args), **defaults})


def run_eval_command(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Run ``radsearch eval`` and write its JSON or markdown to ``out``; returns the exit code."""
    args = _checked(args)
    from evaluation.protocol import EvalOptions
    from evaluation.run import evaluate_collection, evaluate_files

    exclude_same = _exclude_same(args)
    group_by = getattr(args, "group_by", None)
    options = EvalOptions(
        ks=tuple(args.ks),
        fractions=tuple(args.index_fractions),
        seed=args.seed,
        max_queries=args.max_queries,
        chunk_bytes=args.chunk_mb * 1024 * 1024,
    )
    index_splits = tuple(args.index_split or ("train",))
    query_splits = tuple(args.query_split or ("test",))
    if args.collection:
        from core.index import open_index

        index = open_index(settings, owner="eval")
        try:
            result = evaluate_collection(
                index,
                args.collection,
                options,
                index_splits=index_splits,
                query_splits=query_splits,
                search=args.search,
                compare_exact=args.compare_exact,
                hnsw_ef=args.hnsw_ef,
                exclude_same=exclude_same,
                group_by=group_by,
            )
        finally:
            index.close()
    else:
        if not args.labels:
            raise EvalInputError("--embeddings needs --labels CSV (the paper's schema)")
        result = evaluate_files(
            args.embeddings,
            args.labels,
            options,
            ids=args.ids,
            index_splits=index_splits,
            query_splits=query_splits,
            exclude_same=exclude_same,
            group_column=args.group_column,
        )
    return _write_result(result, args, out)


def run_remote_eval_command(args: argparse.Namespace, settings: Settings, url: str, out: TextIO) -> int:
    """``radsearch eval --collection`` through the radsearch server at ``url`` (the store's
    owner computes it: ``POST /v1/collections/{name}/evaluate``); files mode runs here."""
    if not args.collection:
        return run_eval_command(args, settings, out)
    args = _checked(args)
    from core.api_client import ApiClient

    body = {
        "ks": list(args.ks),
        "index_split": list(args.index_split or ("train",)),
        "query_split": list(args.query_split or ("test",)),
        "search": args.search,
        "compare_exact": args.compare_exact,
        "hnsw_ef": args.hnsw_ef,
        "exclude_same": _exclude_same(args),
        "group_by": getattr(args, "group_by", None),
        "index_fractions": list(args.index_fractions),
        "seed": args.seed,
        "max_queries": args.max_queries,
    }
    # No client-side time limit: a large collection's evaluation takes minutes.
    with ApiClient.from_settings(url, settings, timeout_s=None) as client:
        result = client.request("POST", f"/v1/collections/{args.collection}/evaluate", json=body)
    return _write_result(result, args, out)


def _check_outputs(args: argparse.Namespace) -> None:
    """`EvalInputError` for a ``--markdown`` or ``--plot`` file that could not be written, before
    an evaluation that may take an hour (the error came after it, as an unexpected one)."""
    for option, path in (("--markdown", args.markdown), ("--plot", args.plot)):
        if path is None:
            continue
        folder = path.parent
        if path.is_dir():
            raise EvalInputError(f"{option} {path}: a folder, not a file")
        if not folder.is_dir():
            raise EvalInputError(f"{option} {path}: the folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise EvalInputError(f"{option} {path}: cannot write in {folder}")
    if args.plot is not None and args.plot.suffix.lower() not in _PLOT_SUFFIXES:
        raise EvalInputError(f"--plot {args.plot}: the file name ends in {', '.join(_PLOT_SUFFIXES)}")


def _write_result(result: dict[str, Any], args: argparse.Namespace, out: TextIO) -> int:
    from evaluation.report import json_safe, plot_index_size_curve, to_markdown

    markdown = to_markdown(result)
    try:
        if args.markdown:
            args.markdown.write_text(markdown)
        if args.plot:
            plot_index_size_curve(result, args.plot)
    except OSError as exc:
        raise EvalInputError(f"cannot write {exc.filename or 'the output'}: {exc.strerror or exc}") from None
    if args.json:
        out.write(json.dumps(json_safe(result)) + "\n")
    else:
        out.write(markdown)
    return 0
