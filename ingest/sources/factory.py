"""Open a `Source` from a URI."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import DICOMWEB_SCHEMES, Settings
from core.errors import ConfigError
from core.s3 import S3Location, parse_s3_uri
from ingest.labels import read_manifest
from ingest.sources.base import Source

if TYPE_CHECKING:
    from ingest.sources.dicomweb import DicomwebSource

__all__ = ["check_folder_uri", "load_manifest_ref", "manifest_keys", "open_dicomweb", "open_source"]


def open_dicomweb(uri: str, settings: Settings, *, name: str | None = None) -> DicomwebSource:
    """A DICOMweb server (``dicomweb+http(s)://HOST/PREFIX?...``), with the settings' credentials
    and object size limit."""
    from ingest.sources.dicomweb import DicomwebSource

    return DicomwebSource(
        uri,
        settings.dicomweb,
        hash_key=settings.hash_key_bytes(),
        max_object_bytes=settings.ingest.max_object_bytes,
        name=name,
    )


def open_source(uri: str, settings: Settings, *, name: str | None = None) -> Source:
    """``s3://bucket/prefix`` (endpoint and credentials from settings), a DICOMweb server
    (``dicomweb+http(s)://HOST/PREFIX?study=&modality=&since=``, credentials from settings) or a
    local folder; ``name``
    overrides the source's stable name (`Source.name`)."""
    if uri.startswith("s3://"):
        from ingest.sources.s3 import S3Source

        location = parse_s3_uri(uri)
        return S3Source(
            location.bucket,
            location.key,
            settings.s3,
            max_object_bytes=settings.ingest.max_object_bytes,
            name=name,
        )
    if uri.startswith(DICOMWEB_SCHEMES):
        return open_dicomweb(uri, settings, name=name)
    check_folder_uri(uri)
    from ingest.sources.local import LocalSource

    path = Path(uri.removeprefix("file://"))
    return LocalSource(path, max_object_bytes=settings.ingest.max_object_bytes, name=name)


def check_folder_uri(uri: str) -> None:
    """`ConfigError` for a source that is neither an S3 or DICOMweb URI nor a folder path: a
    scheme missing a slash (``s3:/bucket``: "did you mean s3://bucket?"), or another scheme."""
    if re.match(r"^(s3|dicomweb\+https?):/?(?!/)", uri) and not Path(uri).exists():
        scheme, rest = uri.split(":", 1)
        raise ConfigError(
            f"source {uri[:80]!r} is no folder here; did you mean {scheme}://{rest.lstrip('/')}?"
        )
    if "://" in uri and not uri.startswith("file://"):
        scheme = uri.split("://", 1)[0][:20]  # the scheme alone: the rest may carry credentials
        raise ConfigError(
            f"unsupported source ({scheme}://...); use s3://bucket/prefix, dicomweb+http(s)://HOST/PREFIX "
            "or a local folder"
        )


def load_manifest_ref(ref: str | Path, settings: Settings) -> dict[str, dict[str, Any]]:
    """A manifest (key → labels) from a local file or an ``s3://bucket/key`` object on the
    configured endpoint; `ConfigError` naming the manifest by its file name."""

    def fetch(location: S3Location) -> bytes:
        source = open_source(f"s3://{location.bucket}", settings)
        try:
            return source.fetch(location.key)
        finally:
            source.close()

    return read_manifest(str(ref), fetch)


def manifest_keys(source: Source, manifest: str | Path | None) -> frozenset[str]:
    """A manifest kept among the objects being ingested (a file in the local folder, an object
    of the bucket) is not an image: its key, to leave out of the listing; empty otherwise."""
    if manifest is None:
        return frozenset()
    from ingest.sources.local import LocalSource
    from ingest.sources.s3 import S3Source

    ref = str(manifest)
    if isinstance(source, S3Source):
        if not ref.startswith("s3://"):
            return frozenset()
        location = parse_s3_uri(ref)
        listed = location.bucket == source.bucket and location.key.startswith(source.prefix)
        return frozenset({location.key}) if listed else frozenset()
    if isinstance(source, LocalSource) and "://" not in ref:
        resolved = Path(ref).expanduser().resolve()
        if resolved.is_relative_to(source.root):
            return frozenset({resolved.relative_to(source.root).as_posix()})
    return frozenset()
