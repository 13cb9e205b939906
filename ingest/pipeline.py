"""The batch pipeline: fetch → decode → label → preprocess → embed → upsert.

One function (`process_batch`) used by both executors (inline and Celery); `run_pipeline` streams
batches through it with fetch/decode of the next batch overlapping the embedding of the current one.
Per-object failures (`BadInput`) are recorded and the batch goes on; `SourceError` (transient)
propagates so the caller can retry the batch, which is safe because point ids are deterministic.

Identity and updates: point ids derive from the image (`core.payload.image_point_id`: a DICOM
frame from its SOP Instance UID, other files from the source's stable name and key) in collections
of id scheme v2, from the source URI and key in older (v1) ones. What a batch's objects already
have stored is read with one filtered scroll per collection (payload ``source`` and ``key``), so
an unchanged object is skipped, an object whose label rules changed is relabelled (payload only,
no embedding) and a re-embedded object's points that no longer exist (fewer frames, another
sampling) are deleted in the same step. An unchanged object that this run's rules say nothing about
keeps the labels earlier rules gave it (`BatchReport.labels_kept`): a run without the manifest does
not strip a collection's labels.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from core.encoders.base import Encoder
from core.errors import BadInput, ObjectNotFound
from core.index.base import StoredPoint, VectorIndex
from core.metrics import INGEST_IMAGES, INGEST_OBJECTS, INGEST_STAGE_SECONDS
from core.payload import NO_RULES_HASH, SearchFilter, build_payload, image_point_id, labels_hash, point_id
from core.source_overlap import Overlap
from ingest.labels import Labeler
from ingest.prune import delete_keys
from ingest.readers import DecodeLimits
from ingest.reid import ReidTable, read_uids
from ingest.sources.base import ObjectRef, Source

__all__ = [
    "BURNED_IN_BY_DEFAULT",
    "BatchReport",
    "FailedItem",
    "PipelineContext",
    "Target",
    "burned_in_reason",
    "process_batch",
    "run_pipeline",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """One collection to fill and the encoder it was built with."""

    collection: str
    encoder: Encoder
    encoder_label: str
    #: How the collection derives point ids (`core.payload.ID_SCHEMES`).
    id_scheme: str = "v2"
    #: The collection's other source names that reach this run's files (`core.source_overlap`).
    overlaps: tuple[Overlap, ...] = ()


@dataclass(frozen=True)
class FailedItem:
    """An object that was not indexed, with why (never a header value)."""

    key: str
    reason: str
    quarantined: bool = False
    #: The source no longer has it (`ObjectNotFound`): deleted since it was listed or announced.
    vanished: bool = False


@dataclass
class BatchReport:
    """Counts of one batch or a whole run. ``frames_indexed`` is summed over target collections."""

    objects: int = 0
    frames_indexed: int = 0
    skipped: int = 0
    #: Objects whose pixels were unchanged but whose labels were rewritten (no re-embedding).
    relabelled: int = 0
    #: Unchanged objects (counted in ``skipped``) that keep labels from an earlier run's manifest
    #: or path template: this run's rules say nothing about them.
    labels_kept: int = 0
    failed: list[FailedItem] = field(default_factory=list)
    quarantined: list[FailedItem] = field(default_factory=list)
    seconds: float = 0.0
    # Keys of objects gone from the source whose points a prune deleted.
    deleted: list[str] = field(default_factory=list)
    #: Manifest rows whose key names no object of the source (a whole run's; keys relative to
    #: another folder or prefix label nothing), and the first few of those keys, in order.
    manifest_unmatched: int = 0
    manifest_unmatched_keys: list[str] = field(default_factory=list)
    #: Objects whose key does not have the path template's layout (no label from it), and the
    #: first few of those keys, in order.
    template_unmatched: int = 0
    template_unmatched_keys: list[str] = field(default_factory=list)
    #: DICOM objects stored with a modality (from the manifest, path template or object metadata,
    #: which take precedence) other than their header's Modality: (stored, header) → objects.
    modality_conflicts: Counter[tuple[str, str]] = field(default_factory=Counter)

    def merge(self, other: BatchReport) -> None:
        self.objects += other.objects
        self.frames_indexed += other.frames_indexed
        self.skipped += other.skipped
        self.relabelled += other.relabelled
        self.labels_kept += other.labels_kept
        self.failed.extend(other.failed)
        self.quarantined.extend(other.quarantined)
        self.seconds += other.seconds
        self.deleted.extend(other.deleted)
        self.modality_conflicts.update(other.modality_conflicts)

    @property
    def modality_conflict_count(self) -> int:
        """DICOM objects stored with a modality other than their header's."""
        return sum(self.modality_conflicts.values())

    def modality_conflict_values(self) -> list[dict[str, Any]]:
        """``{"stored", "header", "objects"}`` per value pair, the commonest first."""
        return [
            {"stored": stored, "header": header, "objects": n}
            for (stored, header), n in self.modality_conflicts.most_common()
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "frames_indexed": self.frames_indexed,
            "skipped": self.skipped,
            "relabelled": self.relabelled,
            "labels_kept": self.labels_kept,
            "failed": len(self.failed),
            "quarantined": len(self.quarantined),
            "errors": [{"key": f.key, "reason": f.reason} for f in self.failed],
            "quarantined_items": [{"key": f.key, "reason": f.reason} for f in self.quarantined],
            "deleted": len(self.deleted),
            "deleted_items": list(self.deleted),
            "manifest_unmatched": self.manifest_unmatched,
            "manifest_unmatched_keys": list(self.manifest_unmatched_keys),
            "template_unmatched": self.template_unmatched,
            "template_unmatched_keys": list(self.template_unmatched_keys),
            "modality_conflicts": self.modality_conflict_count,
            "modality_conflict_values": self.modality_conflict_values(),
        }


