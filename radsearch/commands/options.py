"""Command-line options shared by `radsearch ingest` and `radsearch reconcile`: both keep a
collection in step with a source, under the same deletion guard and burned-in opt-in."""

from __future__ import annotations

import argparse

from core.errors import ConfigError
from ingest.prune import DEFAULT_MAX_DELETE_FRACTION

__all__ = ["add_sync_options", "check_prune_args"]


def add_sync_options(parser: argparse.ArgumentParser) -> None:
    """``--dry-run``, ``--max-delete-fraction``, ``--force``, ``--accept-burned-in``, ``--source-name``."""
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the keys that would be added, re-embedded and deleted; write nothing",
    )
    parser.add_argument(
        "--max-delete-fraction",
        type=float,
        default=DEFAULT_MAX_DELETE_FRACTION,
        help="refuse deleting more than this fraction of a collection's objects "
        f"(default {DEFAULT_MAX_DELETE_FRACTION})",
    )
    parser.add_argument(
        "--force", action="store_true", help="delete even for an empty listing or beyond the fraction"
    )
    parser.add_argument(
        "--accept-burned-in",
        action="store_true",
        help="index objects with burned-in annotation (de-identified upstream) instead of quarantining them",
    )
    parser.add_argument(
        "--source-name",
        help="the source's stable name in payloads and point ids "
        "(default: the folder's name or bucket/prefix)",
    )


def check_prune_args(args: argparse.Namespace) -> None:
    """`ConfigError` for a ``--max-delete-fraction`` outside [0, 1], and for the deletion guard's
    options on an ingest that deletes nothing (no ``--prune``), where they would go unused."""
    if not 0.0 <= args.max_delete_fraction <= 1.0:
        raise ConfigError("--max-delete-fraction must be between 0 and 1")
    given = {
        "--max-delete-fraction": args.max_delete_fraction != DEFAULT_MAX_DELETE_FRACTION,
        "--force": bool(args.force),
    }
    guards = [flag for flag, is_given in given.items() if is_given]
    if guards and not getattr(args, "prune", True):  # reconcile always deletes what is gone
        verb, them = ("apply", "them") if len(guards) > 1 else ("applies", "it")
        raise ConfigError(
            f"{' and '.join(guards)} only {verb} with --prune (guarding its deletions): give --prune, "
            f"or leave {them} out"
        )
