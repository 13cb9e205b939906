"""``radsearch serve``: the HTTP API and web page, owning the embedded store."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from core.config import Settings
from radsearch.commands.arg_types import port_number
from radsearch.commands.common import EXIT_OK

__all__ = ["add_serve_command"]


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from radsearch.services import serve_api
    from search_api.security import check_bind

    host = args.host or settings.api.host
    port = args.port or settings.api.port
    notice = check_bind(host, settings.security)
    if notice:
        print(f"radsearch: {notice}", file=sys.stderr)
    serve_api(settings, host, port)
    return EXIT_OK


def add_serve_command(sub: Any) -> None:
    """Register ``radsearch serve`` on the ``radsearch`` subparsers."""
    serve = sub.add_parser("serve", help="serve the HTTP API and web page")
    serve.add_argument("--host")
    serve.add_argument("--port", type=port_number)
    serve.set_defaults(handler=_cmd_serve)
