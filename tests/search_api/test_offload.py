"""`on_index`: index calls inline where the backend holds the GIL anyway, in a worker thread otherwise."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from core.config import StoreSettings
from core.index.edge import EdgeIndex
from search_api.offload import on_index


class _ThreadedEdge(EdgeIndex):
    """The same engine, declared as if its calls released the GIL (as a network backend's do)."""

    holds_gil = False


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[EdgeIndex]:
    index = EdgeIndex(tmp_path / "index", StoreSettings())
    yield index
    index.close()


def test_on_index_runs_inline_for_gil_holding_backends_and_in_a_worker_thread_otherwise(
    edge: EdgeIndex, tmp_path: Path
) -> None:
    threaded = _ThreadedEdge(tmp_path / "threaded", StoreSettings())

    async def threads() -> tuple[int, int, int]:
        loop_thread = threading.get_ident()
        return (
            loop_thread,
            await on_index(edge, threading.get_ident),
            await on_index(threaded, threading.get_ident),
        )

    try:
        loop_thread, inline, offloaded = anyio.run(threads)
    finally:
        threaded.close()
    assert edge.holds_gil and not threaded.holds_gil
    assert inline == loop_thread
    assert offloaded != loop_thread
