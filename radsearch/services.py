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

__all__ = ["ensure_collection", "ingest_source", "open_catalog", "search_file", "serve_api"]


@contextmanager
def open_catalog(settings: Settings, *, owner: str = "cli") -> Iterator[Catalog]:
    """The catalog over the configured store, owned by this process as ``owner`` until exit
    (`StoreOwned` names the process that owns it instead)."""
    index = open_index(settings, owner=owner)
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


def serve_api(
    settings: Settings, host: str, port: int, *, kind: str = "serve", log_level: str = "info"
) -> None:
    """Run the HTTP API until stopped, as the owner of the embedded store (``kind``) that
    advertises its URL: other radsearch processes on this data dir then go through it."""
    import uvicorn

    from core.ownership import acquire_store
    from search_api.app import create_app

    if settings.store.backend != "edge":
        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)
        return
    with acquire_store(settings.index_dir, kind) as lease:
        lease.advertise(f"http://{_url_host(host)}:{port}")
        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)


def _url_host(host: str) -> str:
    """A host clients on this machine can reach the server at (a wildcard bind is reached on
    loopback); IPv6 literals in brackets."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
