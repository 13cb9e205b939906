"""The batch pipeline: fetch → decode → label → preprocess → embed → upsert.

One function (`process_batch`) used by both executors (inline and Celery); `run_pipeline` streams
batches through it with fetch/decode of the next batch overlapping the embedding of the current one.
Per-object failures (`BadInput`) are recorded and the batch goes on; `SourceError` (transient)
propagates so the caller can retry the batch, which is safe because point ids are deterministic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from core.encoders.base import Encoder
from core.errors import BadInput
from core.index.base import VectorIndex
from core.payload import build_payload, point_id
from ingest.labels import Labeler
from ingest.prune import delete_keys
from ingest.readers import DecodeLimits
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


@dataclass(frozen=True)
class FailedItem:
    """An object that was not indexed, with why (never a header value)."""

    key: str
    reason: str
    quarantined: bool = False


@dataclass
class BatchReport:
    """Counts of one batch or a whole run. ``frames_indexed`` is summed over target collections."""

    objects: int = 0
    frames_indexed: int = 0
    skipped: int = 0
    failed: list[FailedItem] = field(default_factory=list)
    quarantined: list[FailedItem] = field(default_factory=list)
    seconds: float = 0.0
    # Keys of objects gone from the source whose points a prune deleted.
    deleted: list[str] = field(default_factory=list)

    def merge(self, other: BatchReport) -> None:
        self.objects += other.objects
        self.frames_indexed += other.frames_indexed
        self.skipped += other.skipped
        self.failed.extend(other.failed)
        self.quarantined.extend(other.quarantined)
        self.seconds += other.seconds
        self.deleted.extend(other.deleted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "frames_indexed": self.frames_indexed,
            "skipped": self.skipped,
            "failed": len(self.failed),
            "quarantined": len(self.quarantined),
            "errors": [{"key": f.key, "reason": f.reason} for f in self.failed],
            "quarantined_items": [{"key": f.key, "reason": f.reason} for f in self.quarantined],
            "deleted": len(self.deleted),
            "deleted_items": list(self.deleted),
        }


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


@dataclass
class _Pending:
    refs: list[ObjectRef]
    futures: list[Future[_Loaded | FailedItem]]
    started: float
    skipped: int


def _load(ctx: PipelineContext, ref: ObjectRef, positions: list[int]) -> _Loaded | FailedItem:
    """Fetch, decode, label and preprocess one object (runs in a worker thread)."""
    from ingest.readers.dispatch import decode_object  # pydicom and Pillow load with the first object

    try:
        data, metadata = ctx.source.fetch_with_metadata(ref.key)
        decoded = decode_object(data, ref.key, limits=ctx.limits, hash_key=ctx.hash_key)
    except BadInput as exc:
        return FailedItem(ref.key, exc.reason)
    if not ctx.accept_burned_in:
        reason = burned_in_reason(decoded.meta, decoded.labels)
        if reason is not None:
            return FailedItem(ref.key, reason, quarantined=True)
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
    return _Loaded(ref, labels, decoded.meta, decoded.frame_indices, tensors)


def _unchanged(ctx: PipelineContext, refs: Sequence[ObjectRef]) -> dict[str, list[int]]:
    """Per key, the target positions whose collection lacks the object at this ETag."""
    if not ctx.skip_unchanged:
        return {ref.key: list(range(len(ctx.targets))) for ref in refs}
    wanted: dict[str, list[int]] = {ref.key: [] for ref in refs}
    ids = {point_id(ctx.source.uri, ref.key, 0): ref for ref in refs}
    for pos, target in enumerate(ctx.targets):
        stored = {p.id: p.payload for p in ctx.index.retrieve(target.collection, list(ids))}
        for pid, ref in ids.items():
            payload = stored.get(pid)
            if payload is None or payload.get("etag") != ref.etag or payload.get("size") != ref.size:
                wanted[ref.key].append(pos)
    return wanted


def _submit(ctx: PipelineContext, refs: list[ObjectRef], pool: ThreadPoolExecutor) -> _Pending:
    started = time.perf_counter()
    wanted = _unchanged(ctx, refs)
    futures = [pool.submit(_load, ctx, ref, wanted[ref.key]) for ref in refs if wanted[ref.key]]
    skipped = sum(1 for ref in refs if not wanted[ref.key])
    return _Pending(refs, futures, started, skipped)


def _finish(ctx: PipelineContext, pending: _Pending) -> BatchReport:
    report = BatchReport(objects=len(pending.refs), skipped=pending.skipped)
    loaded: list[_Loaded] = []
    for future in pending.futures:
        result = future.result()
        if isinstance(result, FailedItem):
            (report.quarantined if result.quarantined else report.failed).append(result)
        else:
            loaded.append(result)
    if report.quarantined:
        # Quarantine holds for what is stored, too: an object indexed before it was flagged
        # (re-sent with BurnedInAnnotation=YES) loses its points.
        quarantined = [item.key for item in report.quarantined]
        for target in ctx.targets:
            delete_keys(ctx.index, target.collection, ctx.source, quarantined)
    bad_keys: set[str] = set()
    for pos, target in enumerate(ctx.targets):
        items = [item for item in loaded if pos in item.tensors]
        if not items:
            continue
        batch = np.concatenate([item.tensors[pos] for item in items])
        vectors = np.concatenate(
            [
                target.encoder.embed_batch(batch[i : i + ctx.embed_batch_size])
                for i in range(0, len(batch), ctx.embed_batch_size)
            ]
        )
        ids: list[str] = []
        payloads: list[dict[str, Any]] = []
        keep: list[int] = []
        row = 0
        for item in items:
            for frame in item.frame_indices:
                vec = vectors[row]
                if not np.isfinite(vec).all() or float(np.linalg.norm(vec)) < 1e-6:
                    bad_keys.add(item.ref.key)
                else:
                    keep.append(row)
                    ids.append(point_id(ctx.source.uri, item.ref.key, frame))
                    payloads.append(_payload(ctx, target, item, frame))
                row += 1
        if ids:
            ctx.index.upsert(target.collection, ids, vectors[keep], payloads, insert_only=ctx.insert_only)
        report.frames_indexed += len(ids)
    for key in sorted(bad_keys):
        report.failed.append(FailedItem(key, "encoder produced an invalid (NaN or zero) vector"))
    report.seconds = time.perf_counter() - pending.started
    return report


def _payload(ctx: PipelineContext, target: Target, item: _Loaded, frame: int) -> dict[str, Any]:
    return build_payload(
        {
            **item.labels,
            **item.meta,
            "source": ctx.source.uri,
            "key": item.ref.key,
            "frame": frame,
            "frames_sampled": len(item.frame_indices),
            "etag": item.ref.etag,
            "size": item.ref.size,
            "encoder": target.encoder_label,
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
