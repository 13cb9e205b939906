"""Backfill: embed every image another collection (or a source) already knows into a new collection.

Nothing new is invented: the objects named by the other collection's payloads (``source``, ``key``)
are fetched again and go through the same batch pipeline as an ingest (`process_batch`), with the
other collection's labels. Writes are insert-only, so a point a concurrent ingest wrote into the
new collection is never overwritten, and objects already present at the same ETag are skipped.
When it has indexed frames, the backfill ends by building the new collection's search index.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.catalog import Catalog
from core.config import Settings
from core.errors import ConfigError
from ingest.inline import IngestOptions, build_context
from ingest.labels import Labeler, PathTemplate
from ingest.pipeline import BatchReport, run_pipeline
from ingest.planner import plan_batches
from ingest.sources import open_source
from ingest.sources.base import ObjectRef

__all__ = ["BackfillPlan", "plan_backfill", "run_backfill"]

log = logging.getLogger(__name__)

_LABEL_FIELDS = ("modality", "anatomy", "pathology", "dataset", "split")


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
    """Embed the plan's objects into ``target`` with its own encoder, insert-only, then build the
    target's search index when frames were indexed."""
    name = catalog.resolve(target)
    total = BatchReport()
    with ThreadPoolExecutor(
        max_workers=settings.ingest.decode_workers, thread_name_prefix="backfill"
    ) as pool:
        for uri, refs in plan.sources.items():
            source = open_source(uri, settings)
            try:
                ctx = build_context(
                    source,
                    catalog,
                    [name],
                    IngestOptions(skip_unchanged=True),
                    settings,
                    labeler=Labeler(
                        manifest=plan.labels.get(uri, {}),
                        path_template=PathTemplate(path_template) if path_template else None,
                    ),
                    insert_only=True,
                )
                batches = plan_batches(iter(refs), settings.ingest.batch_size)
                report = run_pipeline(ctx, batches, pool, on_batch=on_batch)
            finally:
                source.close()
            total.merge(report)
    if total.frames_indexed:
        # Qdrant Edge builds HNSW graphs only when asked: once, after the bulk load.
        catalog.index.optimize(name)
    log.info(
        "backfill %s from %s: %d objects, %d frames", name, plan.origin, total.objects, total.frames_indexed
    )
    return total
