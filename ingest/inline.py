"""The inline executor: the embedded default, one process, a progress bar."""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from core.calibration import calibrate_loaded
from core.catalog import Catalog
from core.config import Settings
from core.errors import SourceError
from core.progress import progress_bar
from ingest.labels import Labeler, PathTemplate
from ingest.pipeline import BatchReport, PipelineContext, Target, run_pipeline
from ingest.planner import plan_batches
from ingest.prune import DEFAULT_MAX_DELETE_FRACTION, SourceDiff, check_deletions, prune_gone, source_diffs
from ingest.readers import DecodeLimits
from ingest.reid import open_reid_table
from ingest.sources.base import ObjectRef, Source
from ingest.sources.factory import load_manifest_ref

# How many unmatched manifest keys a run's report names (it counts them all).
_UNMATCHED_SHOWN = 5

__all__ = [
    "IngestOptions",
    "RuleNotes",
    "build_context",
    "diff_inline",
    "ingest_inline",
    "listing_of",
    "make_labeler",
    "make_targets",
    "plan_prune",
]


@dataclass(frozen=True)
class IngestOptions:
    """How to ingest. ``prune`` also deletes the points of objects gone from the source (refused
    beyond ``max_delete_fraction`` of a collection's objects, or for an empty listing, unless
    ``force``); ``dry_run`` only computes what would change (`diff_inline`)."""

    #: A local CSV/JSONL file or an ``s3://bucket/key`` object.
    manifest: str | Path | None = None
    path_template: str | None = None
    skip_unchanged: bool = True
    accept_burned_in: bool = False
    prune: bool = False
    dry_run: bool = False
    max_delete_fraction: float = DEFAULT_MAX_DELETE_FRACTION
    force: bool = False
    #: The source's stable name (payload ``source``); None: the folder's name or bucket/prefix.
    source_name: str | None = None


def make_targets(catalog: Catalog, collections: list[str]) -> list[Target]:
    """Targets for existing collections (or the collections aliases point at), each with the encoder
    it was built with."""
    targets = []
    for name in collections:
        entry = catalog.get(name)
        targets.append(
            Target(entry.name, catalog.encoder(entry.encoder), entry.encoder_label, entry.id_scheme)
        )
    return targets


def make_labeler(options: IngestOptions, settings: Settings) -> Labeler:
    return Labeler(
        manifest=load_manifest_ref(options.manifest, settings) if options.manifest else {},
        path_template=PathTemplate(options.path_template) if options.path_template else None,
    )


def build_context(
    source: Source,
    catalog: Catalog,
    collections: list[str],
    options: IngestOptions,
    settings: Settings,
    *,
    labeler: Labeler | None = None,
    insert_only: bool = False,
) -> PipelineContext:
    """The pipeline context for ``collections``; ``labeler`` replaces the one ``options`` describe.

    Records in each collection where the source's stable name is read from (`Catalog.register_source`),
    and finds the collection's other names that reach the same files (`core.source_overlap`).
    """
    targets = make_targets(catalog, collections)
    catalog.register_source([t.collection for t in targets], source.name, source.uri)
    targets = [
        replace(t, overlaps=catalog.index.source_overlaps(t.collection, source.name, source.uri))
        if t.id_scheme == "v2"  # v1 collections (ids from the URI and key) are left as they were
        else t
        for t in targets
    ]
    return PipelineContext(
        source=source,
        index=catalog.index,
        targets=targets,
        labeler=labeler if labeler is not None else make_labeler(options, settings),
        limits=DecodeLimits.from_settings(settings.ingest),
        hash_key=settings.hash_key_bytes(),
        embed_batch_size=settings.ingest.batch_size,
        skip_unchanged=options.skip_unchanged,
        accept_burned_in=options.accept_burned_in,
        insert_only=insert_only,
        reid=open_reid_table(settings),
    )


def listing_of(ctx: PipelineContext, exclude_keys: frozenset[str]) -> dict[str, ObjectRef]:
    """The whole listing of the context's source (but ``exclude_keys``), key → reference."""
    return {ref.key: ref for ref in ctx.source.list() if ref.key not in exclude_keys}


