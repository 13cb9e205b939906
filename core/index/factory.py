"""Pick the vector-index backend from settings."""

from __future__ import annotations

from core.config import Settings
from core.errors import ConfigError
from core.index.base import VectorIndex
from core.ownership import acquire_store

__all__ = ["open_index"]


def open_index(settings: Settings, *, child_process: bool = False, owner: str = "process") -> VectorIndex:
    """The embedded Qdrant Edge store under the data dir, or a Qdrant server by URL.

    The embedded store is first owned (`core.ownership.acquire_store`, as ``owner``: serve,
    ingest, ...) before any engine call, and `StoreOwned` names the process that owns it
    instead; closing the index gives ownership up. ``child_process`` runs the embedded store in
    a process of its own (`HostedEdgeIndex`), for a server whose Python should run beside the
    engine's searches rather than take turns with them; ignored for a Qdrant server."""
    if settings.store.backend == "edge":
        lease = acquire_store(settings.index_dir, owner)
        try:
            if child_process:
                from core.index.hosted import HostedEdgeIndex

                return HostedEdgeIndex(settings.index_dir, settings.store, lease=lease)
            from core.index.edge import EdgeIndex

            return EdgeIndex(settings.index_dir, settings.store, lease=lease)
        except BaseException:
            lease.close()
            raise
    if not settings.store.url:
        raise ConfigError("store backend 'qdrant' needs RADSEARCH_STORE__URL (e.g. http://qdrant:6333)")
    from qdrant_client import QdrantClient

    from core.index.server import QdrantServerIndex

    api_key = settings.store.api_key.get_secret_value() if settings.store.api_key else None
    client = QdrantClient(url=settings.store.url, api_key=api_key, timeout=int(settings.store.timeout_s))
    return QdrantServerIndex(client, settings.store)
