"""``radsearch keys create|hash``: API keys and the entries that store their hashes."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, get_args

from pydantic import ValidationError

from core.config import ApiKeyEntry, RoleName, Settings
from core.errors import ConfigError
from radsearch.commands.common import EXIT_OK, EXIT_USAGE

__all__ = ["add_keys_command"]


def _cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    from core.api_keys import hash_api_key, new_api_key

    if args.keys_command == "create":
        key = new_api_key()
        try:  # an entry the settings would refuse at the server's start is refused now
            entry = ApiKeyEntry(name=args.name, role=args.role, sha256=hash_api_key(key))
        except ValidationError:
            raise ConfigError(
                f"--name {args.name[:64]!r}: 1 to 64 letters, digits and _ . @ - (it names the key "
                "in audit lines)"
            ) from None
        print(f"key (shown once, give it to the client): {key}")
        print("settings entry (add to RADSEARCH_SECURITY__API_KEYS or the keys file):")
        print(json.dumps(entry.model_dump()))
        return EXIT_OK
    # Read from stdin, not argv: a key on the command line lands in shell history and `ps`.
    key = sys.stdin.readline().strip()
    if not key:
        print("radsearch: error: give the key on stdin", file=sys.stderr)
        return EXIT_USAGE
    print(hash_api_key(key))
    return EXIT_OK


def add_keys_command(sub: Any) -> None:
    """Register ``radsearch keys`` on the ``radsearch`` subparsers."""
    keys = sub.add_parser("keys", help="API keys: create one, or hash one read from stdin")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="print a new random key and its settings entry")
    create.add_argument("--role", choices=get_args(RoleName), required=True)
    create.add_argument("--name", required=True, help="who holds the key (shown in audit lines)")
    keys_sub.add_parser("hash", help="print the SHA-256 to store for a key read from stdin")
    keys.set_defaults(handler=_cmd_keys)