def modality_conflicts_text(values: Iterable[Mapping[str, Any]]) -> str:
    """`BatchReport.modality_conflict_values` in words: "CHEST where the DICOM
    header says CT (12 objects)", joined."""
    return "; ".join(
        f"{v['stored']} where the DICOM header says {v['header']} ({v['objects']} objects)" for v in values
    )


@dataclass
class PipelineContext:
    """Everything a batch needs; built once per run (or once per worker process)."""

    source: Source
    index: VectorIndex
    targets: Sequence[Target]
    labeler: Labeler
    limits: DecodeLimits
    hash_key: bytes
    embed_batch_size: int = 32
    skip_unchanged: bool = True
    accept_burned_in: bool = False
    # Leave points that already exist untouched (a backfill never overwrites a concurrent ingest).
    insert_only: bool = False
    # Where the UIDs of indexed DICOM instances are kept, encrypted (None: not kept).
    reid: ReidTable | None = None


# Modalities whose images routinely carry burned-in patient text (PS3.15 E.3.1: "Ultrasound images
# routinely do"; XA/RF overlays), so an absent BurnedInAnnotation is treated as YES.
BURNED_IN_BY_DEFAULT: frozenset[str] = frozenset({"US", "XA", "RF", "SC", "OT"})


def burned_in_reason(meta: dict[str, Any], labels: dict[str, Any]) -> str | None:
    """Why a decoded DICOM object is quarantined for burned-in annotation, or None to index it.

    ``BurnedInAnnotation = YES`` always; absent for US, XA, RF, secondary captures (and modality
    SC/OT). PNG/JPEG carry no such tag and are not judged here.
    """
    if "burned_in_annotation" not in meta:
        return None
    flag = meta["burned_in_annotation"]
    if flag is True:
        return "BurnedInAnnotation is YES"
    if flag is None:
        modality = str(labels.get("modality") or "").upper()
        if meta.get("secondary_capture"):
            return "BurnedInAnnotation absent on a secondary capture"
        if modality in BURNED_IN_BY_DEFAULT:
            return f"BurnedInAnnotation absent for modality {modality} (routinely burned in)"
    return None


@dataclass
class _Loaded:
    ref: ObjectRef
    labels: dict[str, Any]
    meta: dict[str, Any]
    frame_indices: list[int]
    # target position → preprocessed frames [n_frames, *input_shape]
    tensors: dict[int, NDArray[np.float32]]
    # (modality stored, the DICOM header's Modality) where a label rule gave another modality
    modality_conflict: tuple[str, str] | None = None


