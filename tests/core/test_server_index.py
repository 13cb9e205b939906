"""The qdrant-client backend honours the store settings the edge backend does: ACORN on filtered
searches (``store.acorn``, ``store.acorn_max_selectivity``). qdrant-client's local mode; what the
client sends is read off the real client's ``query_points`` (the call still runs)."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient, models

from core.config import StoreSettings
from core.index.base import CollectionConfig
from core.index.server import QdrantServerIndex
from core.payload import SearchFilter

DIM = 8
MODALITIES = ("CT", "MR", "US", "CR")
QUERY = np.full(DIM, 1 / np.sqrt(DIM), np.float32)

pytestmark = [
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning"),
]


class RecordingClient(QdrantClient):
    """A local-mode client that keeps the search parameters of each ``query_points``."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.search_params: list[models.SearchParams | None] = []

    def query_points(self, *args: Any, **kwargs: Any) -> Any:
        self.search_params.append(kwargs.get("search_params"))
        return super().query_points(*args, **kwargs)


def _filled(store: StoreSettings, *, acorn: bool | None = None) -> tuple[QdrantServerIndex, RecordingClient]:
    client = RecordingClient()
    # as core.index.factory builds it, unless a test overrides ACORN
    index = (
        QdrantServerIndex(client, store) if acorn is None else QdrantServerIndex(client, store, acorn=acorn)
    )
    index.create_collection(CollectionConfig(name="c", dim=DIM))
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(40)]
    index.upsert("c", ids, vectors, [{"modality": MODALITIES[i % 4]} for i in range(40)])
    return index, client


def test_filtered_searches_use_acorn_with_the_store_selectivity() -> None:
    index, client = _filled(StoreSettings(acorn=True, acorn_max_selectivity=0.25))
    try:
        hits = index.search("c", QUERY, filter=SearchFilter(modality=["MR"]), limit=5)
        assert len(hits) == 5 and {h.payload["modality"] for h in hits} == {"MR"}
        params = client.search_params[-1]
        assert params is not None and params.acorn is not None
        assert params.acorn.enable is True and params.acorn.max_selectivity == 0.25
        index.search("c", QUERY, limit=5)  # no filter: nothing for ACORN to do
        unfiltered = client.search_params[-1]
        assert unfiltered is not None and unfiltered.acorn is None
    finally:
        index.close()


def test_acorn_off_in_the_store_settings_is_honoured() -> None:
    index, client = _filled(StoreSettings(acorn=False))
    try:
        hits = index.search("c", QUERY, filter=SearchFilter(modality=["CT"]), limit=5)
        assert len(hits) == 5 and {h.payload["modality"] for h in hits} == {"CT"}
        params = client.search_params[-1]
        assert params is not None and params.acorn is None
    finally:
        index.close()


def test_the_constructor_argument_overrides_the_store_setting() -> None:
    index, client = _filled(StoreSettings(acorn=False), acorn=True)
    try:
        index.search("c", QUERY, filter=SearchFilter(modality=["US"]), limit=3)
        params = client.search_params[-1]
        assert params is not None and params.acorn is not None and params.acorn.enable is True
    finally:
        index.close()
