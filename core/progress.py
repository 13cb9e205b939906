"""The command line's progress bars over streams of objects (ingest, backfill, followed jobs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["progress_bar"]


def progress_bar(desc: str, *, shown: bool) -> tqdm[Any]:
    """A bar counting objects, drawn where ``shown`` and stderr is a terminal: in a log file each
    update would be a carriage-return line of its own."""
    from tqdm import tqdm  # here, not at start-up: most commands draw no bar

    return tqdm(unit="obj", desc=desc, disable=None if shown else True, dynamic_ncols=True)
