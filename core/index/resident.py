"""Keeping a long-running process's resident memory flat when original vectors live on disk.

With on-disk originals the engine memory-maps each segment's files, and every page a search reads
stays mapped into the process: rescoring's original vectors (~0.4 MB per search at 1 M x 512), a
scan's (the originals of every point it matches, with the neighbours the kernel maps around each
fault once they are cached: 28-194 MB for a 4.6 k-point filter), the payload
pages of the hits, and the WAL the open replayed (50 MB). So the RSS of a server grows with the
number of distinct queries it has answered, towards the size of those files (2.4 GB at 1 M),
although the pages are clean (or written back) file cache.

`release_cold_pages` drops those page mappings with ``madvise(MADV_DONTNEED)``: the data stays in
the page cache (nothing is read from disk again unless the kernel evicted it) and the next access
maps it back with a minor fault. That is safe for shared file mappings, the only kind it touches
(for ``MAP_SHARED`` the kernel keeps a written page's data in the page cache; only private
mappings would lose it). What every search reads stays resident: the quantized vectors, the HNSW
links, the payload indexes and the id tracker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["release_cold_pages", "resident_mb"]

logger = logging.getLogger(__name__)

_MADV_DONTNEED = 4
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


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


def _is_cold(perms: str, path: str, under: str) -> bool:
    """A shared file mapping under ``under`` of what searches read only now and then: a segment's
    original vectors (not their quantized copy), its payload pages (not their tracker, read for
    every payload), or the WAL."""
    if perms not in ("r--s", "rw-s") or not path.startswith(under):
        return False
    name = path.rsplit("/", 1)[-1]
    if "/vector_storage/" in path:
        return "quantized" not in name
    if "/payload_storage/" in path:
        return name.startswith("page_")
    return "/wal/" in path


def release_cold_pages(*roots: Path, maps: Path = Path("/proc/self/maps")) -> int:
    """Drop this process's resident pages of the cold collection files under ``roots`` (see the
    module docstring), with one read of the process's mappings; the number of mappings released
    (0 where ``/proc`` or ``madvise`` is not available, or without roots)."""
    madvise = _madvise()
    if madvise is None or not roots:
        return 0
    unders = [str(Path(root).resolve()) + "/" for root in roots]
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return 0
    released = 0
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not any(_is_cold(fields[1], fields[5], under) for under in unders):
            continue
        start, end = (int(bound, 16) for bound in fields[0].split("-"))
        if madvise(start, end - start, _MADV_DONTNEED) == 0:
            released += 1
        else:
            logger.debug("madvise failed on a mapping of %s: errno %d", fields[5], ctypes.get_errno())
    return released


def resident_mb(statm: Path = Path("/proc/self/statm")) -> float:
    """This process's resident memory in MB (one small read, ~10 µs); 0.0 without ``/proc``."""
    try:
        return int(statm.read_text().split()[1]) * _PAGE_MB
    except (OSError, IndexError, ValueError):
        return 0.0
