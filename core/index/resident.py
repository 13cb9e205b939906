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

`populate_hot_pages` maps the quantized vectors in (``MADV_POPULATE_READ``). On-disk collections
keep them ``Memory.Cold`` in the engine, which then does not pre-read them while it loads a shard:
the engine's own pre-read came before its WAL replay, whose working memory (~170 MB, whatever the
collection's size) was live with all of them mapped. That was the peak RSS of a 1 M x 512 server
(1,171 MB in the open, against 938 MB once it was over); mapping them after the load leaves the
peak at what the server then holds (bench/RESULTS.md, session 16).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["populate_hot_pages", "release_cold_pages", "resident_mb"]

logger = logging.getLogger(__name__)

_MADV_WILLNEED = 3
_MADV_DONTNEED = 4
_MADV_POPULATE_READ = 22  # Linux 5.14; EINVAL before
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


def _is_hot(perms: str, path: str, under: str) -> bool:
    """A shared file mapping under ``under`` of a segment's quantized vectors (every search reads
    them)."""
    return perms in ("r--s", "rw-s") and path.startswith(under) and "/vector_storage/quantized" in path


def _advise(
    roots: tuple[Path, ...],
    maps: Path,
    qualifies: Callable[[str, str, str], bool],
    advice: int,
    fallback: int | None = None,
) -> int:
    """``madvise(advice)`` on each mapping under ``roots`` that ``qualifies`` (perms, path, root),
    ``fallback`` (if any) where the kernel does not know ``advice``; the number of mappings advised,
    with one read of the process's mappings (0 where ``/proc`` or ``madvise`` is not available)."""
    madvise = _madvise()
    if madvise is None or not roots:
        return 0
    unders = [str(Path(root).resolve()) + "/" for root in roots]
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return 0
    advised = 0
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not any(qualifies(fields[1], fields[5], under) for under in unders):
            continue
        start, end = (int(bound, 16) for bound in fields[0].split("-"))
        result = madvise(start, end - start, advice)
        if result != 0 and ctypes.get_errno() == errno.EINVAL and fallback is not None:
            advice, fallback = fallback, None  # a kernel without it: the fallback from here on
            result = madvise(start, end - start, advice)
        if result == 0:
            advised += 1
        else:
            logger.debug("madvise failed on a mapping of %s: errno %d", fields[5], ctypes.get_errno())
    return advised


def release_cold_pages(*roots: Path, maps: Path = Path("/proc/self/maps")) -> int:
    """Drop this process's resident pages of the cold collection files under ``roots`` (see the
    module docstring); the number of mappings released."""
    return _advise(roots, maps, _is_cold, _MADV_DONTNEED)


def populate_hot_pages(*roots: Path, maps: Path = Path("/proc/self/maps")) -> int:
    """Map in this process's pages of the quantized vectors under ``roots`` (read from disk where
    they are not cached), so that searches do not fault them in one by one; where the kernel
    cannot (before Linux 5.14), have it read them ahead into the page cache. The number of
    mappings advised."""
    return _advise(roots, maps, _is_hot, _MADV_POPULATE_READ, _MADV_WILLNEED)


def resident_mb(statm: Path = Path("/proc/self/statm")) -> float:
    """This process's resident memory in MB (one small read, ~10 µs); 0.0 without ``/proc``."""
    try:
        return int(statm.read_text().split()[1]) * _PAGE_MB
    except (OSError, IndexError, ValueError):
        return 0.0
