"""The name a typo meant: ``modaliti`` → ``modality``, for the errors that name an unknown field,
collection, encoder or manifest column, all in one wording."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["did_you_mean", "named_with_suggestions"]


def did_you_mean(name: str, names: Iterable[str], *, n: int = 1) -> str:
    """`` (did you mean 'x'?)`` for the one of ``names`` closest to ``name`` (case aside), or with
    ``n`` > 1 up to ``n`` of them (`` (did you mean 'x' or 'y'?)``), or ``""`` where none is close:
    the words an error naming an unknown ``name`` ends its name with."""
    close = [repr(c) for c in difflib.get_close_matches(name.lower(), list(names), n=n, cutoff=0.7)]
    if not close:
        return ""
    listed = close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}"
    return f" (did you mean {listed}?)"


def named_with_suggestions(names: Iterable[str], known: Iterable[str]) -> str:
    """``'modaliti' (did you mean 'modality'?), 'x'``: each of ``names`` quoted, followed by the one
    of ``known`` it is closest to where there is one."""
    choices = list(known)
    return ", ".join(repr(name) + did_you_mean(name, choices) for name in names)
