"""Collections administration as keyword-only blocking functions (the routes run them in threads)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from core.catalog import Catalog
from core.encoders.registry import resolve_spec
from core.encoders.spec import EncoderSpec
from core.errors import CollectionExists, CollectionNotFound
from search_api.schemas import CollectionCreate, CollectionDetailPublic

__all__ = ["collection_detail", "create_collection", "ensure_collections", "spec_from"]


def spec_from(body: CollectionCreate) -> EncoderSpec:
    """The request's encoder spec; `ConfigError` naming each invalid field of a full spec."""
    return resolve_spec(body.encoder).with_weights(body.weights)


def create_collection(*, catalog: Catalog, body: CollectionCreate) -> CollectionDetailPublic:
    """Load the encoder, probe one image, then create the collection; nothing is left on failure.

    `WeightsUnavailable` (HTTP 424) when the weights cannot be had here, `UpstreamUnreachable`
    (502) when the S3 endpoint holding them does not answer."""
    spec = spec_from(body)
    if catalog.index.collection_exists(body.name):
        raise CollectionExists(f"collection {body.name!r} already exists")
    entry = catalog.create(body.name, spec, quantization=body.quantization, on_disk=body.on_disk, probe=True)
    return collection_detail(catalog=catalog, name=entry.name)


def ensure_collections(*, catalog: Catalog, names: Sequence[str], encoder: str) -> None:
    """Create those of ``names`` that are neither a collection nor an alias yet, with ``encoder``
    (a registry name). For jobs the workers run on the embedded store: they never open it, so its
    owner, this server, creates their collections."""
    for name in names:
        try:
            catalog.get(name)
        except CollectionNotFound:
            with contextlib.suppress(CollectionExists):  # a concurrent request created it
                catalog.create(name, resolve_spec(encoder))


def collection_detail(*, catalog: Catalog, name: str) -> CollectionDetailPublic:
    """A collection's full record: spec, dim, points, indexing state, quantization, aliases."""
    entry = catalog.get(name)
    info: dict[str, Any] = catalog.index.collection_info(entry.name)
    indexed = info.get("indexed_vectors")
    unindexed = info.get("unindexed_vectors")
    if unindexed is None and indexed is not None:
        unindexed = max(0, int(info["points"]) - int(indexed))
    return CollectionDetailPublic.model_validate(
        {
            "name": entry.name,
            "encoder": entry.encoder.name,
            "dim": entry.dim,
            "points": info["points"],
            "weights": entry.weights_version,
            "text_search": entry.encoder.text_tower,
            "created_at": entry.created_at,
            "spec": entry.encoder.model_dump(mode="json"),
            "quantization": entry.quantization,
            "on_disk": entry.on_disk,
            "accept_burned_in": entry.accept_burned_in,
            "id_scheme": entry.id_scheme,
            "indexing": {
                "status": info.get("status", "unknown"),
                "points": info["points"],
                "indexed_vectors": indexed,
                "unindexed_vectors": unindexed,
                "optimizing": info.get("optimizing"),
                "segments": info.get("segments"),
            },
            "aliases": list(catalog.aliases_of(entry.name)),
        }
    )
