"""The ``radsearch`` command line: the parser, and what every command's failure looks like.
Settings are built here, once, and passed down.

Each command group lives in its own module of `radsearch.commands`, with what it does here and
through a server; a new command is a module with an ``add_..._command(sub)`` registered below.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.config import load_settings
from core.errors import (
    BadInput,
    ConfigError,
    EncoderError,
    IndexStoreError,
    RadsearchError,
    ServerGone,
    StoreFull,
    StoreOwned,
    WeightsUnavailable,
)
from radsearch.commands.arg_types import http_url
from radsearch.commands.backup import add_backup_commands
from radsearch.commands.collections import add_collections_commands
from radsearch.commands.common import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RUNTIME_ERROR,
    EXIT_STORE_FULL,
    EXIT_STORE_OWNED,
    EXIT_USAGE,
    print_json,
)
from radsearch.commands.demo import add_demo_command
from radsearch.commands.dicomweb import add_watch_command, apply_selectors
from radsearch.commands.encoders import add_encoders_command
from radsearch.commands.eval import add_eval_command
from radsearch.commands.ingest import add_ingest_command
from radsearch.commands.jobs import add_jobs_commands
from radsearch.commands.keys import add_keys_command
from radsearch.commands.remote import remote_url
from radsearch.commands.search import add_search_command
from radsearch.commands.serve import add_serve_command
from radsearch.commands.worker import add_worker_command
from radsearch.logs import configure_logging

__all__ = [
    "EXIT_OK",
    "EXIT_RUNTIME_ERROR",
    "EXIT_STORE_FULL",
    "EXIT_STORE_OWNED",
    "EXIT_USAGE",
    "build_parser",
    "exit_code_for",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    """The ``radsearch`` parser: each subcommand's ``handler`` (run here) and, where it can go
    through a server, its ``remote_handler`` and ``remote_mode`` (`radsearch.commands.remote`)."""
    parser = argparse.ArgumentParser(
        prog="radsearch", description="Content-based image retrieval for radiology."
    )
    _add_global_options(parser, default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    # In the order of `radsearch --help`.
    add_ingest_command(sub)
    add_search_command(sub)
    collections_sub = add_collections_commands(sub)
    add_encoders_command(sub)
    add_backup_commands(collections_sub, sub)
    add_serve_command(sub)
    add_keys_command(sub)
    add_demo_command(sub)
    add_eval_command(sub)
    add_worker_command(sub)
    add_jobs_commands(sub)
    add_watch_command(sub)
    _accept_global_options_after_commands(parser)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, *, default: Any) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default,
        help="where the index and caches live (RADSEARCH_DATA_DIR)",
    )
    parser.add_argument(
        "--url",
        type=http_url,
        default=default,
        help="send the command to this radsearch server (RADSEARCH_URL; key in RADSEARCH_API_KEY); "
        "by default the server that owns the data dir, if one serves",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0 if default is None else default)


def _accept_global_options_after_commands(parser: argparse.ArgumentParser) -> None:
    """``radsearch demo --data-dir d`` as well as ``radsearch --data-dir d demo``: every command
    (and subcommand) takes ``--data-dir``, ``--url`` and ``-v`` too, set only where given there
    (argparse would otherwise refuse them after the command as unrecognized)."""
    seen: set[int] = set()
    pending = [parser]
    while pending:
        for action in pending.pop()._actions:
            if not isinstance(action, argparse._SubParsersAction):
                continue
            for command in action.choices.values():
                if id(command) in seen:
                    continue  # an alias
                seen.add(id(command))
                taken = {"--data-dir", "--url", "-v", "--verbose"} & set(command._option_string_actions)
                if taken:
                    raise AssertionError(f"{command.prog} redefines the global options {sorted(taken)}")
                _add_global_options(command, default=argparse.SUPPRESS)
                pending.append(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``radsearch`` with ``argv`` (default: the process's arguments); the exit code.

    A reader of stdout that went away (``radsearch snapshot list | head -1``) ends the command
    quietly with `EXIT_BROKEN_PIPE`, as one killed by SIGPIPE would: not an "unexpected error"."""
    try:
        code = _run(argv)
        sys.stdout.flush()  # here, not at the interpreter's exit, where a closed pipe is a traceback
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush is quiet
        return EXIT_BROKEN_PIPE


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, "text")
    try:
        overrides: dict[str, Any] = {"data_dir": args.data_dir, "url": args.url}
        settings = load_settings({k: v for k, v in overrides.items() if v is not None})
        if settings.events.subscriptions:
            from ingest.labels import check_subscription_templates

            check_subscription_templates(settings.events.subscriptions)
        if settings.log_format != "text":
            configure_logging(args.verbose, settings.log_format)
        apply_selectors(args)
        url = remote_url(args, settings)
        if url:
            try:
                remote_code: int = args.remote_handler(args, settings, url)
                return remote_code
            except ServerGone:  # stopped before it did anything: the store is free here
                print(f"radsearch: the server at {url} has stopped; running here", file=sys.stderr)
        code: int = args.handler(args, settings)
        return code
    except RadsearchError as exc:
        code = exit_code_for(exc)
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        hint = _CLI_HINTS.get(type(exc), "") if getattr(args, "command", "") != "serve" else ""
        _report(args, f"radsearch: error: {message}{hint}")
        if getattr(args, "json", False):
            # A script reading --json output finds the failure as its last line, too.
            print_json({"error": {"type": type(exc).__name__, "message": str(exc), "exit_code": code}})
        return code
    except KeyboardInterrupt:
        # Ctrl-C: what a command wrote stays (ingest batches are idempotent; a run again skips it)
        _report(args, "radsearch: interrupted; what was already written stays")
        if getattr(args, "json", False):
            print_json(
                {
                    "error": {
                        "type": "KeyboardInterrupt",
                        "message": "interrupted",
                        "exit_code": EXIT_INTERRUPTED,
                    }
                }
            )
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the CLI's last resort: one line, not a traceback
        if isinstance(exc, BrokenPipeError) and stat.S_ISFIFO(os.fstat(sys.stdout.fileno()).st_mode):
            raise  # the reader of stdout went away (`main`), not a socket's peer
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        _report(
            args,
            f"radsearch: unexpected error: {type(exc).__name__}"
            + (f": {first}" if first else "")
            + ("" if args.verbose else " (run with -v for the traceback)"),
        )
        if getattr(args, "json", False):
            print_json(
                {"error": {"type": type(exc).__name__, "message": first, "exit_code": EXIT_RUNTIME_ERROR}}
            )
        return EXIT_RUNTIME_ERROR


# What only the command line can say about an error (its flags); HTTP callers get the message alone.
_CLI_HINTS: dict[type[RadsearchError], str] = {
    WeightsUnavailable: " (here: --weights PATH, --weights s3://BUCKET/KEY or --weights ORG/NAME)",
}


def _report(args: argparse.Namespace, line: str) -> None:
    """One line on stderr; with ``-v`` the traceback of the exception being handled first."""
    if args.verbose:
        traceback.print_exc(file=sys.stderr)
    print(line, file=sys.stderr)


def exit_code_for(exc: RadsearchError) -> int:
    """The exit code of a command that failed with ``exc`` (README, How radsearch runs)."""
    if isinstance(exc, StoreOwned):
        return EXIT_STORE_OWNED
    if isinstance(exc, StoreFull):
        return EXIT_STORE_FULL
    if isinstance(exc, ConfigError | EncoderError | IndexStoreError | BadInput):
        return EXIT_USAGE
    return EXIT_RUNTIME_ERROR
