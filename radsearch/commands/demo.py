"""``radsearch demo``: build a demo archive, index it, run example searches, serve
(`radsearch.demo`)."""

from __future__ import annotations

import argparse
from typing import Any

from core.config import Settings
from radsearch.commands.options import port_number

__all__ = ["add_demo_command"]


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from radsearch.demo import run_demo

    return run_demo(
        settings, per_class=args.per_class, serve=not args.no_serve, host=args.host, port=args.port
    )


def add_demo_command(sub: Any) -> None:
    """Register ``radsearch demo`` on the ``radsearch`` subparsers."""
    demo = sub.add_parser("demo", help="build a demo archive, index it, run example searches, serve")
    demo.add_argument("--per-class", type=int, default=12)
    demo.add_argument("--no-serve", action="store_true")
    demo.add_argument("--host")
    demo.add_argument("--port", type=port_number)
    demo.set_defaults(handler=_cmd_demo)