def diff_inline(
    ctx: PipelineContext, settings: Settings, listing: dict[str, ObjectRef], *, prune: bool
) -> list[SourceDiff]:
    """What an ingest (with ``prune``: and its deletions) would change in each target collection."""
    return source_diffs(
        ctx.index,
        [t.collection for t in ctx.targets],
        ctx.source,
        listing,
        max_frames=settings.ingest.max_frames_per_object,
        prune=prune,
    )


def plan_prune(
    ctx: PipelineContext, settings: Settings, listing: dict[str, ObjectRef], options: IngestOptions
) -> list[SourceDiff]:
    """The deletions a prune will make, checked before anything is written (`DeletionRefused`)."""
    diffs = diff_inline(ctx, settings, listing, prune=True)
    check_deletions(diffs, max_fraction=options.max_delete_fraction, force=options.force)
    return diffs


class RuleNotes:
    """What a run's listing says of its label rules, for its report: the manifest rows that no
    listed object claimed, and the keys without the path template's layout (no label from it)."""

    def __init__(self, labeler: Labeler) -> None:
        self._labeler = labeler
        self._unclaimed = set(labeler.manifest)
        self._off_template: list[str] = []

    def note(self, key: str) -> None:
        """One listed object's key."""
        self._unclaimed.discard(key)
        if self._labeler.misses_template(key):
            self._off_template.append(key)

    def noting(self, refs: Iterable[ObjectRef]) -> Iterator[ObjectRef]:
        """``refs``, noted as they pass."""
        for ref in refs:
            self.note(ref.key)
            yield ref

    def counts(self) -> dict[str, int]:
        """The job counters (`core.jobs.JobCounts`) of what was noted."""
        return {"manifest_unmatched": len(self._unclaimed), "template_unmatched": len(self._off_template)}

    def record(self, report: BatchReport) -> None:
        """Into ``report``: how many of each, and the first few keys."""
        report.manifest_unmatched = len(self._unclaimed)
        report.manifest_unmatched_keys = heapq.nsmallest(_UNMATCHED_SHOWN, self._unclaimed)
        report.template_unmatched = len(self._off_template)
        report.template_unmatched_keys = heapq.nsmallest(_UNMATCHED_SHOWN, self._off_template)


def ingest_inline(
    ctx: PipelineContext,
    settings: Settings,
    *,
    progress: bool = True,
    exclude_keys: frozenset[str] = frozenset(),
    options: IngestOptions | None = None,
) -> BatchReport:
    """Ingest every object of the context's source (but ``exclude_keys``, e.g. a manifest stored
    beside the images); returns the run's report, ``seconds`` being wall-clock time.

    With ``options.prune``, the points of objects gone from the source are
    deleted too (``report.deleted``), after the deletion guard passed and before anything is
    written."""
    started = time.perf_counter()
    listing: dict[str, ObjectRef] | None = None
    diffs: list[SourceDiff] = []
    if options is not None and options.prune:
        listing = listing_of(ctx, exclude_keys)
        diffs = plan_prune(ctx, settings, listing, options)
    refs: Iterable[ObjectRef] = (
        listing.values()
        if listing is not None
        else (ref for ref in ctx.source.list() if ref.key not in exclude_keys)
    )
    notes = RuleNotes(ctx.labeler)

    bar = progress_bar("ingest", shown=progress)
    frames = 0
    errors = 0

    def on_batch(done: BatchReport) -> None:
        nonlocal frames, errors
        frames += done.frames_indexed
        errors += len(done.failed) + len(done.quarantined)
        bar.update(done.objects)
        bar.set_postfix(frames=frames, errors=errors, refresh=False)

    with ThreadPoolExecutor(max_workers=settings.ingest.decode_workers, thread_name_prefix="decode") as pool:
        try:
            report = run_pipeline(
                ctx,
                plan_batches(notes.noting(refs), settings.ingest.batch_size),
                pool,
                on_batch=on_batch,
            )
        except SourceError:
            bar.close()
            raise
    bar.close()
    notes.record(report)
    if diffs:
        report.deleted = prune_gone(ctx.index, ctx.source, diffs)
    if report.frames_indexed or report.deleted:
        # Qdrant Edge builds its HNSW graph only when asked: do it once, after the bulk load.
        for target in ctx.targets:
            ctx.index.optimize(target.collection)
            calibrate_loaded(ctx.index, target.collection)
    report.seconds = time.perf_counter() - started
    return report
