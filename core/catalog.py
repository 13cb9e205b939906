"""The collection catalog: which encoder (spec + weights version) built each collection.

The entry is stored with the collection itself (the index's collection metadata), so a search embeds
its query with exactly the encoder the collection was built with.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.calibration import threshold_of
from core.config import Settings
from core.encoders.base import Encoder
from core.encoders.registry import load_encoder
from core.encoders.spec import EncoderSpec
from core.errors import (
    CollectionExists,
    CollectionNotFound,
    ConfigError,
    IndexStoreError,
    StoreDamaged,
    field_names,
)
from core.index.base import CollectionConfig, VectorIndex, check_collection_name
from core.snapshots import Trash, TrashEntry
from core.suggest import did_you_mean

log = logging.getLogger(__name__)

__all__ = ["Catalog", "CollectionBusy", "CollectionEntry"]


class CollectionBusy(ConfigError):
    """A collection cannot be dropped now: an alias points at it, or a job is writing to it
    (HTTP 409, CLI exit 2). The message says what holds it."""


class CollectionEntry(BaseModel):
    """A collection as users see it (frozen: `Catalog` hands the same entry to many requests)."""

    model_config = ConfigDict(frozen=True)

    name: str
    encoder: EncoderSpec
    weights_version: str
    dim: int
    created_at: str
    quantization: Literal["none", "int8"] = "none"
    on_disk: bool = False
    # An ingest opted in to objects with burned-in annotation (``--accept-burned-in``): they are
    # indexed and their pixels served. Once set it stays set (the collection holds such objects).
    accept_burned_in: bool = False
    #: How point ids derive (`core.payload.ID_SCHEMES`): a collection created before stable image
    #: identity has no such field and keeps v1; new collections are v2.
    id_scheme: Literal["v1", "v2"] = "v1"
    #: The "no close match" score threshold (`core.calibration`), read with the entry from the same
    #: collection metadata; None when never calibrated. Not part of the stored entry.
    calibration_threshold: float | None = Field(default=None, exclude=True)

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
        self.trash = Trash(settings)  # where the embedded store's dropped collections go
        self._registered: set[tuple[str, str, str]] = set()
        # name -> (the index's metadata generation it was read at, its entry): see `known`.
        self._entries: dict[str, tuple[int, CollectionEntry]] = {}

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
        quantization: Literal["none", "int8"] | None = None,
        on_disk: bool = False,
        probe: bool = False,
    ) -> CollectionEntry:
        """Load the encoder, then create the collection with payload indexes and its catalog entry.

        ``quantization`` None takes ``settings.store.default_quantization``.

        ``probe`` embeds one synthetic image first and refuses (`ConfigError`, nothing created) an
        encoder whose output is not ``spec.dim`` finite values.
        """
        check_collection_name(name, "a collection name")
        if name in self.aliases():
            raise ConfigError(f"{name!r} is an alias; a collection needs a name of its own")
        if quantization is None:
            quantization = self.settings.store.default_quantization
        encoder = self.encoder(spec)
        if probe:
            _probe(encoder)
        entry = CollectionEntry(
            name=name,
            encoder=spec,
            weights_version=encoder.weights_version,
            dim=encoder.dim,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            quantization=quantization,
            on_disk=on_disk,
            id_scheme="v2",
        )
        metadata: dict[str, Any] = {"catalog": entry.model_dump(mode="json")}
        self.index.create_collection(
            CollectionConfig(
                name=name,
                dim=entry.dim,
                metadata=metadata,
                quantization=quantization,
                on_disk=on_disk,
                combined_fields=self.settings.store.combined_filter_fields,
            )
        )
        return entry

    def ensure(self, name: str, encoder: str | None = None, *, weights: str | None = None) -> CollectionEntry:
        """The collection (or alias) ``name``, created with ``encoder`` (default ``baseline``) if it
        does not exist yet.

        An existing collection keeps its encoder: asking for another one is a `ConfigError`.
        """
        from core.encoders.registry import resolve_spec

        spec = resolve_spec(encoder or "baseline").with_weights(weights)
        try:
            entry = self.get(name)
        except CollectionNotFound:
            try:
                return self.create(name, spec)
            except CollectionExists:  # created meanwhile by another thread of this process
                entry = self.get(name)
        if encoder is not None and entry.encoder.name != spec.name:
            raise ConfigError(
                f"collection {name!r} was built with encoder {entry.encoder.name!r}, not {spec.name!r}; "
                "create a new collection for another encoder"
            )
        return entry

    def resolve(self, name: str) -> str:
        """The collection ``name`` names: itself, or the target of the alias ``name``."""
        # Aliases first: a Qdrant server also answers collection_exists() for an alias.
        target = self.aliases().get(name)
        if target is not None:
            return target
        if self.index.collection_exists(name):
            return name
        hint = did_you_mean(name, [*self.index.list_collections(), *self.aliases()], n=3)
        raise CollectionNotFound(f"collection {name!r} does not exist{hint}")

    def _is_collection(self, name: str) -> bool:
        return name not in self.aliases() and self.index.collection_exists(name)

    def get(self, name: str) -> CollectionEntry:
        """The catalog entry of a collection or of the collection an alias points at;
        `CollectionNotFound` for unknown names."""
        entry = self.known(name)
        if entry is not None:
            return entry
        generation = self.index.metadata_generation  # before the read: a change meanwhile voids it
        collection = self.resolve(name)
        metadata = self.index.collection_config(collection).metadata
        raw = metadata.get("catalog")
        if raw is None:
            raise CollectionNotFound(f"collection {collection!r} has no radsearch catalog entry")
        try:
            entry = CollectionEntry.model_validate({**raw, "calibration_threshold": threshold_of(metadata)})
        except (ValidationError, TypeError) as exc:
            fields = field_names(exc.errors()) if isinstance(exc, ValidationError) else "not a record"
            raise StoreDamaged(
                f"collection {collection!r} is damaged: its catalog entry does not hold ({fields}); its "
                "points are untouched: restore it from a snapshot, or drop it"
            ) from None
        if generation is not None:
            self._entries[name] = (generation, entry)
        return entry

    def known(self, name: str) -> CollectionEntry | None:
        """The entry `get` returns for ``name``, where it is known without a call to the store
        (read since the index's last change to its collections, `VectorIndex.metadata_generation`),
        else None. Never blocks: an event loop calls it inline, and goes to a worker thread for
        `get` only on None. Every search resolves its collection, so this saves a thread hop and a
        validation per search."""
        generation = self.index.metadata_generation
        kept = self._entries.get(name)
        if generation is None or kept is None or kept[0] != generation:
            return None
        return kept[1]

    def list(self) -> list[CollectionEntry]:
        """The entries of the store's collections; a damaged one is logged (a warning naming it)
        and left out, so that the others stay listed. A damaged aliases file is `StoreDamaged`."""
        self.aliases()  # every name resolves through them
        entries = []
        for name in sorted(self.index.list_collections()):
            try:
                entries.append(self.get(name))
            except CollectionNotFound:
                continue
            except StoreDamaged as exc:
                log.warning("%s", exc)
        return entries

    def record_accept_burned_in(self, name: str) -> CollectionEntry:
        """Record in the catalog entry of collection (or alias) ``name`` that an ingest accepted
        objects with burned-in annotation; returns the updated entry."""
        entry = self.get(name)
        if entry.accept_burned_in:
            return entry
        entry = entry.model_copy(update={"accept_burned_in": True})
        self.index.update_metadata(self.resolve(name), {"catalog": entry.model_dump(mode="json")})
        return entry

    def encoder_for(self, name: str) -> Encoder:
        """The encoder a collection was built with, for embedding its queries."""
        entry = self.get(name)
        return self.encoder(entry.encoder)

    def drop(
        self, name: str, *, writers: Callable[[str, Mapping[str, str]], Sequence[str]] | None = None
    ) -> TrashEntry | None:
        """Drop a collection by its own name: the embedded store moves it to the trash (the entry
        is returned; `core.snapshots.Trash`), a Qdrant server deletes it for good (None).

        `CollectionBusy` while an alias points at it, or while ``writers(name, aliases)`` names
        anything (the jobs writing to it, as the caller knows them: e.g. "ingest job <id>";
        ``aliases`` is alias → collection, read once here).
        """
        aliases = self.aliases()
        if name in aliases:
            raise ConfigError(f"{name!r} is an alias; drop the collection by its own name")
        if not self.index.collection_exists(name):
            known = [*self.index.list_collections(), *aliases]
            raise CollectionNotFound(f"collection {name!r} does not exist{did_you_mean(name, known)}")
        try:
            self.get(name)
        except StoreDamaged:
            pass  # dropping is the way out of it
        pointing = sorted(alias for alias, target in aliases.items() if target == name)
        if pointing:
            raise CollectionBusy(
                f"collection {name!r} is the target of alias {', '.join(pointing)}; switch or delete "
                "the alias first"
            )
        busy = list(writers(name, aliases)) if writers is not None else []
        if busy:
            raise CollectionBusy(
                f"collection {name!r} is being written by {', '.join(busy)}; drop it once "
                f"{'that has' if len(busy) == 1 else 'they have'} finished"
            )
        if self.index.supports_files:
            return self.trash.put(self.index, name)
        self.index.drop_collection(name)
        return None

    # -- sources: stable name → URI ---------------------------------------------------------------

    def register_source(self, collections: Sequence[str], source_name: str, uri: str) -> None:
        """Record, once per process, that ``source_name`` is read from ``uri`` for each collection
        (payloads carry the name only; the server needs the URI to read an object again)."""
        for name in collections:
            key = (name, source_name, uri)
            if key in self._registered:
                continue
            try:
                self.index.register_source(name, source_name, uri)
            except ConfigError as exc:
                # The ingest goes on; only re-reading its objects (thumbnails) needs the record.
                log.warning("source %r not registered with collection %r: %s", source_name, name, exc)
            self._registered.add(key)

    def source_uri(self, collection: str, source_name: str) -> str | None:
        """Where the objects of ``source_name`` in ``collection`` are read from; None when the
        name was never registered."""
        sources = self.index.collection_config(self.resolve(collection)).metadata.get("sources") or {}
        uri = sources.get(source_name)
        return uri if isinstance(uri, str) else None

    # -- aliases -------------------------------------------------------------------------------

    def aliases(self) -> dict[str, str]:
        """alias → collection (empty where the store has no alias support)."""
        try:
            return self.index.aliases()
        except StoreDamaged:
            raise
        except IndexStoreError:
            return {}

    def set_alias(self, alias: str, collection: str) -> str | None:
        """Point ``alias`` at ``collection`` atomically; returns the collection it pointed at before.

        Search through the alias switches from the old collection to the new one between two
        requests; the old collection stays until dropped (rollback = set the alias back).
        """
        check_collection_name(alias, "an alias")
        if self._is_collection(alias):
            raise ConfigError(f"{alias!r} is a collection; an alias needs a name of its own")
        if not self._is_collection(collection):
            raise CollectionNotFound(f"collection {collection!r} does not exist (aliases cannot chain)")
        self.get(collection)
        previous = self.aliases().get(alias)
        self.index.set_alias(alias, collection)
        return previous

    def delete_alias(self, alias: str) -> None:
        """Remove an alias (its collection stays)."""
        self.index.delete_alias(alias)

    def aliases_of(self, collection: str) -> tuple[str, ...]:
        """The aliases that point at ``collection``."""
        return tuple(sorted(alias for alias, target in self.aliases().items() if target == collection))


def _probe_frame() -> NDArray[np.uint8]:
    # A smooth synthetic image: flat or noisy probes can legitimately embed to odd vectors.
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32) / 256.0
    image = 128 + 100 * np.sin(6 * xx) * np.cos(4 * yy)
    frame: NDArray[np.uint8] = np.clip(image, 0, 255).astype(np.uint8)
    return frame


def _probe(encoder: Encoder) -> None:
    """Embed one image; `ConfigError` unless it gives ``spec.dim`` finite, non-zero values."""
    vectors = encoder.embed([_probe_frame()])
    if vectors.shape != (1, encoder.spec.dim):
        raise ConfigError(
            f"encoder {encoder.spec.name!r}: a probe image embeds to {vectors.shape[1:]} values, "
            f"the spec says dim {encoder.spec.dim}"
        )
    if not np.isfinite(vectors).all() or float(np.linalg.norm(vectors)) < 1e-6:
        raise ConfigError(f"encoder {encoder.spec.name!r}: a probe image embeds to NaN/Inf or zeros")
