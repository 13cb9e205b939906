"""Instances pushed to radsearch (STOW-RS) through the same pipeline as every source.

Each received instance is keyed by its SOP Instance UID, like an instance pulled over DICOMweb,
so a push and a pull of the same instance write the same point ids (from the SOP Instance UID)
and each instance has exactly one point set whichever way it came in.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pydicom
from pydicom.errors import InvalidDicomError

from core.catalog import Catalog
from core.config import Settings
from core.errors import BadInput
from ingest.inline import IngestOptions, build_context
from ingest.pipeline import BatchReport, process_batch
from ingest.sources.base import ObjectRef, Source, check_source_name

__all__ = ["Received", "ReceivedSource", "ingest_received", "read_identity"]

#: The source name of pushed instances when no PACS is configured (``dicomweb.url``).
STOW_SOURCE_NAME = "dicomweb-stow"


@dataclass(frozen=True)
class Received:
    """One pushed instance: its SOP Class and Instance UIDs (None when unreadable) and bytes."""

    sop_class: str | None
    sop_instance: str | None
    data: bytes


def read_identity(data: bytes) -> Received:
    """The SOP Class/Instance UIDs of a Part 10 file, read from its header only."""
    try:
        ds = pydicom.dcmread(
            io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"]
        )
        sop_class = str(ds.get("SOPClassUID", "") or "") or None
        sop_instance = str(ds.get("SOPInstanceUID", "") or "") or None
    except (InvalidDicomError, ValueError, TypeError, EOFError, OSError, AttributeError, KeyError):
        return Received(None, None, data)
    return Received(sop_class, sop_instance, data)


class ReceivedSource(Source):
    """Instances held in memory for one request, keyed by SOP Instance UID."""

    def __init__(self, items: Sequence[Received], *, name: str, uri: str) -> None:
        self.name = check_source_name(name)
        self.uri = uri
        self._items = {item.sop_instance: item.data for item in items if item.sop_instance}

    def _ref(self, key: str, data: bytes) -> ObjectRef:
        digest = hashlib.sha256(data).hexdigest()[:16]
        return ObjectRef(key=key, etag=f"{key}-{digest}", size=len(data))

    def list(self) -> Iterator[ObjectRef]:
        for key, data in self._items.items():
            yield self._ref(key, data)

    def stat(self, key: str) -> ObjectRef:
        if key not in self._items:
            raise BadInput(key, "object not found")
        return self._ref(key, self._items[key])

    def fetch(self, key: str) -> bytes:
        if key not in self._items:
            raise BadInput(key, "object not found")
        return self._items[key]


def received_source_identity(settings: Settings) -> tuple[str, str]:
    """(name, uri) pushed instances are recorded under: those of the configured PACS (so its
    objects can be read again by WADO-RS, for thumbnails), else ``dicomweb-stow``."""
    if settings.dicomweb.url:
        from ingest.sources.dicomweb import DicomwebSource

        source = DicomwebSource(
            settings.dicomweb.url, settings.dicomweb, max_object_bytes=settings.ingest.max_object_bytes
        )
        try:
            return source.name, source.uri
        finally:
            source.close()
    return STOW_SOURCE_NAME, f"stow:{STOW_SOURCE_NAME}"


def ingest_received(
    catalog: Catalog, settings: Settings, collection: str, items: Sequence[Received]
) -> BatchReport:
    """Index pushed instances into ``collection`` (which must exist); the report's failed and
    quarantined items are keyed by SOP Instance UID."""
    name, uri = received_source_identity(settings)
    source = ReceivedSource(items, name=name, uri=uri)
    ctx = build_context(source, catalog, [collection], IngestOptions(), settings)
    refs = list(source.list())
    report = BatchReport()
    if not refs:
        return report
    with ThreadPoolExecutor(max_workers=settings.ingest.decode_workers, thread_name_prefix="stow") as pool:
        for start in range(0, len(refs), settings.ingest.batch_size):
            report.merge(process_batch(ctx, refs[start : start + settings.ingest.batch_size], pool))
    if report.frames_indexed:
        ctx.index.optimize(collection)
    return report
