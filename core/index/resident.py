"""Keeping a long-running process's resident memory flat when original vectors live on disk.

With on-disk originals the engine memory-maps each segment's vector file and rescoring reads a
few vectors per search from it; every page read stays mapped into the process, so the RSS of a
server grows with the number of distinct queries it has answered, towards the whole file (2 GB at
1 M x 512), although the pages are clean file cache. `unmap_original_vectors` drops those page
mappings with ``madvise(MADV_DONTNEED)``: the data stays in the page cache (nothing is read from
disk again unless the kernel evicted it) and the next search that needs a page maps it back with a
minor fault. That is safe only for shared, read-only file mappings, the only kind it touches.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable
from pathlib import Path

__all__ = ["unmap_original_vectors"]

logger = logging.getLogger(__name__)

_MADV_DONTNEED = 4


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return madvise


def _is_original_vectors(perms: str, path: str, under: str) -> bool:
    """A shared read-only mapping of a segment's original vectors under ``under`` (not its
    quantized copy, which is meant to stay resident)."""
    return (
        perms == "r--s"
        and path.startswith(under)
        and "/vector_storage/" in path
        and "quantized" not in path.rsplit("/", 1)[-1]
    )


def unmap_original_vectors(root: Path, maps: Path = Path("/proc/self/maps")) -> int:
    """Drop this process's resident pages of the original-vector files under ``root``; the
    number of mappings released (0 where ``/proc`` or ``madvise`` is not available)."""
    madvise = _madvise()
    if madvise is None:
        return 0
    under = str(Path(root).resolve()) + "/"
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return 0
    released = 0
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not _is_original_vectors(fields[1], fields[5], under):
            continue
        start, end = (int(bound, 16) for bound in fields[0].split("-"))
        if madvise(start, end - start, _MADV_DONTNEED) == 0:
            released += 1
        else:
            logger.debug("madvise failed on a mapping of %s: errno %d", fields[5], ctypes.get_errno())
    return released
