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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.calibration import calibrate_loaded
from core.catalog import Catalog
from core.config import Settings
from core.errors import ConfigError
from core.payload import LABEL_FIELDS
from ingest.inline import IngestOptions, build_context
from ingest.labels import Labeler, PathTemplate
from ingest.pipeline import BatchReport, run_pipeline
from ingest.planner import plan_batches
from ingest.sources import open_source
from ingest.sources.base import ObjectRef

__all__ = ["BackfillPlan", "plan_backfill", "run_backfill"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackfillPlan:
    """Per source name, the objects to embed and their labels (from the other collection), and
    where each source is read from (``uris``: name → URI)."""

    origin: str
    sources: dict[str, list[ObjectRef]]
    labels: dict[str, dict[str, dict[str, Any]]]
    uris: dict[str, str] = field(default_factory=dict)

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
            source_name, key = payload.get("source"), payload.get("key")
            if not isinstance(source_name, str) or not isinstance(key, str):
                continue
            if key not in sources.setdefault(source_name, {}):
                sources[source_name][key] = ObjectRef(
                    key=key, etag=str(payload.get("etag") or ""), size=int(payload.get("size") or 0)
                )
                labels.setdefault(source_name, {})[key] = {
                    f: payload[f] for f in LABEL_FIELDS if payload.get(f) not in (None, [], "")
                }
        uris: dict[str, str] = {}
        for source_name in sources:
            uri = catalog.source_uri(name, source_name)
            # Points of a v1 collection may still name their source by its URI.
            uris[source_name] = uri if uri is not None else source_name
        return BackfillPlan(
            origin=name,
            sources={n: list(refs.values()) for n, refs in sources.items()},
            labels=labels,
            uris=uris,
        )
    if "://" not in origin and not Path(origin).expanduser().is_dir():
        raise ConfigError(f"backfill origin {origin!r} is neither a collection, an alias nor a source URI")
    source = open_source(origin, settings)
    try:
        refs = list(source.list())
        source_name = source.name
    finally:
        source.close()
    return BackfillPlan(origin=origin, sources={source_name: refs}, labels={}, uris={source_name: origin})


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
        for source_name, refs in plan.sources.items():
            uri = plan.uris.get(source_name, source_name)
            legacy = source_name == uri and ("://" in uri or uri.startswith("/"))
            source = open_source(uri, settings, name=None if legacy else source_name)
            try:
                ctx = build_context(
                    source,
                    catalog,
                    [name],
                    IngestOptions(skip_unchanged=True),
                    settings,
                    labeler=Labeler(
                        manifest=plan.labels.get(source_name, {}),
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
        calibrate_loaded(catalog.index, name)
    log.info(
        "backfill %s from %s: %d objects, %d frames", name, plan.origin, total.objects, total.frames_indexed
    )
    return total
