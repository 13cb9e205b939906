"""``radsearch encoders``: the registered encoders."""

from __future__ import annotations

import argparse
from typing import Any

from core.config import Settings
from radsearch.commands.common import EXIT_OK, print_json

__all__ = ["add_encoders_command"]


def _cmd_encoders(args: argparse.Namespace, settings: Settings) -> int:
    from core.encoders.registry import list_specs

    specs = list_specs()
    if args.json:
        print_json({"encoders": [s.model_dump(mode="json") for s in specs]})
        return EXIT_OK
    for spec in specs:
        text = "text" if spec.text_tower else "    "
        size = f"{spec.input_size}px"
        print(f"{spec.name:<16} {spec.family.value:<12} dim={spec.dim:<5} {size:>6} {text} {spec.license}")
    return EXIT_OK


def add_encoders_command(sub: Any) -> None:
    """Register ``radsearch encoders`` on the ``radsearch`` subparsers."""
    encoders = sub.add_parser("encoders", help="list the registered encoders")
    encoders.add_argument("--json", action="store_true")
    encoders.set_defaults(handler=_cmd_encoders)
