"""The collection catalog: which encoder (spec + weights version) built each collection.

The entry is stored with the collection itself (the index's collection metadata), so a search embeds
its query with exactly the encoder the collection was built with.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel

from core.config import Settings
from core.encoders.base import Encoder
from core.encoders.registry import load_encoder
from core.encoders.spec import EncoderSpec
from core.errors import CollectionNotFound, ConfigError
from core.index.base import CollectionConfig, VectorIndex

__all__ = ["COLLECTION_NAME_PATTERN", "Catalog", "CollectionEntry"]

COLLECTION_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,47}$"


class CollectionEntry(BaseModel):
    """A collection as users see it."""

    name: str
    encoder: EncoderSpec
    weights_version: str
    dim: int
    created_at: str
    quantization: Literal["none", "int8"] = "none"
    on_disk: bool = False

    @property
    def encoder_label(self) -> str:
        """``name@weights`` as stored in each point's payload."""
        return f"{self.encoder.name}@{self.weights_version}"


class Catalog:
    """Collections and their encoders over one `VectorIndex`; encoders are loaded once and cached."""

    def __init__(self, index: VectorIndex, settings: Settings) -> None:
        self.index = index
        self.settings = settings
        self._encoders: dict[tuple[str, str | None], Encoder] = {}
        self._lock = threading.Lock()

    def encoder(self, spec: EncoderSpec) -> Encoder:
        """The loaded encoder for ``spec`` (loaded on first use, then reused)."""
        cache_key = (spec.fingerprint, spec.weights)
        with self._lock:
            if cache_key not in self._encoders:
                self._encoders[cache_key] = load_encoder(spec, self.settings)
            return self._encoders[cache_key]

    def create(
        self,
        name: str,
        spec: EncoderSpec,
        *,
        quantization: Literal["none", "int8"] = "none",
        on_disk: bool = False,
    ) -> CollectionEntry:
        """Load the encoder, then create the collection with payload indexes and its catalog entry."""
        if not re.match(COLLECTION_NAME_PATTERN, name):
            raise ConfigError(f"collection name {name!r} must match {COLLECTION_NAME_PATTERN}")
        encoder = self.encoder(spec)
        entry = CollectionEntry(
            name=name,
            encoder=spec,
            weights_version=encoder.weights_version,
            dim=encoder.dim,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            quantization=quantization,
            on_disk=on_disk,
        )
        metadata: dict[str, Any] = {"catalog": entry.model_dump(mode="json")}
        self.index.create_collection(
            CollectionConfig(
                name=name, dim=entry.dim, metadata=metadata, quantization=quantization, on_disk=on_disk
            )
        )
        return entry

    def get(self, name: str) -> CollectionEntry:
        """The catalog entry; `CollectionNotFound` for unknown names."""
        if not self.index.collection_exists(name):
            raise CollectionNotFound(f"collection {name!r} does not exist")
        raw = self.index.collection_config(name).metadata.get("catalog")
        if raw is None:
            raise CollectionNotFound(f"collection {name!r} has no radsearch catalog entry")
        return CollectionEntry.model_validate(raw)

    def list(self) -> list[CollectionEntry]:
        entries = []
        for name in sorted(self.index.list_collections()):
            try:
                entries.append(self.get(name))
            except CollectionNotFound:
                continue
        return entries

    def encoder_for(self, name: str) -> Encoder:
        """The encoder a collection was built with, for embedding its queries."""
        entry = self.get(name)
        return self.encoder(entry.encoder)

    def drop(self, name: str) -> None:
        self.get(name)
        self.index.drop_collection(name)
