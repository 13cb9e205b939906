"""Label combinations (`core.index.combinations`): a collection that indexes them answers every
filter with exactly the points the engine's own per-condition evaluation finds, keeps them right
through relabels, and never hands the store's field back."""

from __future__ import annotations

import itertools
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import qdrant_edge as qe

from core.catalog import Catalog
from core.config import SecuritySettings, Settings, StoreSettings
from core.encoders.registry import get_spec
from core.index.base import CollectionConfig
from core.index.combinations import COMBINATIONS_FIELD, combination_keys, combine_conditions
from core.index.edge import EdgeIndex
from core.payload import SearchFilter

DIM = 16
MODALITIES = ("CT", "MR", "CR")
ANATOMIES = ("chest", "head", "abdomen")
PATHOLOGIES = ("nodule", "effusion", "fracture", "normal")
FIELDS = ("modality", "anatomy", "pathology")


def _payloads(n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """Labels with the shapes real manifests have: pathology lists of 0-3 values, some points
    without an anatomy, a dataset label outside the combined fields."""
    out = []
    for i in range(n):
        payload: dict[str, Any] = {
            "modality": MODALITIES[int(rng.integers(len(MODALITIES)))],
            "pathology": sorted(
                {PATHOLOGIES[int(j)] for j in rng.integers(len(PATHOLOGIES), size=int(rng.integers(4)))}
            ),
            "dataset": "a" if i % 2 else "b",
        }
        if rng.random() < 0.8:
            payload["anatomy"] = ANATOMIES[int(rng.integers(len(ANATOMIES)))]
        out.append(payload)
    return out


def _filters() -> list[dict[str, Any]]:
    singles = [
        {"modality": ["CT"], "anatomy": ["chest"]},
        {"modality": ["CT"], "pathology": ["nodule"]},
        {"anatomy": ["head"], "pathology": ["fracture"]},
        {"modality": ["MR"], "anatomy": ["abdomen"], "pathology": ["effusion"]},
    ]
    several = [
        {"modality": ["CT", "MR"], "anatomy": ["chest"], "pathology": ["nodule", "normal"]},
        {"modality": ["cr"], "pathology": ["normal", "fracture"], "dataset": ["a"]},
        {"anatomy": ["head", "chest"], "pathology": ["effusion"], "dataset": ["b"]},
        {"modality": ["CT"]},  # one combined field: left as it is
        {"modality": ["CT"], "anatomy": ["nowhere"]},
    ]
    return singles + several


@pytest.fixture(scope="module")
def indexes(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The same points in a collection with combinations (the default) and one without."""
    rng = np.random.default_rng(7)
    n = 600
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    payloads = _payloads(n, rng)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(n)]
    index = EdgeIndex(tmp_path_factory.mktemp("combinations"), StoreSettings())
    index.create_collection(CollectionConfig(name="with", dim=DIM, combined_fields=FIELDS))
    index.create_collection(CollectionConfig(name="without", dim=DIM))
    for name in ("with", "without"):
        index.upsert(name, ids, vectors, payloads)
    yield index, vectors, payloads, ids
    index.close()


def test_the_catalog_creates_collections_with_the_store_setting(tmp_path: Path) -> None:
    for fields in (FIELDS, ("modality", "pathology"), ()):
        settings = Settings(
            data_dir=tmp_path / str(len(fields)),
            store=StoreSettings(combined_filter_fields=fields),
            security=SecuritySettings(hash_key="k"),  # type: ignore[arg-type]
        )
        index = EdgeIndex(settings.index_dir, settings.store)
        Catalog(index, settings).create("c", get_spec("baseline"))
        assert index.collection_config("c").combined_fields == fields
        index.close()


@pytest.mark.parametrize("raw", _filters(), ids=lambda raw: json.dumps(raw))
def test_filters_match_exactly_the_points_the_engine_finds_condition_by_condition(
    indexes: Any, raw: dict[str, Any]
) -> None:
    index, vectors, payloads, _ = indexes
    search_filter = SearchFilter.from_mapping(raw)
    expected = index.count("without", search_filter)
    assert index.count("with", search_filter) == expected
    query = vectors[3]
    hits = {
        name: index.search(name, query, filter=search_filter, limit=50, exact=True)
        for name in ("with", "without")
    }
    assert [h.id for h in hits["with"]] == [h.id for h in hits["without"]]
    assert len(hits["with"]) == min(50, expected)

    # and the engine's evaluation agrees with the labels themselves
    def matches(
        payload: dict[str, Any], fields: tuple[str, ...] = ("modality", "anatomy", "pathology", "dataset")
    ) -> bool:
        for field, values in search_filter.fields():
            if field not in fields:
                continue
            held = payload.get(field)
            held_values = held if isinstance(held, list) else [held]
            if not set(held_values) & set(values):
                return False
        return True

    assert expected == sum(matches(p) for p in payloads)
    # "with" answered it from the stored keys alone, where it has two or more combined fields
    conditions = combine_conditions(search_filter.fields(), FIELDS)
    if conditions[0][0] == COMBINATIONS_FIELD:
        with index._handle("with").reading() as shard:
            keys_only = qe.Filter(
                must=[qe.FieldCondition(COMBINATIONS_FIELD, match=qe.MatchAny(conditions[0][1]))]
            )
            by_keys = int(shard.count(qe.CountRequest(exact=True, filter=keys_only)))
        assert by_keys == sum(matches(p, FIELDS) for p in payloads)


def test_the_store_field_never_comes_back(indexes: Any) -> None:
    index, vectors, _, ids = indexes
    hits = index.search("with", vectors[0], filter=SearchFilter.from_mapping({"modality": ["CT"]}), limit=5)
    assert hits and all(COMBINATIONS_FIELD not in h.payload for h in hits)
    assert all(COMBINATIONS_FIELD not in p.payload for p in index.retrieve("with", ids[:20]))
    points, _ = index.scroll_page("with", batch_size=20)
    assert points and all(COMBINATIONS_FIELD not in p.payload for p in points)
    # a payload handed in with the field (an export read back) gets the keys recomputed, not kept
    fresh = str(uuid.UUID(int=10_000))
    index.upsert(
        "with", [fresh], vectors[:1], [{"modality": "US", "anatomy": "knee", COMBINATIONS_FIELD: ["x"]}]
    )
    assert index.count("with", SearchFilter.from_mapping({"modality": ["US"], "anatomy": ["knee"]})) == 1


def test_a_relabel_moves_the_point_between_combinations(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path, StoreSettings())
    index.create_collection(CollectionConfig(name="c", dim=DIM, combined_fields=FIELDS))
    pid = str(uuid.UUID(int=1))
    index.upsert("c", [pid], np.ones((1, DIM), np.float32), [{"modality": "CT", "anatomy": "chest"}])
    before = SearchFilter.from_mapping({"modality": ["CT"], "anatomy": ["chest"]})
    after = SearchFilter.from_mapping({"modality": ["MR"], "anatomy": ["chest"]})
    assert (index.count("c", before), index.count("c", after)) == (1, 0)
    index.overwrite_payloads("c", {pid: {"modality": "MR", "anatomy": "chest"}})
    assert (index.count("c", before), index.count("c", after)) == (0, 1)
    index.close()
    # reopened, the collection still knows it indexes combinations
    reopened = EdgeIndex(tmp_path, StoreSettings(combined_filter_fields=()))
    assert reopened.collection_config("c").combined_fields == FIELDS
    assert reopened.count("c", after) == 1
    reopened.close()


def test_a_collection_json_from_before_reads_as_none(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path, StoreSettings())
    index.create_collection(CollectionConfig(name="c", dim=DIM))
    index.upsert(
        "c", [str(uuid.UUID(int=1))], np.ones((1, DIM), np.float32), [{"modality": "CT", "anatomy": "chest"}]
    )
    index.close()
    config_file = next(tmp_path.rglob("collection.json"))
    stored = json.loads(config_file.read_text())
    del stored["combined_fields"]  # as a collection made before they existed
    config_file.write_text(json.dumps(stored))
    reopened = EdgeIndex(tmp_path, StoreSettings())
    assert reopened.collection_config("c").combined_fields == ()
    assert reopened.count("c", SearchFilter.from_mapping({"modality": ["CT"], "anatomy": ["chest"]})) == 1
    reopened.close()


def test_keys_and_conditions_agree_for_every_combination() -> None:
    payload = {"modality": "CT", "anatomy": "chest", "pathology": ["nodule", "effusion"]}
    keys = set(combination_keys(payload, FIELDS))
    # 1 (modality, anatomy) + 2 + 2 + 2 (each pathology with the others)
    assert len(keys) == 7
    for size in (2, 3):
        for subset in itertools.combinations(FIELDS, size):
            conditions = [(f, [payload[f]] if isinstance(payload[f], str) else ["nodule"]) for f in subset]
            ((field, wanted),) = combine_conditions(conditions, FIELDS)
            assert field == COMBINATIONS_FIELD and set(wanted) <= keys
    # the order conditions come in does not matter; too many combinations keep them separate
    assert combine_conditions([("pathology", ["x"]), ("modality", ["CT"])], FIELDS) == combine_conditions(
        [("modality", ["CT"]), ("pathology", ["x"])], FIELDS
    )
    wide = [("modality", [str(i) for i in range(20)]), ("pathology", [str(i) for i in range(20)])]
    assert combine_conditions(wide, FIELDS) == wide


def test_the_setting_names_filter_fields_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADSEARCH_STORE__COMBINED_FILTER_FIELDS", '["modality","pathology"]')
    assert Settings().store.combined_filter_fields == ("modality", "pathology")
    with pytest.raises(ValueError, match="filter fields only"):
        StoreSettings(combined_filter_fields=("modality", "patient_name"))
