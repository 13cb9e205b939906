"""Instances pushed to radsearch (STOW-RS) through the same pipeline as every source.

Each received instance gets the object key it has when pulled over DICOMweb (`InstanceKeys`), and
point ids derive from the SOP Instance UID, so a push and a pull of the same instance write the
same points: each instance has exactly one point set whichever way it came in.
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
from core.errors import BadInput, ObjectNotFound
from ingest.inline import IngestOptions, build_context
from ingest.pipeline import BatchReport, process_batch
from ingest.sources.base import ObjectRef, Source, check_source_name
from ingest.sources.dicomweb import InstanceKeys

__all__ = ["Received", "ReceivedSource", "ingest_received", "read_identity"]

#: The source name of pushed instances when no PACS is configured (``dicomweb.url``).
STOW_SOURCE_NAME = "dicomweb-stow"


@dataclass(frozen=True)
class Received:
    """One pushed instance: its UIDs (None when unreadable) and bytes."""

    sop_class: str | None
    sop_instance: str | None
    data: bytes
    study: str | None = None
    series: str | None = None


_IDENTITY_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]


def read_identity(data: bytes) -> Received:
    """The SOP Class/Instance, Study and Series UIDs of a Part 10 file, from its header only."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=_IDENTITY_TAGS)
        sop_class, sop, study, series = (str(ds.get(tag, "") or "").strip() or None for tag in _IDENTITY_TAGS)
    except (InvalidDicomError, ValueError, TypeError, EOFError, OSError, AttributeError, KeyError):
        return Received(None, None, data)
    if not (study and series):
        return Received(sop_class, None, data)
    return Received(sop_class, sop, data, study, series)


def received_key(keys: InstanceKeys, item: Received) -> str | None:
    """The object key of a pushed instance: the same as when pulled over DICOMweb."""
    if not (item.study and item.series and item.sop_instance):
        return None
    try:
        return keys.encode(item.study, item.series, item.sop_instance)
    except BadInput:
        return None


class ReceivedSource(Source):
    """Instances held in memory for one request, by object key."""

    def __init__(self, items: dict[str, bytes], *, name: str, uri: str) -> None:
        self.name = check_source_name(name)
        self.uri = uri
        self._items = items

    def _ref(self, key: str, data: bytes) -> ObjectRef:
        return ObjectRef(key=key, etag=hashlib.sha256(data).hexdigest()[:32], size=len(data))

    def list(self) -> Iterator[ObjectRef]:
        for key, data in self._items.items():
            yield self._ref(key, data)

    def stat(self, key: str) -> ObjectRef:
        if key not in self._items:
            raise ObjectNotFound(key)
        return self._ref(key, self._items[key])

    def fetch(self, key: str) -> bytes:
        if key not in self._items:
            raise ObjectNotFound(key)
        return self._items[key]


def received_source_identity(settings: Settings) -> tuple[str, str]:
    """(name, uri) pushed instances are recorded under: those of the configured PACS (so its
    objects can be read again by WADO-RS, for thumbnails), else ``dicomweb-stow``."""
    if settings.dicomweb.url:
        from ingest.sources.factory import open_dicomweb

        source = open_dicomweb(settings.dicomweb.url, settings)
        try:
            return source.name, source.uri
        finally:
            source.close()
    return STOW_SOURCE_NAME, f"stow:{STOW_SOURCE_NAME}"


def ingest_received(
    catalog: Catalog, settings: Settings, collection: str, items: Sequence[Received]
) -> tuple[BatchReport, list[str | None]]:
    """Index pushed instances into ``collection`` (which must exist): the report, and each
    item's object key (None for an item without readable UIDs, which is not indexed)."""
    name, uri = received_source_identity(settings)
    keys = [received_key(InstanceKeys(settings.hash_key_bytes()), item) for item in items]
    source = ReceivedSource(
        {key: item.data for key, item in zip(keys, items, strict=True) if key is not None}, name=name, uri=uri
    )
    ctx = build_context(source, catalog, [collection], IngestOptions(), settings)
    refs = list(source.list())
    report = BatchReport()
    if not refs:
        return report, keys
    with ThreadPoolExecutor(max_workers=settings.ingest.decode_workers, thread_name_prefix="stow") as pool:
        for start in range(0, len(refs), settings.ingest.batch_size):
            report.merge(process_batch(ctx, refs[start : start + settings.ingest.batch_size], pool))
    if report.frames_indexed:
        ctx.index.optimize(collection)
    return report, keys
