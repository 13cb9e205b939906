"""The name a typo meant: ``modaliti`` → ``modality``, for the errors that name an unknown field."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["did_you_mean", "named_with_suggestions"]


def did_you_mean(name: str, names: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the one of ``names`` closest to ``name`` (case aside), or ``""``
    where none is close: the words an error naming an unknown ``name`` ends its name with."""
    close = difflib.get_close_matches(name.lower(), list(names), n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def named_with_suggestions(names: Iterable[str], known: Iterable[str]) -> str:
    """``'modaliti' (did you mean 'modality'?), 'x'``: each of ``names`` quoted, followed by the one
    of ``known`` it is closest to where there is one."""
    choices = list(known)
    return ", ".join(repr(name) + did_you_mean(name, choices) for name in names)
