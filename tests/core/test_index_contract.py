"""One contract for the vector-index backends: Qdrant Edge (in this process, and in a child process
of its own) and qdrant-client (local mode).

Every test runs against each; expectations come from NumPy and plain Python over the same data,
and one test checks the two backends against each other.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from qdrant_client import QdrantClient

from core.config import StoreSettings
from core.errors import (
    CollectionExists,
    CollectionNotFound,
    IndexStoreError,
    InvalidFilter,
    InvalidVector,
    PointNotFound,
)
from core.index.base import CollectionConfig, Hit, VectorIndex, group_hits
from core.index.edge import EdgeIndex
from core.index.hosted import HostedEdgeIndex
from core.index.server import QdrantServerIndex
from core.payload import NO_RULES_HASH, SearchFilter

DIM = 16
N = 240
MODALITIES = ("CT", "MR", "US", "CR")
PATHOLOGIES = ("nodule", "effusion", "fracture", "mass", "normal")

# qdrant-client's local mode says, on every call, that it ignores payload indexes and HNSW params.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
    pytest.mark.filterwarnings("ignore:Local mode performs exact:UserWarning"),
]


def make_index(kind: str, root: Path) -> VectorIndex:
    if kind == "edge":
        return EdgeIndex(root, StoreSettings())
    if kind == "hosted":
        return HostedEdgeIndex(root, StoreSettings())
    return QdrantServerIndex(QdrantClient(":memory:"), StoreSettings())


@pytest.fixture(params=["edge", "hosted", "server"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorIndex]:
    idx = make_index(request.param, tmp_path / "index")
    try:
        yield idx
    finally:
        idx.close()


@dataclass
class Data:
    ids: list[str]
    vectors: NDArray[np.float32]  # L2-normalised
    payloads: list[dict[str, Any]]

    def matching(self, predicate: Any) -> list[int]:
        return [i for i, p in enumerate(self.payloads) if predicate(p)]


def make_data(n: int = N, dim: int = DIM, seed: int = 0) -> Data:
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(n, dim)).astype(np.float32)
    vectors = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    payloads: list[dict[str, Any]] = []
    for i in range(n):
        k = int(rng.integers(1, 3))
        pathology = sorted({str(p) for p in rng.choice(PATHOLOGIES, size=k, replace=False)})
        payloads.append(
            {
                "modality": MODALITIES[int(rng.integers(len(MODALITIES)))],
                "pathology": pathology,
                "dataset": "train" if i % 3 else "test",
                "key": f"img/{i:04d}.png",
                "frame": 0,
            }
        )
    ids = [str(uuid.uuid4()) for _ in range(n)]
    return Data(ids, vectors.astype(np.float32), payloads)


@pytest.fixture
def data() -> Data:
    return make_data()


@pytest.fixture
def filled(index: VectorIndex, data: Data) -> VectorIndex:
    index.create_collection(CollectionConfig(name="c", dim=DIM, metadata={"encoder": "test"}))
    for start in range(0, N, 100):
        stop = start + 100
        index.upsert("c", data.ids[start:stop], data.vectors[start:stop], data.payloads[start:stop])
    return index


def exact_top(data: Data, query: NDArray[np.float32], rows: list[int], k: int) -> list[str]:
    q = query / np.linalg.norm(query)
    scores = data.vectors[rows] @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return [data.ids[rows[i]] for i in order]


# -- collections -----------------------------------------------------------------------------


def test_create_list_exists_drop(index: VectorIndex) -> None:
    assert index.list_collections() == []
    assert not index.collection_exists("a")
    index.create_collection(CollectionConfig(name="b", dim=4))
    index.create_collection(CollectionConfig(name="a", dim=8))
    assert index.list_collections() == ["a", "b"]
    assert index.collection_exists("a")
    assert index.collection_config("a").dim == 8
    index.drop_collection("a")
    assert index.list_collections() == ["b"]
    assert not index.collection_exists("a")
    index.create_collection(CollectionConfig(name="a", dim=2))
    assert index.collection_config("a").dim == 2
    assert index.count("a") == 0


def test_duplicate_create_raises(index: VectorIndex) -> None:
    index.create_collection(CollectionConfig(name="a", dim=4, metadata={"v": 1}))
    with pytest.raises(CollectionExists):
        index.create_collection(CollectionConfig(name="a", dim=8))
    assert index.collection_config("a").dim == 4
    assert index.collection_config("a").metadata == {"v": 1}


def test_failed_create_leaves_nothing(index: VectorIndex) -> None:
    with pytest.raises(IndexStoreError):
        index.create_collection(CollectionConfig(name="a", dim=4, metadata={"bad": object()}))
    with pytest.raises(IndexStoreError):
        index.create_collection(CollectionConfig(name="../escape", dim=4))
    with pytest.raises(IndexStoreError):
        index.create_collection(CollectionConfig(name="z", dim=0))
    assert index.list_collections() == []
    index.create_collection(CollectionConfig(name="a", dim=4))
    assert index.list_collections() == ["a"]


def test_unknown_collection_errors(index: VectorIndex) -> None:
    v = np.ones((1, 4), dtype=np.float32)
    uid = str(uuid.uuid4())
    calls: list[Callable[[], object]] = [
        lambda: index.drop_collection("nope"),
        lambda: index.collection_config("nope"),
        lambda: index.update_metadata("nope", {"a": 1}),
        lambda: index.upsert("nope", [uid], v, [{}]),
        lambda: index.search("nope", v[0]),
        lambda: index.retrieve("nope", [uid]),
        lambda: index.count("nope"),
        lambda: index.facet("nope", "modality"),
        lambda: list(index.scroll("nope")),
        lambda: index.delete("nope", [uid]),
        lambda: index.delete_by_filter("nope", SearchFilter(modality=["CT"])),
    ]
    for call in calls:
        with pytest.raises(CollectionNotFound):
            call()


# -- points ----------------------------------------------------------------------------------


def test_upsert_retrieve_round_trip(index: VectorIndex) -> None:
    index.create_collection(CollectionConfig(name="c", dim=3))
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    raw = np.array([[3.0, 0.0, 4.0], [1.0, 1.0, 1.0]], dtype=np.float32)
    payloads: list[dict[str, Any]] = [
        {"modality": "CT", "pathology": ["a", "b"], "rows": 512},
        {"modality": "MR", "pathology": []},
    ]
    index.upsert("c", ids, raw, payloads)
    missing = str(uuid.uuid4())
    got = index.retrieve("c", [ids[1], missing, ids[0]], with_vectors=True)
    assert [p.id for p in got] == [ids[1], ids[0]]
    assert got[0].payload == payloads[1]
    assert got[1].payload == payloads[0]
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert got[1].vector is not None and got[0].vector is not None
    np.testing.assert_allclose(got[1].vector, expected[0], atol=1e-6)
    np.testing.assert_allclose(got[0].vector, expected[1], atol=1e-6)
    without = index.retrieve("c", ids)
    assert all(p.vector is None for p in without)
    assert index.retrieve("c", ["not-a-uuid"]) == []
    # Ids come back canonical whatever case they went in with.
    assert index.retrieve("c", [ids[0].upper()])[0].id == ids[0]


def test_reupsert_overwrites(filled: VectorIndex, data: Data) -> None:
    assert filled.count("c") == N
    new_vec = data.vectors[1:2]
    filled.upsert("c", [data.ids[0]], new_vec, [{"modality": "XA", "pathology": ["x"]}])
    assert filled.count("c") == N
    (point,) = filled.retrieve("c", [data.ids[0]], with_vectors=True)
    assert point.payload == {"modality": "XA", "pathology": ["x"]}
    assert point.vector is not None
    np.testing.assert_allclose(point.vector, data.vectors[1], atol=1e-6)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(np.array([[np.nan, 1, 0, 0]], dtype=np.float32), id="nan"),
        pytest.param(np.array([[np.inf, 1, 0, 0]], dtype=np.float32), id="inf"),
        pytest.param(np.zeros((1, 4), dtype=np.float32), id="zero"),
        pytest.param(np.ones((1, 5), dtype=np.float32), id="wrong-dim"),
    ],
)
def test_validation_rejects_and_stores_nothing(index: VectorIndex, bad: NDArray[np.float32]) -> None:
    index.create_collection(CollectionConfig(name="c", dim=4))
    good = np.ones((1, 4), dtype=np.float32)
    batch = np.concatenate([good, bad]) if bad.shape[1] == 4 else bad
    ids = [str(uuid.uuid4()) for _ in range(batch.shape[0])]
    with pytest.raises(InvalidVector):
        index.upsert("c", ids, batch, [{} for _ in ids])
    assert index.count("c") == 0
    with pytest.raises(InvalidVector):
        index.search("c", bad[0])


def test_upsert_argument_mismatch(index: VectorIndex) -> None:
    index.create_collection(CollectionConfig(name="c", dim=4))
    vecs = np.ones((2, 4), dtype=np.float32)
    with pytest.raises(InvalidVector):
        index.upsert("c", [str(uuid.uuid4())], vecs, [{}])
    with pytest.raises(IndexStoreError):
        index.upsert("c", [str(uuid.uuid4()), str(uuid.uuid4())], vecs, [{}])
    with pytest.raises(IndexStoreError):
        index.upsert("c", ["a", "b"], vecs, [{}, {}])
    # the id that is not a UUID is named by its position, never echoed
    with pytest.raises(IndexStoreError, match=r"^point id \[1\] is not a UUID$"):
        index.upsert("c", [str(uuid.uuid4()), "DOE^JOHN"], vecs, [{}, {}])
    assert index.count("c") == 0


# -- search ----------------------------------------------------------------------------------


def test_search_best_first_self_hit(filled: VectorIndex, data: Data) -> None:
    for i in (0, 17, 111):
        hits = filled.search("c", data.vectors[i], limit=10)
        assert hits[0].id == data.ids[i]
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert hits[0].payload == data.payloads[i]
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert [h.id for h in hits] == exact_top(data, data.vectors[i], list(range(N)), 10)


def test_open_collections_changes_nothing_it_opens(filled: VectorIndex, data: Data) -> None:
    filled.open_collections()
    filled.open_collections()  # again: nothing left to open
    assert filled.list_collections() == ["c"]
    assert filled.search("c", data.vectors[5], limit=1)[0].id == data.ids[5]


def test_awaited_searches_answer_as_the_searches(filled: VectorIndex, data: Data) -> None:
    flt = SearchFilter(modality=["CT", "MR"])

    async def awaited() -> tuple[list[Hit], list[Hit]]:
        by_vector = await filled.search_async(
            "c", data.vectors[5], filter=flt, limit=5, offset=1, exclude_ids=[data.ids[7]]
        )
        by_point = await filled.search_near_point_async("c", data.ids[5], filter=flt, limit=5, offset=1)
        return by_vector, by_point

    by_vector, by_point = asyncio.run(awaited())
    assert by_vector == filled.search(
        "c", data.vectors[5], filter=flt, limit=5, offset=1, exclude_ids=[data.ids[7]]
    )
    assert by_point == filled.search_near_point("c", data.ids[5], filter=flt, limit=5, offset=1)
    assert [hit.payload["modality"] in ("CT", "MR") for hit in by_vector] == [True] * 5
    assert data.ids[7] not in {hit.id for hit in by_vector}


def test_search_accepts_unnormalised_query(filled: VectorIndex, data: Data) -> None:
    hits = filled.search("c", data.vectors[5] * 7.5, limit=1)
    assert hits[0].id == data.ids[5]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("flt", "predicate"),
    [
        pytest.param(SearchFilter(modality=["CT"]), lambda p: p["modality"] == "CT", id="one-value"),
        pytest.param(
            SearchFilter(modality=["CT", "MR"]), lambda p: p["modality"] in ("CT", "MR"), id="any-of"
        ),
        pytest.param(
            SearchFilter(pathology=["nodule", "mass"]),
            lambda p: bool({"nodule", "mass"} & set(p["pathology"])),
            id="list-field-any-of",
        ),
        pytest.param(
            SearchFilter(modality=["US"], pathology=["effusion"], dataset=["train"]),
            lambda p: p["modality"] == "US" and "effusion" in p["pathology"] and p["dataset"] == "train",
            id="all-of-across-fields",
        ),
    ],
)
def test_filters(filled: VectorIndex, data: Data, flt: SearchFilter, predicate: Any) -> None:
    rows = data.matching(predicate)
    assert rows, "the test data should match"
    query = data.vectors[3]
    hits = filled.search("c", query, filter=flt, limit=20)
    assert [h.id for h in hits] == exact_top(data, query, rows, 20)
    assert all(predicate(h.payload) for h in hits)
    assert filled.count("c", flt) == len(rows)


def test_filter_no_match(filled: VectorIndex, data: Data) -> None:
    assert filled.search("c", data.vectors[0], filter=SearchFilter(modality=["PET"])) == []
    assert filled.search("c", data.vectors[0], filter=SearchFilter(modality=["CT"], dataset=["none"])) == []
    assert filled.count("c", SearchFilter(pathology=["absent"])) == 0


def test_empty_filter_values_rejected(filled: VectorIndex, data: Data) -> None:
    with pytest.raises(InvalidFilter):
        filled.search("c", data.vectors[0], filter=SearchFilter(modality=[]))


def test_offset_pages_are_slices(filled: VectorIndex, data: Data) -> None:
    query = data.vectors[42]
    big = [h.id for h in filled.search("c", query, limit=30)]
    pages = [h.id for off in range(0, 30, 10) for h in filled.search("c", query, limit=10, offset=off)]
    assert pages == big
    flt = SearchFilter(modality=["MR", "US"])
    big_f = [h.id for h in filled.search("c", query, filter=flt, limit=12)]
    assert [h.id for h in filled.search("c", query, filter=flt, limit=4, offset=8)] == big_f[8:12]


def test_score_threshold(filled: VectorIndex, data: Data) -> None:
    query = data.vectors[9]
    all_hits = filled.search("c", query, limit=50)
    threshold = all_hits[7].score - 1e-6
    hits = filled.search("c", query, limit=50, score_threshold=threshold)
    assert [h.id for h in hits] == [h.id for h in all_hits[:8]]
    assert all(h.score >= threshold for h in hits)


def test_exclude_ids(filled: VectorIndex, data: Data) -> None:
    query = data.vectors[11]
    before = [h.id for h in filled.search("c", query, limit=10)]
    excluded = before[:3]
    after = filled.search("c", query, limit=10, exclude_ids=[*excluded, "not-a-uuid"])
    assert not set(excluded) & {h.id for h in after}
    assert [h.id for h in after][:7] == before[3:]
    flt = SearchFilter(modality=[data.payloads[11]["modality"]])
    after_f = filled.search("c", query, filter=flt, limit=5, exclude_ids=[data.ids[11]])
    assert data.ids[11] not in {h.id for h in after_f}
    assert len(after_f) == 5


def test_search_near_point_is_a_search_by_its_vector_without_it(filled: VectorIndex, data: Data) -> None:
    flt = SearchFilter(modality=[data.payloads[11]["modality"]])
    near = filled.search_near_point("c", data.ids[11], filter=flt, limit=5, offset=1)
    rows = [i for i in data.matching(lambda p: p["modality"] == data.payloads[11]["modality"]) if i != 11]
    assert [h.id for h in near] == exact_top(data, data.vectors[11], rows, 6)[1:]
    assert all(h.payload["modality"] == data.payloads[11]["modality"] for h in near)
    with pytest.raises(PointNotFound, match="does not exist in 'c'"):
        filled.search_near_point("c", str(uuid.UUID(int=10**9)))
    # whatever a caller sent where an id goes is not echoed
    with pytest.raises(PointNotFound, match=r"^no such point in 'c' \(point ids are UUIDs\)$"):
        filled.search_near_point("c", "DOE^JOHN")
    with pytest.raises(CollectionNotFound):
        filled.search_near_point("nope", data.ids[11])


def _with_hashes(index: VectorIndex, data: Data) -> list[dict[str, Any]]:
    """Collection ``g``: the data with patient/study/series hashes (every tenth point has none)."""
    payloads = [
        {
            **p,
            **(
                {}
                if i % 10 == 0
                else {"patient_hash": f"p{i % 7}", "study_hash": f"s{i % 21}", "series_hash": f"r{i % 42}"}
            ),
        }
        for i, p in enumerate(data.payloads)
    ]
    index.create_collection(CollectionConfig(name="g", dim=DIM))
    index.upsert("g", data.ids, data.vectors, payloads)
    return payloads


@pytest.mark.parametrize("field", ["study_hash", "series_hash", "key"])
def test_search_groups_group_the_exact_ranking(index: VectorIndex, data: Data, field: str) -> None:
    payloads = _with_hashes(index, data)
    for q in (0, 17, 101):
        query = data.vectors[q]
        ranked = exact_top(data, query, list(range(N)), N)
        expected = group_hits(
            [Hit(id=pid, score=0.0, payload=payloads[data.ids.index(pid)]) for pid in ranked],
            field,
            group_size=2,
            limit=5,
        )
        groups = index.search_groups("g", query, group_by=field, group_size=2, limit=5)
        assert [(g.key, [h.id for h in g.hits]) for g in groups] == [
            (g.key, [h.id for h in g.hits]) for g in expected
        ]
        for group in groups:
            assert all(h.payload[field] == group.key for h in group.hits)
    # exclusions and filters hold inside groups too
    flt = SearchFilter(modality=["CT", "MR"]).excluding("patient_hash", ["p1"])
    groups = index.search_groups(
        "g", data.vectors[3], group_by="study_hash", limit=50, filter=flt, exclude_ids=[data.ids[4]]
    )
    hits = [h for g in groups for h in g.hits]
    assert hits and all(
        h.payload["modality"] in ("CT", "MR") and h.payload["patient_hash"] != "p1" for h in hits
    )
    assert data.ids[4] not in {h.id for h in hits}


def test_exclusions_never_come_back(index: VectorIndex, data: Data) -> None:
    payloads = _with_hashes(index, data)
    excluded = SearchFilter().excluding("patient_hash", ["p0", "p3"]).excluding("study_hash", ["s5"])
    assert excluded.exclusions() == [("patient_hash", ["p0", "p3"]), ("study_hash", ["s5"])]
    rows = [
        i
        for i, p in enumerate(payloads)
        if p.get("patient_hash") not in ("p0", "p3") and p.get("study_hash") != "s5"
    ]
    query = data.vectors[9]
    hits = index.search("g", query, filter=excluded, limit=N)
    assert [h.id for h in hits] == exact_top(data, query, rows, N)
    assert index.count("g", excluded) == len(rows)
    both = excluded.excluding("patient_hash", ["p2"])
    narrowed = SearchFilter(modality=["US"], not_patient_hash=both.not_patient_hash, not_study_hash=["s5"])
    rows = [i for i in rows if payloads[i].get("patient_hash") != "p2" and payloads[i]["modality"] == "US"]
    assert [h.id for h in index.search("g", query, filter=narrowed, limit=N)] == exact_top(
        data, query, rows, N
    )


def test_exact_and_ann_agree_on_small_data(filled: VectorIndex, data: Data) -> None:
    filled.optimize("c")
    for i in (2, 50, 199):
        ann = filled.search("c", data.vectors[i], limit=5, hnsw_ef=64)
        exact = filled.search("c", data.vectors[i], limit=5, exact=True)
        assert [h.id for h in ann] == [h.id for h in exact]
        np.testing.assert_allclose([h.score for h in ann], [h.score for h in exact], atol=1e-5)


def test_limit_and_offset_validation(filled: VectorIndex, data: Data) -> None:
    with pytest.raises(IndexStoreError):
        filled.search("c", data.vectors[0], limit=0)
    with pytest.raises(IndexStoreError):
        filled.search("c", data.vectors[0], offset=-1)


# -- counts, facets, scroll ------------------------------------------------------------------


def test_count(filled: VectorIndex, data: Data) -> None:
    assert filled.count("c") == N
    assert filled.count("c", SearchFilter()) == N
    flt = SearchFilter(dataset=["test"], pathology=["normal"])
    expected = data.matching(lambda p: p["dataset"] == "test" and "normal" in p["pathology"])
    assert filled.count("c", flt) == len(expected)


def test_facet(filled: VectorIndex, data: Data) -> None:
    modality = filled.facet("c", "modality")
    expected = Counter(p["modality"] for p in data.payloads)
    assert modality == dict(expected)
    counts = list(modality.values())
    assert counts == sorted(counts, reverse=True)
    pathology = filled.facet("c", "pathology")
    assert pathology == dict(Counter(label for p in data.payloads for label in p["pathology"]))
    flt = SearchFilter(modality=["CT"])
    ct = filled.facet("c", "pathology", filter=flt)
    assert ct == dict(Counter(lab for p in data.payloads if p["modality"] == "CT" for lab in p["pathology"]))
    top2 = filled.facet("c", "pathology", limit=2)
    assert list(top2.items()) == list(pathology.items())[:2]
    with pytest.raises(InvalidFilter):
        filled.facet("c", "frame")


def test_a_facet_leaves_out_values_whose_points_were_deleted(filled: VectorIndex, data: Data) -> None:
    extra = str(uuid.UUID(int=10**6))
    filled.upsert("c", [extra], data.vectors[:1], [{"modality": "XA", "pathology": ["rare"]}])
    assert filled.facet("c", "modality")["XA"] == 1
    assert filled.facet("c", "modality", exact=False)["XA"] == 1
    filled.delete("c", [extra])
    expected = dict(Counter(p["modality"] for p in data.payloads))
    assert filled.facet("c", "modality") == expected
    assert set(filled.facet("c", "modality", exact=False)) == set(expected)  # counts approximate
    assert "rare" not in filled.facet("c", "pathology", exact=False)


def test_scroll_returns_every_point_once(filled: VectorIndex, data: Data) -> None:
    seen = [p.id for p in filled.scroll("c", batch_size=37)]
    assert len(seen) == N
    assert set(seen) == set(data.ids)
    flt = SearchFilter(modality=["MR"])
    points = list(filled.scroll("c", filter=flt, batch_size=10, with_vectors=True))
    rows = data.matching(lambda p: p["modality"] == "MR")
    assert sorted(p.id for p in points) == sorted(data.ids[i] for i in rows)
    by_id = {data.ids[i]: i for i in rows}
    for p in points:
        assert p.payload == data.payloads[by_id[p.id]]
        assert p.vector is not None
        np.testing.assert_allclose(p.vector, data.vectors[by_id[p.id]], atol=1e-6)


# -- deletes ---------------------------------------------------------------------------------


def test_delete(filled: VectorIndex, data: Data) -> None:
    gone = data.ids[:5]
    filled.delete("c", [*gone, str(uuid.uuid4()), "not-a-uuid"])
    assert filled.count("c") == N - 5
    assert filled.retrieve("c", gone) == []
    assert data.ids[0] not in {h.id for h in filled.search("c", data.vectors[0], limit=10)}
    filled.delete("c", [])
    assert filled.count("c") == N - 5


def test_delete_by_filter(filled: VectorIndex, data: Data) -> None:
    flt = SearchFilter(modality=["CT"], pathology=["nodule"])
    doomed = data.matching(lambda p: p["modality"] == "CT" and "nodule" in p["pathology"])
    assert doomed
    filled.delete_by_filter("c", flt)
    assert filled.count("c") == N - len(doomed)
    assert filled.count("c", flt) == 0
    with pytest.raises(InvalidFilter):
        filled.delete_by_filter("c", SearchFilter())
    assert filled.count("c") == N - len(doomed)


def test_overwrite_payloads_relabels_existing_points_only(filled: VectorIndex, data: Data) -> None:
    """A relabel replaces whole payloads (one per point), keeps vectors, and never creates a point."""
    target, other = data.ids[0], data.ids[1]
    before = filled.retrieve("c", [target], with_vectors=True)[0]
    missing = str(uuid.uuid4())
    filled.overwrite_payloads(
        "c", {target: {"modality": "XR", "key": "relabelled"}, missing: {"modality": "XR"}, "bad": {}}
    )
    after = filled.retrieve("c", [target], with_vectors=True)[0]
    assert after.payload == {"modality": "XR", "key": "relabelled"}
    assert before.vector is not None and after.vector is not None
    assert np.allclose(before.vector, after.vector, atol=1e-6)
    assert filled.count("c") == N and filled.retrieve("c", [missing]) == []
    assert filled.retrieve("c", [other])[0].payload == data.payloads[1]
    assert filled.count("c", SearchFilter(modality=["XR"])) == 1 + len(
        data.matching(lambda p: p["modality"] == "XR")
    )


def test_labels_from_carries_what_label_rules_gave_a_stored_point(index: VectorIndex) -> None:
    """`upsert` and `overwrite_payloads` with ``labels_from``: a point takes the label fields and
    ``labels_hash`` of the stored point named, read before the write, where label rules gave
    that point its labels; labels of no rule, and points that do not exist, carry nothing."""
    index.create_collection(CollectionConfig(name="l", dim=DIM))
    ruled, bare, new, other = (str(uuid.UUID(int=i)) for i in range(1, 5))
    vectors = make_data(4).vectors
    labelled = {
        "modality": "CT",
        "anatomy": "chest",
        "pathology": ["nodule"],
        "labels_hash": "r1",
        "key": "a",
    }
    index.upsert(
        "l", [ruled, bare], vectors[:2], [labelled, {"modality": "MR", "labels_hash": NO_RULES_HASH}]
    )
    plain = {"modality": "US", "key": "b", "labels_hash": NO_RULES_HASH}
    index.upsert(
        "l",
        [ruled, bare, new, other],
        vectors,
        [plain, dict(plain), dict(plain), dict(plain)],
        labels_from={ruled: ruled, bare: bare, new: ruled, other: str(uuid.uuid4())},
    )
    payloads = {p.id: p.payload for p in index.retrieve("l", [ruled, bare, new, other])}
    kept = {"modality": "CT", "anatomy": "chest", "pathology": ["nodule"], "labels_hash": "r1", "key": "b"}
    assert payloads[ruled] == kept and payloads[new] == kept  # its own, or another frame's
    assert payloads[bare] == plain and payloads[other] == plain
    index.overwrite_payloads("l", {new: {"key": "c", "labels_hash": NO_RULES_HASH}}, labels_from={new: new})
    assert index.retrieve("l", [new])[0].payload == {**kept, "key": "c"}


def test_register_source_keeps_names_in_metadata(index: VectorIndex) -> None:
    index.create_collection(CollectionConfig(name="s", dim=4, metadata={"catalog": {"x": 1}}))
    index.register_source("s", "site-a", "s3://bucket")
    index.register_source("s", "site-b", "/data/b")
    index.register_source("s", "site-a", "s3://moved")
    metadata = index.collection_config("s").metadata
    assert metadata == {"catalog": {"x": 1}, "sources": {"site-a": "s3://moved", "site-b": "/data/b"}}


# -- metadata, quantization, persistence -----------------------------------------------------


def test_metadata_round_trip_and_merge(index: VectorIndex) -> None:
    meta = {"encoder": {"name": "biomedclip", "dim": 512}, "weights": "v1", "tags": ["a", "b"]}
    config = CollectionConfig(name="m", dim=4, metadata=meta, quantization="int8", hnsw_m=32)
    index.create_collection(config)
    assert index.collection_config("m") == config
    index.update_metadata("m", {"weights": "v2", "alias": "current"})
    got = index.collection_config("m")
    assert got.metadata == {**meta, "weights": "v2", "alias": "current"}
    assert got.hnsw_m == 32 and got.quantization == "int8"


@pytest.mark.parametrize("on_disk", [False, True])
def test_int8_quantized_collection(index: VectorIndex, on_disk: bool) -> None:
    data = make_data(n=300, dim=32, seed=3)
    index.create_collection(CollectionConfig(name="q", dim=32, quantization="int8", on_disk=on_disk))
    index.upsert("q", data.ids, data.vectors, data.payloads)
    index.optimize("q")
    for i in (0, 150):
        hits = index.search("q", data.vectors[i], limit=5)
        assert hits[0].id == data.ids[i]
        assert hits[0].score == pytest.approx(1.0, abs=1e-3)


def test_edge_persistence(tmp_path: Path, data: Data) -> None:
    root = tmp_path / "index"
    first = EdgeIndex(root, StoreSettings())
    first.create_collection(CollectionConfig(name="p", dim=DIM, metadata={"weights": "v1"}))
    first.upsert("p", data.ids, data.vectors, data.payloads)
    first.update_metadata("p", {"alias": "x"})
    first.delete("p", data.ids[:2])
    before = [(h.id, h.score) for h in first.search("p", data.vectors[7], limit=10)]
    first.close()

    second = EdgeIndex(root, StoreSettings())
    try:
        assert second.list_collections() == ["p"]
        assert second.collection_config("p").metadata == {"weights": "v1", "alias": "x"}
        assert second.count("p") == N - 2
        after = [(h.id, h.score) for h in second.search("p", data.vectors[7], limit=10)]
        assert [a for a, _ in after] == [b for b, _ in before]
        (point,) = second.retrieve("p", [data.ids[9]], with_vectors=True)
        assert point.payload == data.payloads[9]
    finally:
        second.close()


def test_edge_leftover_directory_is_not_a_collection(tmp_path: Path) -> None:
    root = tmp_path / "index"
    (root / "half" / "shard").mkdir(parents=True)
    idx = EdgeIndex(root, StoreSettings())
    try:
        assert idx.list_collections() == []
        assert not idx.collection_exists("half")
        idx.create_collection(CollectionConfig(name="half", dim=4))
        assert idx.list_collections() == ["half"]
        assert idx.count("half") == 0
    finally:
        idx.close()


def test_edge_concurrent_updates_and_queries(tmp_path: Path) -> None:
    data = make_data(n=400, dim=DIM, seed=5)
    idx = EdgeIndex(tmp_path / "index", StoreSettings())
    idx.create_collection(CollectionConfig(name="t", dim=DIM))
    idx.upsert("t", data.ids[:100], data.vectors[:100], data.payloads[:100])
    errors: list[BaseException] = []

    def writer(lo: int) -> None:
        try:
            for s in range(lo, lo + 150, 25):
                idx.upsert("t", data.ids[s : s + 25], data.vectors[s : s + 25], data.payloads[s : s + 25])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for i in range(60):
                hits = idx.search("t", data.vectors[i % 100], limit=3)
                assert hits[0].id == data.ids[i % 100]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(100,)), threading.Thread(target=writer, args=(250,))]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert idx.count("t") == 400
    finally:
        idx.close()


def test_backends_agree(tmp_path: Path) -> None:
    data = make_data(n=300, dim=24, seed=11)
    edge = EdgeIndex(tmp_path / "edge", StoreSettings())
    server = QdrantServerIndex(QdrantClient(":memory:"), StoreSettings())
    try:
        for idx in (edge, server):
            idx.create_collection(CollectionConfig(name="x", dim=24))
            idx.upsert("x", data.ids, data.vectors, data.payloads)
        rng = np.random.default_rng(12)
        queries = rng.normal(size=(10, 24)).astype(np.float32)
        filters = [None, SearchFilter(modality=["CT", "US"]), SearchFilter(pathology=["fracture"])]
        for q in queries:
            for flt in filters:
                a = edge.search("x", q, filter=flt, limit=10, offset=2)
                b = server.search("x", q, filter=flt, limit=10, offset=2)
                assert [h.id for h in a] == [h.id for h in b]
                np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-4)
                assert [h.payload for h in a] == [h.payload for h in b]
        for field in ("modality", "pathology", "dataset"):
            assert edge.facet("x", field) == server.facet("x", field)
        flt = SearchFilter(modality=["MR"])
        assert edge.count("x", flt) == server.count("x", flt)
        assert sorted(p.id for p in edge.scroll("x", filter=flt)) == sorted(
            p.id for p in server.scroll("x", filter=flt)
        )
    finally:
        edge.close()
        server.close()
