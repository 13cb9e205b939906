"""Cut a streamed listing into batches of object references."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ingest.sources.base import ObjectRef

__all__ = ["plan_batches"]


def plan_batches(refs: Iterable[ObjectRef], batch_size: int) -> Iterator[list[ObjectRef]]:
    """Consecutive batches of at most ``batch_size`` refs; the listing is consumed lazily."""
    batch: list[ObjectRef] = []
    for ref in refs:
        batch.append(ref)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