@dataclass
class _Pending:
    refs: list[ObjectRef]
    futures: list[Future[_Loaded | FailedItem]]
    started: float
    skipped: int
    labels_kept: int
    # target position → key → the points stored for it before this batch
    stored: list[dict[str, list[StoredPoint]]]
    # key → the target positions whose points only need new labels
    relabel: dict[str, list[int]]
    # objects already stored under another source name (`_stored_elsewhere`)
    refused: list[FailedItem] = field(default_factory=list)


def _load(ctx: PipelineContext, ref: ObjectRef, positions: list[int]) -> _Loaded | FailedItem:
    """Fetch, decode, label and preprocess one object (runs in a worker thread); ``positions``
    empty: no preprocessing (a relabel)."""
    from ingest.readers.dispatch import decode_object  # pydicom and Pillow load with the first object

    try:
        with INGEST_STAGE_SECONDS.labels("fetch").time():
            data, metadata = ctx.source.fetch_with_metadata(ref.key)
        with INGEST_STAGE_SECONDS.labels("decode").time():
            decoded = decode_object(data, ref.key, limits=ctx.limits, hash_key=ctx.hash_key)
    except BadInput as exc:
        return FailedItem(ref.key, exc.reason, vanished=isinstance(exc, ObjectNotFound))
    if not ctx.accept_burned_in:
        reason = burned_in_reason(decoded.meta, decoded.labels)
        if reason is not None:
            return FailedItem(ref.key, reason, quarantined=True)
    instance_hash = decoded.meta.get("instance_hash")
    if ctx.reid is not None and isinstance(instance_hash, str):
        uids = read_uids(data)
        if uids is not None:
            ctx.reid.record(instance_hash, uids)
    labels = ctx.labeler.labels(
        ref.key, dicom_tags=decoded.labels, object_metadata={**ref.metadata, **metadata}
    )
    tensors: dict[int, NDArray[np.float32]] = {}
    by_fingerprint: dict[str, NDArray[np.float32]] = {}
    for pos in positions:
        encoder = ctx.targets[pos].encoder
        fingerprint = encoder.spec.fingerprint
        if fingerprint not in by_fingerprint:
            by_fingerprint[fingerprint] = np.stack([encoder.preprocess(f) for f in decoded.frames])
        tensors[pos] = by_fingerprint[fingerprint]
    header = decoded.labels.get("modality")
    conflict = (labels["modality"], header) if header and labels.get("modality") != header else None
    return _Loaded(ref, labels, decoded.meta, decoded.frame_indices, tensors, conflict)


# Keys per filtered look-up (the filter's limit on any-of values).
_KEYS_PER_LOOKUP = 1000


def _source_values(ctx: PipelineContext, target: Target) -> list[str]:
    """The payload ``source`` values this source's points may carry in ``target``: its name, and
    in a v1 collection also the URI its points were written with before sources had names."""
    values = [ctx.source.name]
    if target.id_scheme == "v1" and ctx.source.uri != ctx.source.name:
        values.append(ctx.source.uri)
    return values


def _points_by_key(
    ctx: PipelineContext, collection: str, sources: list[str], keys: Sequence[str]
) -> Iterator[StoredPoint]:
    """The points ``collection`` stores for any of ``keys`` under any of ``sources`` (payload
    ``source`` and ``key``): one filtered scroll per 1,000 keys."""
    for start in range(0, len(keys), _KEYS_PER_LOOKUP):
        search_filter = SearchFilter(source=sources, key=list(keys[start : start + _KEYS_PER_LOOKUP]))
        yield from ctx.index.scroll(collection, filter=search_filter, batch_size=10_000)


