"""Wiring shared by the command line and the demo: open the store, ingest, search a file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.catalog import Catalog, CollectionEntry
from core.config import Settings
from core.encoders.registry import resolve_spec
from core.errors import CollectionNotFound, ConfigError
from core.index import Hit, open_index
from core.payload import SearchFilter
from ingest.inline import IngestOptions, build_context, ingest_inline
from ingest.pipeline import BatchReport
from ingest.readers import DecodeLimits, decode_object
from ingest.sources import Source, open_source
from ingest.sources.local import LocalSource

__all__ = ["ensure_collection", "ingest_source", "open_catalog", "search_file"]


@contextmanager
def open_catalog(settings: Settings) -> Iterator[Catalog]:
    """The catalog over the configured store, closed on exit."""
    index = open_index(settings)
    try:
        yield Catalog(index, settings)
    finally:
        index.close()


def ensure_collection(
    catalog: Catalog, name: str, encoder: str | None, *, weights: str | None = None
) -> CollectionEntry:
    """The collection, created with ``encoder`` (default ``baseline``) if it does not exist yet.

    An existing collection keeps its encoder: asking for another one is a `ConfigError`.
    """
    spec = resolve_spec(encoder or "baseline").with_weights(weights)
    try:
        entry = catalog.get(name)
    except CollectionNotFound:
        return catalog.create(name, spec)
    if encoder is not None and entry.encoder.name != spec.name:
        raise ConfigError(
            f"collection {name!r} was built with encoder {entry.encoder.name!r}, not {spec.name!r}; "
            "create a new collection for another encoder"
        )
    return entry


def ingest_source(
    catalog: Catalog,
    settings: Settings,
    source_uri: str,
    collections: list[str],
    options: IngestOptions,
    *,
    progress: bool = True,
) -> BatchReport:
    """Ingest a source into existing collections with the inline executor."""
    source = open_source(source_uri, settings)
    try:
        ctx = build_context(source, catalog, collections, options, settings)
        return ingest_inline(ctx, settings, progress=progress, exclude_keys=_manifest_key(source, options))
    finally:
        source.close()


def _manifest_key(source: Source, options: IngestOptions) -> frozenset[str]:
    """A manifest kept inside the local folder being ingested is not an image: leave it out."""
    if options.manifest is None or not isinstance(source, LocalSource):
        return frozenset()
    manifest = options.manifest.resolve()
    if manifest.is_relative_to(source.root):
        return frozenset({manifest.relative_to(source.root).as_posix()})
    return frozenset()


def search_file(
    catalog: Catalog,
    settings: Settings,
    path: Path,
    collection: str,
    *,
    filter: SearchFilter | None = None,
    limit: int = 10,
) -> list[Hit]:
    """Decode an image file (DICOM/PNG/JPEG), embed its middle frame, search the collection."""
    encoder = catalog.encoder_for(collection)
    decoded = decode_object(
        path.read_bytes(),
        path.name,
        limits=DecodeLimits.from_settings(settings.ingest),
        hash_key=settings.hash_key_bytes(),
    )
    frame = decoded.frames[len(decoded.frames) // 2]
    vector = encoder.embed([frame])[0]
    return catalog.index.search(collection, vector, filter=filter, limit=limit)
