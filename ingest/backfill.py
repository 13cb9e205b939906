"""Backfill: embed every image another collection (or a source) already knows into a new collection.

Nothing new is invented: the objects named by the other collection's payloads (``source``, ``key``)
are fetched again and go through the same batch pipeline as an ingest (`process_batch`), with the
other collection's labels. Writes are insert-only, so a point a concurrent ingest wrote into the
new collection is never overwritten, and objects already present at the same ETag are skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from core.catalog import Catalog
from core.config import Settings
from core.errors import ConfigError
from core.index.base import CollectionConfig, Hit, StoredPoint, VectorIndex
from core.payload import SearchFilter
from ingest.labels import Labeler, PathTemplate
from ingest.pipeline import BatchReport, PipelineContext, Target, run_pipeline
from ingest.planner import plan_batches
from ingest.readers import DecodeLimits
from ingest.sources import open_source
from ingest.sources.base import ObjectRef

__all__ = ["BackfillPlan", "InsertOnlyIndex", "plan_backfill", "run_backfill"]

log = logging.getLogger(__name__)

_LABEL_FIELDS = ("modality", "anatomy", "pathology", "dataset", "split")


class InsertOnlyIndex(VectorIndex):
    """A view of an index whose upserts never overwrite an existing point."""

    def __init__(self, inner: VectorIndex) -> None:
        self.inner = inner

    def upsert(
        self,
        name: str,
        ids: Sequence[str],
        vectors: NDArray[np.float32],
        payloads: Sequence[dict[str, Any]],
        *,
        insert_only: bool = True,
    ) -> None:
        self.inner.upsert(name, ids, vectors, payloads, insert_only=True)

    def create_collection(self, config: CollectionConfig) -> None:
        self.inner.create_collection(config)

    def drop_collection(self, name: str) -> None:
        self.inner.drop_collection(name)

    def list_collections(self) -> list[str]:
        return self.inner.list_collections()

    def collection_exists(self, name: str) -> bool:
        return self.inner.collection_exists(name)

    def collection_config(self, name: str) -> CollectionConfig:
        return self.inner.collection_config(name)

    def update_metadata(self, name: str, metadata: dict[str, Any]) -> None:
        self.inner.update_metadata(name, metadata)

    def search(
        self,
        name: str,
        vector: NDArray[np.float32],
        *,
        filter: SearchFilter | None = None,
        limit: int = 10,
        offset: int = 0,
        score_threshold: float | None = None,
        exclude_ids: Sequence[str] = (),
        exact: bool = False,
        hnsw_ef: int | None = None,
    ) -> list[Hit]:
        return self.inner.search(
            name,
            vector,
            filter=filter,
            limit=limit,
            offset=offset,
            score_threshold=score_threshold,
            exclude_ids=exclude_ids,
            exact=exact,
            hnsw_ef=hnsw_ef,
        )

    def retrieve(self, name: str, ids: Sequence[str], *, with_vectors: bool = False) -> list[StoredPoint]:
        return self.inner.retrieve(name, ids, with_vectors=with_vectors)

    def count(self, name: str, filter: SearchFilter | None = None) -> int:
        return self.inner.count(name, filter)

    def facet(
        self, name: str, field: str, *, filter: SearchFilter | None = None, limit: int = 100
    ) -> dict[str, int]:
        return self.inner.facet(name, field, filter=filter, limit=limit)

    def scroll(
        self,
        name: str,
        *,
        filter: SearchFilter | None = None,
        batch_size: int = 1000,
        with_vectors: bool = False,
    ) -> Iterator[StoredPoint]:
        return self.inner.scroll(name, filter=filter, batch_size=batch_size, with_vectors=with_vectors)

    def delete(self, name: str, ids: Sequence[str]) -> None:
        self.inner.delete(name, ids)

    def delete_by_filter(self, name: str, filter: SearchFilter) -> None:
        self.inner.delete_by_filter(name, filter)


@dataclass(frozen=True)
class BackfillPlan:
    """Per source URI, the objects to embed and their labels (from the other collection)."""

    origin: str
    sources: dict[str, list[ObjectRef]]
    labels: dict[str, dict[str, dict[str, Any]]]

    @property
    def objects(self) -> int:
        return sum(len(refs) for refs in self.sources.values())


def plan_backfill(catalog: Catalog, settings: Settings, origin: str, *, target: str) -> BackfillPlan:
    """What a backfill of ``target`` from ``origin`` (a collection or alias, or a source URI) embeds.

    A collection is read by scrolling its payloads (frame 0 of each object names it); a source URI
    is listed, and its labels come from the objects themselves (DICOM tags, object metadata).
    """
    if origin in catalog.aliases() or catalog.index.collection_exists(origin):
        name = catalog.resolve(origin)
        if name == catalog.resolve(target):
            raise ConfigError(f"cannot backfill collection {name!r} from itself")
        sources: dict[str, dict[str, ObjectRef]] = {}
        labels: dict[str, dict[str, dict[str, Any]]] = {}
        for point in catalog.index.scroll(name, batch_size=1000):
            payload = point.payload
            uri, key = payload.get("source"), payload.get("key")
            if not isinstance(uri, str) or not isinstance(key, str):
                continue
            if key not in sources.setdefault(uri, {}):
                sources[uri][key] = ObjectRef(
                    key=key, etag=str(payload.get("etag") or ""), size=int(payload.get("size") or 0)
                )
                labels.setdefault(uri, {})[key] = {
                    f: payload[f] for f in _LABEL_FIELDS if payload.get(f) not in (None, [], "")
                }
        return BackfillPlan(
            origin=name, sources={uri: list(refs.values()) for uri, refs in sources.items()}, labels=labels
        )
    if "://" not in origin and not Path(origin).expanduser().is_dir():
        raise ConfigError(f"backfill origin {origin!r} is neither a collection, an alias nor a source URI")
    source = open_source(origin, settings)
    try:
        refs = list(source.list())
        uri = source.uri
    finally:
        source.close()
    return BackfillPlan(origin=origin, sources={uri: refs}, labels={})


def run_backfill(
    catalog: Catalog,
    settings: Settings,
    plan: BackfillPlan,
    *,
    target: str,
    on_batch: Callable[[BatchReport], None] | None = None,
    path_template: str | None = None,
) -> BatchReport:
    """Embed the plan's objects into ``target`` with its own encoder, insert-only."""
    name = catalog.resolve(target)
    entry = catalog.get(name)
    encoder_target = Target(name, catalog.encoder(entry.encoder), entry.encoder_label)
    index = InsertOnlyIndex(catalog.index)
    total = BatchReport()
    with ThreadPoolExecutor(
        max_workers=settings.ingest.decode_workers, thread_name_prefix="backfill"
    ) as pool:
        for uri, refs in plan.sources.items():
            source = open_source(uri, settings)
            try:
                ctx = PipelineContext(
                    source=source,
                    index=index,
                    targets=[encoder_target],
                    labeler=Labeler(
                        manifest=plan.labels.get(uri, {}),
                        path_template=PathTemplate(path_template) if path_template else None,
                    ),
                    limits=DecodeLimits.from_settings(settings.ingest),
                    hash_key=settings.hash_key_bytes(),
                    embed_batch_size=settings.ingest.batch_size,
                    skip_unchanged=True,
                )
                batches = plan_batches(iter(refs), settings.ingest.batch_size)
                report = run_pipeline(ctx, batches, pool, on_batch=on_batch)
            finally:
                source.close()
            total.merge(report)
    log.info(
        "backfill %s from %s: %d objects, %d frames", name, plan.origin, total.objects, total.frames_indexed
    )
    return total