def _stored(ctx: PipelineContext, refs: Sequence[ObjectRef]) -> list[dict[str, list[StoredPoint]]]:
    """Per target, the points already stored for each key of the batch: one filtered scroll per
    collection (per 1,000 keys), whatever the ids (they cannot be known before decoding)."""
    keys = list(dict.fromkeys(ref.key for ref in refs))
    out: list[dict[str, list[StoredPoint]]] = []
    for target in ctx.targets:
        found: dict[str, list[StoredPoint]] = {}
        for point in _points_by_key(ctx, target.collection, _source_values(ctx, target), keys):
            key = point.payload.get("key")
            if isinstance(key, str):
                found.setdefault(key, []).append(point)
        out.append(found)
    return out


def _plan(
    ctx: PipelineContext, refs: Sequence[ObjectRef], stored: list[dict[str, list[StoredPoint]]]
) -> tuple[dict[str, list[int]], dict[str, list[int]], set[str]]:
    """Per key, the target positions to embed and those to relabel only; and the keys whose
    labels from earlier rules stay because this run's rules say nothing about them."""
    wanted: dict[str, list[int]] = {ref.key: [] for ref in refs}
    relabel: dict[str, list[int]] = {ref.key: [] for ref in refs}
    kept: set[str] = set()
    for ref in refs:
        rules = labels_hash(ctx.labeler.rule_labels(ref.key))
        silent = not ctx.labeler.has_rules_for(ref.key)
        for pos in range(len(ctx.targets)):
            points = stored[pos].get(ref.key, [])
            if not ctx.skip_unchanged or not points:
                wanted[ref.key].append(pos)
                continue
            payload = points[0].payload
            if payload.get("etag") != ref.etag or payload.get("size") != ref.size:
                wanted[ref.key].append(pos)
            elif ctx.insert_only:
                continue
            elif any(p.payload.get("source") != ctx.source.name for p in points):
                relabel[ref.key].append(pos)
            elif any(p.payload.get("labels_hash") != rules for p in points):
                if silent:  # a run without the manifest would strip what earlier rules said
                    kept.add(ref.key)
                else:
                    relabel[ref.key].append(pos)
    return wanted, relabel, kept


def _stored_elsewhere(
    ctx: PipelineContext, refs: Sequence[ObjectRef], stored: list[dict[str, list[StoredPoint]]]
) -> dict[str, FailedItem]:
    """The batch's files that a target holds under another source name (`Target.overlaps`) and
    not under this one: storing them under this name too would make a second copy of each. A
    DICOM frame is one image under any name (its id comes from its SOP Instance UID): never here."""
    refused: dict[str, FailedItem] = {}
    for pos, target in enumerate(ctx.targets):
        for overlap in target.overlaps:
            theirs: dict[str, str] = {}  # their key → this run's key
            for ref in refs:
                their_key = overlap.their_key(ref.key)
                if their_key is not None and ref.key not in refused and not stored[pos].get(ref.key):
                    theirs[their_key] = ref.key
            for point in _points_by_key(ctx, target.collection, [overlap.name], list(theirs)):
                key = theirs.get(str(point.payload.get("key")))
                if key is not None and not point.payload.get("instance_hash"):
                    refused[key] = FailedItem(key, _stored_elsewhere_reason(target.collection, overlap))
    return refused


def _stored_elsewhere_reason(collection: str, overlap: Overlap) -> str:
    how = (
        f"give this run the source name {overlap.name!r} (--source-name, or a job's source_name)"
        if overlap.same_keys
        else f"ingest it through the folder source {overlap.name!r} was ingested from"
    )
    return (
        f"already stored in {collection!r} under source {overlap.name!r}: a PNG or JPEG is identified by "
        f"its source's name and key, so it would be stored twice; {how}"
    )


def _submit(ctx: PipelineContext, refs: list[ObjectRef], pool: ThreadPoolExecutor) -> _Pending:
    started = time.perf_counter()
    stored = _stored(ctx, refs)
    refused = _stored_elsewhere(ctx, refs, stored)
    refs_to_plan = [ref for ref in refs if ref.key not in refused]
    wanted, relabel, kept = _plan(ctx, refs_to_plan, stored)
    futures = [
        pool.submit(_load, ctx, ref, wanted[ref.key])
        for ref in refs_to_plan
        if wanted[ref.key] or relabel[ref.key]
    ]
    skipped = [ref.key for ref in refs_to_plan if not wanted[ref.key] and not relabel[ref.key]]
    labels_kept = sum(1 for key in skipped if key in kept)
    relabel_only = {k: v for k, v in relabel.items() if v}
    return _Pending(
        refs, futures, started, len(skipped), labels_kept, stored, relabel_only, list(refused.values())
    )


