"""Wiring shared by the command line and the demo: open the store, ingest, search by an image
file (through the API's own query functions, so both modes answer alike)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from core.config import Settings
from core.errors import ConfigError, DecodeError, RadsearchError, TooLarge

if TYPE_CHECKING:
    from core.catalog import Catalog, CollectionEntry
    from core.index import Hit
    from core.index.base import HitGroup
    from ingest.inline import IngestOptions
    from ingest.pipeline import BatchReport
    from search_api.results import Found

__all__ = [
    "check_limit",
    "diff_source_inline",
    "ensure_collection",
    "hit_rows",
    "ingest_source",
    "open_catalog",
    "open_query_image",
    "read_query_image",
    "search_image",
    "search_warnings",
    "serve_api",
]


@contextmanager
def open_catalog(settings: Settings, *, owner: str = "cli") -> Iterator[Catalog]:
    """The catalog over the configured store, owned by this process as ``owner`` until exit
    (`StoreOwned` names the process that owns it instead)."""
    from core.catalog import Catalog
    from core.index import open_index

    index = open_index(settings, owner=owner)
    try:
        catalog = Catalog(index, settings)
        if index.supports_files:  # this process owns the store now: what expired in the trash goes
            catalog.trash.purge()
        yield catalog
    finally:
        index.close()


def ensure_collection(
    catalog: Catalog, name: str, encoder: str | None, *, weights: str | None = None
) -> CollectionEntry:
    """The collection, created with ``encoder`` (default ``baseline``) if it does not exist yet
    (`Catalog.ensure`, as the owner's ingest jobs do).

    An existing collection keeps its encoder: asking for another one is a `ConfigError`.
    """
    return catalog.ensure(name, encoder, weights=weights)


def ingest_source(
    catalog: Catalog,
    settings: Settings,
    source_uri: str,
    collections: list[str],
    options: IngestOptions,
    *,
    progress: bool = True,
) -> BatchReport:
    """Ingest a source into existing collections with the inline executor (``options.prune``:
    and delete the points of objects gone from it)."""
    from ingest.inline import build_context, ingest_inline
    from ingest.sources import manifest_keys, open_source

    source = open_source(source_uri, settings, name=options.source_name)
    try:
        ctx = build_context(source, catalog, collections, options, settings)
        exclude = manifest_keys(source, options.manifest)
        return ingest_inline(ctx, settings, progress=progress, exclude_keys=exclude, options=options)
    finally:
        source.close()


def diff_source_inline(
    catalog: Catalog, settings: Settings, source_uri: str, collections: list[str], options: IngestOptions
) -> list[dict[str, Any]]:
    """``ingest --dry-run``: what an ingest (``options.prune``: with its deletions) would change in
    each collection, as `SourceDiff.to_dict`; nothing is written (a collection that does not exist
    yet would get every object)."""
    from core.errors import CollectionNotFound
    from ingest.prune import SourceDiff, diff_source, guard_message, source_diffs
    from ingest.sources import manifest_keys, open_source

    source = open_source(source_uri, settings)
    try:
        exclude = manifest_keys(source, options.manifest)
        listing = {ref.key: ref for ref in source.list() if ref.key not in exclude}
        diffs: list[SourceDiff] = []
        for name in collections:
            try:
                resolved = catalog.resolve(name)
            except CollectionNotFound:
                diffs.append(diff_source(name, listing, {}))
                continue
            diffs += source_diffs(
                catalog.index,
                [resolved],
                source,
                listing,
                max_frames=settings.ingest.max_frames_per_object,
                prune=options.prune,
            )
        refusal = guard_message(diffs, max_fraction=options.max_delete_fraction, force=options.force)
        return [{**d.to_dict(), "would_refuse": refusal} for d in diffs]
    finally:
        source.close()


def open_query_image(path: Path) -> BinaryIO:
    """The image file to search by, open for reading; `ConfigError` when it cannot be opened."""
    try:
        return path.open("rb")
    except OSError as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc.strerror or type(exc).__name__}") from None


def read_query_image(path: Path, settings: Settings) -> tuple[str, bytes]:
    """The safe name and bytes of an image file to search by, under the API's upload limits
    and in its words (`TooLarge`, `DecodeError` when empty), as the API reads an upload."""
    from search_api.uploads import upload_name

    name = upload_name(path.name)
    limit = settings.api.max_upload_bytes
    with open_query_image(path) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(name, f"upload is larger than {limit} bytes")
    if not data:
        raise DecodeError(name, "empty upload")
    return name, data


def check_limit(limit: int, settings: Settings) -> None:
    """`ConfigError` for a number of hits the API would refuse."""
    if not 1 <= limit <= settings.api.max_limit:
        raise ConfigError(f"-k (--limit) must be between 1 and {settings.api.max_limit}")


def search_image(
    catalog: Catalog,
    settings: Settings,
    collection: str,
    *,
    data: bytes,
    filename: str,
    filter: Mapping[str, Sequence[str]] | None = None,
    limit: int = 10,
    exclude: Mapping[str, bool] | None = None,
    roi: Mapping[str, int] | None = None,
    group_by: str | None = None,
    group_size: int = 3,
) -> Found:
    """Search a collection (or alias) by an image's middle frame, cropped to ``roi``, with the
    API's own query path (`search_api.results`): what ``POST /v1/collections/{name}/search/image``
    answers for one uploaded file. ``exclude`` (``same_patient``, ``same_study``) leaves out the
    image's own patient or study, ``group_by`` (object, series, study) groups the hits."""
    from search_api import results, services
    from search_api.schemas import ExcludeIn, Roi, parse_filter

    entry: CollectionEntry = catalog.get(collection)
    search_filter = parse_filter(dict(filter)) if filter else None
    image = results.read_upload_image(settings=settings, data=data, filename=filename)
    frame = results.crop(image.frame, Roi(**roi), filename) if roi is not None else image.frame
    vector = services.embed_frame(catalog=catalog, entry=entry, frame=frame)
    narrowed = results.apply_exclusions(
        search_filter,
        ExcludeIn(**exclude) if exclude else None,
        patients=[image.patient_hash],
        studies=[image.study_hash],
        source="upload",
    )
    shape = results.Shape(limit=limit, group_by=group_by, group_size=group_size)
    return results.find(index=catalog.index, entry=entry, vector=vector, search_filter=narrowed, shape=shape)


def search_text(
    catalog: Catalog,
    collection: str,
    *,
    text: str,
    filter: Mapping[str, Sequence[str]] | None = None,
    limit: int = 10,
    group_by: str | None = None,
    group_size: int = 3,
) -> Found:
    """Search a collection (or alias) by a text, with the API's own query path: what ``POST
    /v1/collections/{name}/search`` answers for ``{"text": ...}``; `NoTextTower` where the
    collection's encoder has none."""
    from search_api import results, services
    from search_api.schemas import parse_filter

    entry: CollectionEntry = catalog.get(collection)
    search_filter = parse_filter(dict(filter)) if filter else None
    vector = services.embed_text(catalog=catalog, entry=entry, text=text)
    shape = results.Shape(limit=limit, group_by=group_by, group_size=group_size)
    return results.find(
        index=catalog.index, entry=entry, vector=vector, search_filter=search_filter, shape=shape
    )


def search_warnings(
    catalog: Catalog, collection: str, filter: Mapping[str, Sequence[str]] | None, found: Found
) -> list[dict[str, Any]]:
    """The ``warnings`` of the API's search response for ``found``: a ``{"field", "value",
    "message", "suggestions"}`` per filter value no point of the collection holds, and for a
    ``group_by`` no hit could be grouped by."""
    from core.filter_warnings import StoredValues
    from search_api import services
    from search_api.schemas import parse_filter

    warnings = services.search_warnings(
        index=catalog.index,
        entry=catalog.get(collection),
        search_filter=parse_filter(dict(filter)) if filter else None,
        stored=StoredValues(),
        ungroupable=found.ungroupable,
    )
    return [warning.model_dump() for warning in warnings]


def hit_rows(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """Hits as the API returns them: ``{"id", "score", "payload"}``."""
    return [{"id": hit.id, "score": hit.score, "payload": hit.payload} for hit in hits]


def group_rows(groups: Sequence[HitGroup] | None) -> list[dict[str, Any]] | None:
    """Hit groups as the API returns them: ``{"key", "hits": [hit_rows]}``; None without groups."""
    return None if groups is None else [{"key": g.key, "hits": hit_rows(g.hits)} for g in groups]


def serve_api(
    settings: Settings, host: str, port: int, *, kind: str = "serve", log_level: str = "info"
) -> None:
    """Run the HTTP API until stopped, as the owner of the embedded store (``kind``) that
    advertises its URL: other radsearch processes on this data dir then go through it. A port
    that cannot be listened on is a `ConfigError` before the URL is advertised, so that another
    server's URL is never advertised as this owner's. A start that fails (the store, the job
    store) raises what failed, for the exit code it stands for."""
    import uvicorn

    from core.ownership import acquire_store
    from search_api.app import create_app
    from search_api.http_protocol import CoalescingHttpToolsProtocol

    with ExitStack() as owned:
        # A Qdrant server has no owner to be.
        lease = (
            owned.enter_context(acquire_store(settings.index_dir, kind))
            if settings.store.backend == "edge"
            else None
        )
        _check_port(host, port)
        if lease is not None:
            lease.advertise(f"http://{_url_host(host)}:{port}")
        # No log config of uvicorn's own (log_config=None): its loggers, the access log's line per
        # request among them, go through the root handler, in the format chosen, with the time
        # and the request id.
        app = create_app(settings)
        uvicorn_log = logging.getLogger("uvicorn.error")
        quiet_expected = _ExpectedStartFailure(app)
        uvicorn_log.addFilter(quiet_expected)
        owned.callback(uvicorn_log.removeFilter, quiet_expected)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level=log_level,
                access_log=settings.api.access_log,
                log_config=None,
                http=CoalescingHttpToolsProtocol,
            )
        )
        try:
            server.run()
        except KeyboardInterrupt:
            pass
        except SystemExit:  # uvicorn's own code for a failed start (3), that of "store owned"
            if server.started:
                raise
        if not server.started:
            failure = getattr(app.state, "startup_error", None)
            if isinstance(failure, RadsearchError):
                raise failure
            raise RadsearchError(f"the server did not start on {host}:{port} (the log above says why)")


class _ExpectedStartFailure(logging.Filter):
    """Drops uvicorn's traceback of a start that failed for a reason radsearch names in one line
    as it exits (a damaged store record, an unusable folder); a bug keeps its traceback."""

    def __init__(self, app: Any) -> None:
        super().__init__()
        self._app = app

    def filter(self, record: logging.LogRecord) -> bool:
        failure = getattr(self._app.state, "startup_error", None)
        return not (isinstance(failure, RadsearchError) and str(record.msg).startswith("Traceback"))


def _check_port(host: str, port: int) -> None:
    """`ConfigError` unless ``host``:``port`` can be bound now (uvicorn binds it again)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                "(another server on that port? choose another with --port)"
            ) from None


def _url_host(host: str) -> str:
    """A host clients on this machine can reach the server at (a wildcard bind is reached on
    loopback); IPv6 literals in brackets."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
