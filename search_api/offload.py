"""Running blocking work off the event loop: the one way the app and its routes do it.

Three kinds of work, three functions, each taking the callable and its arguments:

- `in_thread`: blocking I/O and bookkeeping (Redis, SQLite, object storage, the catalog) in
  anyio's default worker-thread pool;
- `in_inference_thread`: model forward passes and other heavy CPU work, in a worker thread under the
  app's inference limiter, so a burst of text or image searches cannot occupy every thread;
- `on_index`: calls on the vector index, inline where the backend holds the GIL anyway; the hot
  searches await `VectorIndex.search_async` and `search_near_point_async` instead, which need no
  worker thread where the index is in a process of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import ParamSpec, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter

from core.index.base import VectorIndex, off_loop

__all__ = ["in_inference_thread", "in_thread", "on_index"]

P = ParamSpec("P")
T = TypeVar("T")


async def in_thread(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in a worker thread of the default pool; the event loop keeps serving."""
    return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs))


async def in_inference_thread(
    limiter: CapacityLimiter, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
) -> T:
    """``fn(*args, **kwargs)`` in a worker thread, at most ``limiter``'s number at a time (the
    app's inference limiter: model calls wait for a free slot instead of piling up)."""
    return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=limiter)


async def on_index(index: VectorIndex, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` on ``index``: in a worker thread, or inline where the backend holds
    the GIL throughout anyway (`off_loop`)."""
    return await off_loop(index, partial(fn, *args, **kwargs))
