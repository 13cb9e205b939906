"""Pick the vector-index backend from settings."""

from __future__ import annotations

from core.config import Settings
from core.errors import ConfigError
from core.index.base import VectorIndex

__all__ = ["open_index"]


def open_index(settings: Settings) -> VectorIndex:
    """The embedded Qdrant Edge store under the data dir, or a Qdrant server by URL."""
    if settings.store.backend == "edge":
        from core.index.edge import EdgeIndex

        return EdgeIndex(settings.index_dir, settings.store)
    if not settings.store.url:
        raise ConfigError("store backend 'qdrant' needs RADSEARCH_STORE__URL (e.g. http://qdrant:6333)")
    from qdrant_client import QdrantClient

    from core.index.server import QdrantServerIndex

    api_key = settings.store.api_key.get_secret_value() if settings.store.api_key else None
    client = QdrantClient(url=settings.store.url, api_key=api_key, timeout=int(settings.store.timeout_s))
    return QdrantServerIndex(client, settings.store)