def _rule_labelled(stored: Sequence[StoredPoint]) -> bool:
    """Whether label rules gave the stored points of an object labels (their ``labels_hash``,
    which the owner's bookkeeping answers to workers carry too)."""
    return any(point.payload.get("labels_hash") not in (None, NO_RULES_HASH) for point in stored)


def _frame_id(ctx: PipelineContext, target: Target, item: _Loaded, frame: int) -> str:
    if target.id_scheme == "v1":
        return point_id(ctx.source.uri, item.ref.key, frame)
    instance = item.meta.get("instance_hash")
    return image_point_id(
        frame,
        instance_hash=instance if isinstance(instance, str) else None,
        source_name=ctx.source.name,
        key=item.ref.key,
    )


def _relabel(ctx: PipelineContext, pending: _Pending, loaded: list[_Loaded], report: BatchReport) -> None:
    """Rewrite the payload of the stored points of unchanged objects whose labels changed: one
    call per collection, vectors untouched."""
    relabelled: set[str] = set()
    for pos, target in enumerate(ctx.targets):
        updates: dict[str, dict[str, Any]] = {}
        labels_from: dict[str, str] = {}
        for item in loaded:
            if pos not in pending.relabel.get(item.ref.key, []):
                continue
            silent = not ctx.labeler.has_rules_for(item.ref.key)
            for point in pending.stored[pos].get(item.ref.key, []):
                frame = int(point.payload.get("frame") or 0)
                updates[point.id] = _payload(ctx, target, item, frame)
                if silent:  # keeps what earlier rules gave it
                    labels_from[point.id] = point.id
            relabelled.add(item.ref.key)
        if updates:
            ctx.index.overwrite_payloads(target.collection, updates, labels_from=labels_from or None)
    report.relabelled += len(relabelled)


