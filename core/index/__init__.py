"""The vector-index interface and its two Qdrant backends."""

from core.index.base import CollectionConfig, Hit, StoredPoint, VectorIndex
from core.index.factory import open_index

__all__ = ["CollectionConfig", "Hit", "StoredPoint", "VectorIndex", "open_index"]
