"""How `EdgeIndex` plans filtered searches: post-filtering unfiltered candidates for filters that
match a large share of the collection (with its fall-back), and the per-filter estimate cache."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from numpy.typing import NDArray

from core.config import StoreSettings
from core.index.base import CollectionConfig
from core.index.edge import EdgeIndex
from core.payload import SearchFilter

DIM = 64
MODALITIES = ("CT", "MR", "US", "CR")


def _unit(x: NDArray[np.float32]) -> NDArray[np.float32]:
    out: NDArray[np.float32] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


class Spy:
    """Records what `EdgeIndex._post_filtered` returned (the real method runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.results: list[Any] = []
        original = EdgeIndex._post_filtered

        def wrapped(index: EdgeIndex, *args: Any, **kwargs: Any) -> Any:
            result = original(index, *args, **kwargs)
            self.results.append(result)
            return result

        monkeypatch.setattr(EdgeIndex, "_post_filtered", wrapped)


def _build(
    root: Path, vectors: NDArray[np.float32], modality: list[str], quantization: Literal["none", "int8"]
) -> EdgeIndex:
    # no scan of small filters (filter_exact_max_points) and a 1 KB full-scan threshold: every
    # search goes through the HNSW graph, as at scale
    index = EdgeIndex(root, StoreSettings(filter_exact_max_points=0))
    index.create_collection(
        CollectionConfig(name="c", dim=DIM, quantization=quantization, full_scan_threshold_kb=1)
    )
    ids = [str(uuid.UUID(int=i + 1)) for i in range(len(vectors))]
    payloads = [{"modality": m, "pathology": ["p"]} for m in modality]
    index.upsert("c", ids, vectors, payloads)
    index.optimize("c")
    return index


def _exact(
    vectors: NDArray[np.float32], mask: NDArray[np.bool_], query: NDArray[np.float32], k: int
) -> list[int]:
    scores = np.where(mask, vectors @ query, -np.inf)
    return [int(i) for i in np.argsort(-scores)[:k]]


@pytest.fixture
def clustered(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[EdgeIndex, dict[str, Any]]]:
    rng = np.random.default_rng(0)
    n = 6000
    centres = _unit(rng.standard_normal((60, DIM)).astype(np.float32))
    assign = rng.integers(0, 60, n)
    vectors = _unit(centres[assign] + 0.15 * rng.standard_normal((n, DIM)).astype(np.float32))
    modality = [MODALITIES[i] for i in rng.integers(0, 4, n)]
    index = _build(tmp_path / "index", vectors, modality, request.param)
    try:
        yield index, {"vectors": vectors, "modality": np.array(modality), "rng": rng}
    finally:
        index.close()


@pytest.mark.parametrize("clustered", ["none", "int8"], indirect=True)
def test_large_share_filter_is_post_filtered_and_matches_exact(
    clustered: tuple[EdgeIndex, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    index, data = clustered
    spy = Spy(monkeypatch)
    recalls = []
    for j in range(40):
        row = int(data["rng"].integers(0, len(data["vectors"])))
        query = data["vectors"][row]
        wanted = MODALITIES[j % 4]
        hits = index.search("c", query, filter=SearchFilter(modality=[wanted]), limit=10)
        assert len(hits) == 10
        assert all(hit.payload["modality"] == wanted for hit in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        truth = _exact(data["vectors"], data["modality"] == wanted, query, 10)
        found = {uuid.UUID(h.id).int - 1 for h in hits}
        recalls.append(len(found & set(truth)) / 10)
    # every one of the 25 % filters went through the candidates, and they sufficed
    assert len(spy.results) == 40 and all(r is not None for r in spy.results)
    assert float(np.mean(recalls)) >= 0.95


@pytest.mark.parametrize("clustered", ["none"], indirect=True)
def test_post_filter_pages_exclusions_and_threshold(clustered: tuple[EdgeIndex, dict[str, Any]]) -> None:
    index, data = clustered
    query = data["vectors"][7]
    ct = SearchFilter(modality=["CT"])
    full = index.search("c", query, filter=ct, limit=20)
    page = index.search("c", query, filter=ct, limit=10, offset=5)
    assert [h.id for h in page] == [h.id for h in full[5:15]]
    excluded = [full[0].id, full[3].id]
    without = index.search("c", query, filter=ct, limit=10, exclude_ids=excluded)
    assert not {h.id for h in without} & set(excluded)
    assert [h.id for h in without] == [h.id for h in full if h.id not in excluded][:10]
    threshold = (full[4].score + full[5].score) / 2  # between two hits: no tie at the boundary
    above = index.search("c", query, filter=ct, limit=10, score_threshold=threshold)
    assert [h.id for h in above] == [h.id for h in full if h.score >= threshold]


def test_post_filter_falls_back_when_the_candidates_hold_too_few_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CT (30 % of the points) lives in one region, the query in another: no CT point is among the
    unfiltered candidates, so the search falls back to the filtered graph and still finds CT."""
    rng = np.random.default_rng(1)
    n = 4000
    far, near = _unit(rng.standard_normal((2, DIM)).astype(np.float32))
    is_ct = rng.random(n) < 0.3
    vectors = _unit(
        np.where(is_ct[:, None], far, near) + 0.2 * rng.standard_normal((n, DIM)).astype(np.float32)
    )
    index = _build(tmp_path / "index", vectors, ["CT" if c else "MR" for c in is_ct], "none")
    spy = Spy(monkeypatch)
    try:
        hits = index.search("c", near, filter=SearchFilter(modality=["CT"]), limit=10)
    finally:
        index.close()
    assert spy.results == [None]
    assert len(hits) == 10 and all(hit.payload["modality"] == "CT" for hit in hits)
    truth = set(_exact(vectors, is_ct, near, 10))
    assert len({uuid.UUID(h.id).int - 1 for h in hits} & truth) >= 9


def test_filter_estimates_are_cached_until_the_next_write(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    vectors = _unit(rng.standard_normal((300, DIM)).astype(np.float32))
    index = _build(tmp_path / "index", vectors, ["CT"] * 300, "none")
    try:
        mr = SearchFilter(modality=["MR"])
        assert index.search("c", vectors[0], filter=mr) == []
        handle = index._handle("c")
        # keyed by the conditions the store matches (MR and its legacy spellings, one estimate)
        key = tuple((name, tuple(values)) for name, values in mr.conditions())
        assert handle.cardinality[key] == (0, 300)
        new_id = str(uuid.UUID(int=10_000))
        index.upsert("c", [new_id], vectors[:1], [{"modality": "MR"}])
        assert handle.cardinality == {}
        assert [h.id for h in index.search("c", vectors[0], filter=mr)] == [new_id]
    finally:
        index.close()


def test_each_filter_size_gets_its_own_plan_and_ef(tmp_path: Path) -> None:
    store = StoreSettings(
        filter_exact_max_points=20,
        post_filter_min_share=0.5,
        acorn_max_points=300,
        acorn_min_selectivity=0.1,
        hnsw_ef_filtered=111,
        hnsw_ef_acorn=22,
        hnsw_ef_selective=33,
    )
    rng = np.random.default_rng(3)
    modality = ["CT"] * 600 + ["MR"] * 250 + ["US"] * 50 + ["CR"] * 80 + ["DX"] * 20
    index = EdgeIndex(tmp_path / "index", store)
    try:
        # a 1 KB full-scan threshold: the engine would plan no plain search of its own
        index.create_collection(CollectionConfig(name="c", dim=DIM, full_scan_threshold_kb=1))
        ids = [str(uuid.UUID(int=i + 1)) for i in range(len(modality))]
        vectors = _unit(rng.standard_normal((len(modality), DIM)).astype(np.float32))
        index.upsert("c", ids, vectors, [{"modality": m} for m in modality])
        handle = index._handle("c")
        plans = {
            m: index._filtered_plan(handle, SearchFilter(modality=[m]), 10) for m in ("CT", "MR", "US", "DX")
        }
    finally:
        index.close()
    # 60 %: post-filtered first, then the payload-linked graph at hnsw_ef_filtered
    assert (plans["CT"].post_filter, plans["CT"].acorn, plans["CT"].ef) == (True, False, 111)
    # 25 %, under acorn_max_points: ACORN
    assert (plans["MR"].post_filter, plans["MR"].acorn, plans["MR"].ef) == (False, True, 22)
    # 5 %: a small, selective filter on its payload links
    assert (plans["US"].post_filter, plans["US"].acorn, plans["US"].ef) == (False, False, 33)
    assert not any(plans[m].exact for m in ("CT", "MR", "US"))
    # at most filter_exact_max_points: scanned
    assert plans["DX"].exact and not plans["DX"].post_filter


def test_combined_filter_draws_its_candidates_from_its_narrowest_linked_condition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """modality AND anatomy (~4 % of the points, a quarter of the anatomy's; the anatomy is the
    narrower condition): candidates from the anatomy's own linked graph, then the whole filter;
    the hits equal exact search's."""
    rng = np.random.default_rng(4)
    n = 6000
    centres = _unit(rng.standard_normal((60, DIM)).astype(np.float32))
    vectors = _unit(centres[rng.integers(0, 60, n)] + 0.15 * rng.standard_normal((n, DIM)).astype(np.float32))
    modality = np.array([MODALITIES[i] for i in rng.integers(0, 4, n)])
    anatomy = np.array(["chest", "head", "abdomen", "pelvis", "spine", "knee"])[rng.integers(0, 6, n)]
    index = EdgeIndex(tmp_path / "index", StoreSettings(filter_exact_max_points=0))
    index.create_collection(
        CollectionConfig(name="c", dim=DIM, quantization="int8", full_scan_threshold_kb=1)
    )
    ids = [str(uuid.UUID(int=i + 1)) for i in range(n)]
    index.upsert(
        "c", ids, vectors, [{"modality": m, "anatomy": a} for m, a in zip(modality, anatomy, strict=True)]
    )
    index.optimize("c")
    spy = Spy(monkeypatch)
    recalls = []
    try:
        combined = SearchFilter(modality=["CT"], anatomy=["chest"])
        plan = index._filtered_plan(index._handle("c"), combined, 10)
        assert plan.post_filter and plan.base == SearchFilter(anatomy=["chest"])
        assert 0.2 < plan.share < 0.3
        # one condition alone, or a filter none of whose conditions is linked: no base
        assert index._filtered_plan(index._handle("c"), SearchFilter(anatomy=["chest"]), 10).base is None
        for _ in range(30):
            query = vectors[int(rng.integers(0, n))]
            hits = index.search("c", query, filter=combined, limit=10)
            assert all(h.payload["modality"] == "CT" and h.payload["anatomy"] == "chest" for h in hits)
            truth = _exact(vectors, (modality == "CT") & (anatomy == "chest"), query, 10)
            recalls.append(len({uuid.UUID(h.id).int - 1 for h in hits} & set(truth)) / 10)
    finally:
        index.close()
    assert len(spy.results) == 30 and all(r is not None for r in spy.results)
    assert float(np.mean(recalls)) >= 0.95


# The three labels of a small filter: CT AND chest AND "a" matches ~1 % of the points.
SMALL = SearchFilter(modality=["CT"], anatomy=["chest"], pathology=["a"])


def _three_labels(
    root: Path, store: StoreSettings, config: CollectionConfig
) -> tuple[EdgeIndex, NDArray[np.float32], NDArray[np.bool_]]:
    """6,000 indexed points with a modality, an anatomy and a pathology each: the index, the
    vectors, and which points `SMALL` matches."""
    rng = np.random.default_rng(5)
    n = 6000
    vectors = _unit(rng.standard_normal((n, DIM)).astype(np.float32))
    modality = np.array(MODALITIES)[rng.integers(0, 4, n)]
    anatomy = np.array(["chest", "head", "abdomen"])[rng.integers(0, 3, n)]
    pathology = np.array(["a", "b", "c", "d", "e", "f", "g", "h"])[rng.integers(0, 8, n)]
    index = EdgeIndex(root, store)
    index.create_collection(config)
    payloads = [
        {
            "modality": m,
            "anatomy": a,
            "pathology": [p],
            "dataset": f"d{i % 2}",
            "patient_hash": f"patient-{i % 50}",
        }
        for i, (m, a, p) in enumerate(zip(modality, anatomy, pathology, strict=True))
    ]
    index.upsert("c", [str(uuid.UUID(int=i + 1)) for i in range(n)], vectors, payloads)
    index.optimize("c")
    return index, vectors, (modality == "CT") & (anatomy == "chest") & (pathology == "a")


def _hits_are_exact(
    index: EdgeIndex,
    vectors: NDArray[np.float32],
    mask: NDArray[np.bool_],
    search_filter: SearchFilter = SMALL,
) -> None:
    for j in range(20):
        query = vectors[j * 97]
        hits = index.search("c", query, filter=search_filter, limit=10)
        assert [uuid.UUID(h.id).int - 1 for h in hits] == _exact(vectors, mask, query, 10)


@pytest.mark.parametrize("on_disk", [False, True])
def test_small_filters_are_scanned_exactly(tmp_path: Path, on_disk: bool) -> None:
    """Three conditions matching ~1 % of the points: every matching point scored, so the hits are
    exact search's, on a collection whose graph alone would miss some (originals in RAM: scored
    with them; on disk: int8, then rescored)."""
    config = CollectionConfig(
        name="c", dim=DIM, quantization="int8", on_disk=on_disk, full_scan_threshold_kb=1
    )
    index, vectors, mask = _three_labels(
        tmp_path / "index", StoreSettings(filter_exact_max_points=200), config
    )
    try:
        # exact counts for several conditions (the engine's estimate takes them as independent)
        assert index._estimate(index._handle("c"), SMALL)[0] == int(mask.sum())
        assert index._filtered_plan(index._handle("c"), SMALL, 10).exact
        _hits_are_exact(index, vectors, mask)
    finally:
        index.close()


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_small_filter_under_the_full_scan_threshold_is_the_engines_plain_search(
    tmp_path: Path, on_disk: bool
) -> None:
    """Labels combined into one condition, matching fewer points than the engine's full-scan
    threshold, on a collection with a graph: not an exact scan of the collection, and the hits
    are still exact search's (the engine scores every matching point)."""
    # 100 KB: a graph for the collection, plain search under 400 points at DIM 64
    config = CollectionConfig(
        name="c",
        dim=DIM,
        quantization="int8",
        on_disk=on_disk,
        full_scan_threshold_kb=100,
        combined_fields=("modality", "anatomy", "pathology"),
    )
    index, vectors, mask = _three_labels(tmp_path / "index", StoreSettings(), config)
    try:
        handle = index._handle("c")
        assert handle.shard.info().indexed_vectors_count == len(vectors)  # the graph is there
        plan = index._filtered_plan(handle, SMALL, 10)
        assert not plan.exact and not plan.post_filter and not plan.acorn
        _hits_are_exact(index, vectors, mask)
        # leaving out a patient (the query's own) narrows the matches, not the engine's plan
        excluding = SMALL.model_copy(update={"not_patient_hash": ["patient-3"]})
        assert not index._filtered_plan(handle, excluding, 10).exact
        kept = np.array([i % 50 != 3 for i in range(len(vectors))])
        _hits_are_exact(index, vectors, mask & kept, excluding)
        # two conditions (the labels' combination and a dataset, which is not combined): scanned
        two = SMALL.model_copy(update={"dataset": ["d0"]})
        assert index._filtered_plan(handle, two, 10).exact
    finally:
        index.close()


def test_the_plain_search_is_planned_on_the_engines_bound_not_the_matches(tmp_path: Path) -> None:
    """The engine bounds a condition of several values by the sum of their counts, which counts
    a point of two pathologies twice: under the threshold by its matches but not by that bound,
    a filter is scanned (the engine might plan a graph search for it)."""
    rng = np.random.default_rng(7)
    n = 1000
    vectors = _unit(rng.standard_normal((n, DIM)).astype(np.float32))
    index = EdgeIndex(tmp_path / "index", StoreSettings())
    # 100 KB: the engine's plain search under 400 points at DIM 64
    index.create_collection(CollectionConfig(name="c", dim=DIM, full_scan_threshold_kb=100))
    payloads = [{"modality": "CT", "pathology": ["a", "b"] if i < 200 else ["c"]} for i in range(n)]
    index.upsert("c", [str(uuid.UUID(int=i + 1)) for i in range(n)], vectors, payloads)
    try:
        handle = index._handle("c")
        both = SearchFilter(pathology=["a", "b"])
        # matches 200, estimated 360 (as if the values were independent), bounded by 400
        assert index._estimate(handle, both)[0] < 400
        assert index._filtered_plan(handle, both, 10).exact
        assert not index._filtered_plan(handle, SearchFilter(pathology=["a"]), 10).exact  # 200
    finally:
        index.close()