def _finish(ctx: PipelineContext, pending: _Pending) -> BatchReport:
    report = BatchReport(
        objects=len(pending.refs),
        skipped=pending.skipped,
        labels_kept=pending.labels_kept,
        failed=list(pending.refused),
    )
    loaded: list[_Loaded] = []
    for future in pending.futures:
        result = future.result()
        if isinstance(result, FailedItem):
            (report.quarantined if result.quarantined else report.failed).append(result)
        else:
            loaded.append(result)
            if result.modality_conflict is not None:
                report.modality_conflicts[result.modality_conflict] += 1
    if report.quarantined:
        # Quarantine holds for what is stored, too: an object indexed before it was flagged
        # (re-sent with BurnedInAnnotation=YES) loses its points.
        quarantined = [item.key for item in report.quarantined]
        for target in ctx.targets:
            delete_keys(ctx.index, target.collection, ctx.source, quarantined)
    _relabel(ctx, pending, loaded, report)
    bad_keys: set[str] = set()
    labels_carried: set[str] = set()
    for pos, target in enumerate(ctx.targets):
        items = [item for item in loaded if pos in item.tensors]
        if not items:
            continue
        batch = np.concatenate([item.tensors[pos] for item in items])
        with INGEST_STAGE_SECONDS.labels("embed").time():
            vectors = np.concatenate(
                [
                    target.encoder.embed_batch(batch[i : i + ctx.embed_batch_size])
                    for i in range(0, len(batch), ctx.embed_batch_size)
                ]
            )
        # id → (row, payload): one file holding the same instance as another of the batch (another
        # transfer syntax) writes the same ids, the last one's payload wins.
        points: dict[str, tuple[int, dict[str, Any]]] = {}
        labels_from: dict[str, str] = {}
        stale: set[str] = set()
        row = 0
        for item in items:
            written: set[str] = set()
            stored = pending.stored[pos].get(item.ref.key, [])
            # Rules that say nothing about an object leave the labels earlier rules gave it: its
            # points take them from a stored point of its key, or, where none is stored under it,
            # from themselves, which only a DICOM frame can be (stored under another source name:
            # its id comes from its instance); the store checks each is there.
            silent = not ctx.labeler.has_rules_for(item.ref.key)
            same_ids_elsewhere = target.id_scheme != "v1" and isinstance(item.meta.get("instance_hash"), str)
            if silent and _rule_labelled(stored):
                labels_carried.add(item.ref.key)
            for frame in item.frame_indices:
                vec = vectors[row]
                pid = _frame_id(ctx, target, item, frame)
                written.add(pid)
                if not np.isfinite(vec).all() or float(np.linalg.norm(vec)) < 1e-6:
                    bad_keys.add(item.ref.key)
                else:
                    points[pid] = (row, _payload(ctx, target, item, frame))
                    if silent and (stored or same_ids_elsewhere):
                        labels_from[pid] = stored[0].id if stored else pid
                row += 1
            stale.update(p.id for p in stored if p.id not in written)
        if points:
            ids = list(points)
            rows = [points[pid][0] for pid in ids]
            payloads = [points[pid][1] for pid in ids]
            with INGEST_STAGE_SECONDS.labels("upsert").time():
                ctx.index.upsert(
                    target.collection,
                    ids,
                    vectors[rows],
                    payloads,
                    insert_only=ctx.insert_only,
                    labels_from=labels_from or None,
                )
        stale.difference_update(points)
        if stale and not ctx.insert_only:
            # The object's frames that no longer exist (fewer frames, another sampling, another
            # instance under the same key): gone in the same step as the new ones are written.
            ctx.index.delete(target.collection, sorted(stale))
        report.frames_indexed += len(points)
        INGEST_IMAGES.labels(target.collection).inc(len(points))
    for key in sorted(bad_keys):
        report.failed.append(FailedItem(key, "encoder produced an invalid (NaN or zero) vector"))
    report.labels_kept += len(labels_carried - bad_keys)
    report.seconds = time.perf_counter() - pending.started
    _count_outcomes(report)
    return report


def _count_outcomes(report: BatchReport) -> None:
    failed, quarantined = len(report.failed), len(report.quarantined)
    indexed = report.objects - report.skipped - report.relabelled - failed - quarantined
    for outcome, count in (
        ("indexed", indexed),
        ("skipped", report.skipped),
        ("relabelled", report.relabelled),
        ("failed", failed),
        ("quarantined", quarantined),
    ):
        if count > 0:
            INGEST_OBJECTS.labels(outcome).inc(count)


def _payload(ctx: PipelineContext, target: Target, item: _Loaded, frame: int) -> dict[str, Any]:
    return build_payload(
        {
            **item.labels,
            **item.meta,
            "source": ctx.source.name,
            "key": item.ref.key,
            "frame": frame,
            "frames_sampled": len(item.frame_indices),
            "etag": item.ref.etag,
            "size": item.ref.size,
            "encoder": target.encoder_label,
            "labels_hash": labels_hash(ctx.labeler.rule_labels(item.ref.key)),
        }
    )


def process_batch(ctx: PipelineContext, refs: Sequence[ObjectRef], pool: ThreadPoolExecutor) -> BatchReport:
    """Run one batch of objects through the whole pipeline; returns its report."""
    return _finish(ctx, _submit(ctx, list(refs), pool))


def run_pipeline(
    ctx: PipelineContext,
    batches: Iterable[Sequence[ObjectRef]],
    pool: ThreadPoolExecutor,
    *,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> BatchReport:
    """Stream batches; batch i+1 is fetched and decoded while batch i is embedded and upserted."""
    total = BatchReport()
    pending: _Pending | None = None

    def finish(done_pending: _Pending) -> None:
        done = _finish(ctx, done_pending)
        total.merge(done)
        if on_batch:
            on_batch(done)

    for refs in batches:
        upcoming = _submit(ctx, list(refs), pool)
        if pending is not None:
            finish(pending)
        pending = upcoming
    if pending is not None:
        finish(pending)
    return total
