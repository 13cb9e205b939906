"""Types of command-line values that several commands take: argparse names the option in the
error of a value out of bounds (exit 2), before anything runs."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from core.config import is_http_url

__all__ = ["at_least", "collection_name", "http_url", "port_number", "seconds"]


def port_number(text: str) -> int:
    """``--port``'s type: a TCP port, 1-65535 (argparse names the option in its error)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a port is a number, 1-65535") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1-65535)")
    return port


def at_least(minimum: int) -> Callable[[str], int]:
    """An option's type: a whole number, ``minimum`` or more (argparse names the option in its
    error), so that 0 or a negative number is never taken as "all" or "none" behind the user's back."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return whole_number


def seconds(text: str) -> float:
    """A duration in seconds: a finite number, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, 0 or more, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text!r}")
    return value


def http_url(text: str) -> str:
    """An ``http://`` or ``https://`` URL with a host (a server's root). The value is not echoed:
    a URL may carry credentials."""
    if not is_http_url(text):
        raise argparse.ArgumentTypeError(
            "expected an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000"
        )
    return text


def collection_name(text: str) -> str:
    """A name for a new collection or alias, by the catalog's rule: refused before anything runs,
    here or through a server, in the same words."""
    from core.errors import ConfigError
    from core.index.base import check_collection_name  # here: only a name to check needs it

    try:
        return check_collection_name(text, "a collection name")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
