"""Hand-computed cases for the paper's modified P@k and its kin, the exact search and file mode."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from evaluation import EvalInputError, EvalOptions, Record, evaluate_files, exact_topk
from evaluation.data import build_eval_data
from evaluation.metrics import (
    ann_recall,
    average_precision,
    chance_precision,
    majority_vote_correct,
    micro_macro,
    modified_precision,
    modified_precision_at_k,
)
from evaluation.protocol import class_sizes, evaluate, score_ranking

A, B, C = 0, 1, 2


def arr(*rows: list[int]) -> np.ndarray:
    return np.array(rows, dtype=np.int64)


def test_min_k_cy_rule_for_classes_smaller_than_k() -> None:
    # C_A = 2: P@3, P@5 and P@10 only look at the top 2 and divide by 2.
    q = np.array([A])
    nb = arr([A, B, A, A, A, A, A, A, A, A])
    p = modified_precision(q, nb, np.array([2]), (1, 2, 3, 5, 10))
    assert p.tolist() == [[1.0, 0.5, 0.5, 0.5, 0.5]]
    # A class of 1: P@k is whether the first hit is right, for every k.
    p1 = modified_precision(q, arr([B, A, A]), np.array([1]), (1, 3))
    assert p1.tolist() == [[0.0, 0.0]]
    # Large class: the plain precision.
    p_big = modified_precision(q, arr([A, B, A, B, A]), np.array([50]), (1, 3, 5))
    assert p_big.tolist() == [[1.0, pytest.approx(2 / 3), 0.6]]


def test_short_result_lists_count_as_misses() -> None:
    p = modified_precision(np.array([A]), arr([A, -1, -1]), np.array([5]), (1, 3, 10))
    assert p.tolist() == [[1.0, pytest.approx(1 / 3), pytest.approx(1 / 5)]]


def test_empty_classes_are_skipped_and_counted() -> None:
    result = modified_precision_at_k(
        ["a", "b", "c"],
        [["a", "b"], ["a", "b"], ["a", "a"]],
        {"a": 1, "b": 1},  # c has no index images
        ks=(1, 2),
    )
    assert result["n_queries"] == 2
    assert result["n_skipped_queries"] == 1
    assert result["micro"] == {"P@1": 0.5, "P@2": 0.5}  # b: n = min(2, 1) = 1, and its top hit is a
    nothing = modified_precision_at_k(["c"], [["a"]], {"a": 3}, ks=(1,))
    assert nothing["micro"] == {"P@1": 0.0} and nothing["n_queries"] == 0
    per_query = modified_precision(np.array([C]), arr([A]), np.array([0]), (1,))
    assert math.isnan(per_query[0, 0])
    micro, macro = micro_macro(per_query, np.array([C]))
    assert math.isnan(micro[0]) and math.isnan(macro[0])


def test_micro_vs_macro_on_an_imbalanced_set() -> None:
    # Three A queries all right, one B query wrong: micro 3/4, macro (1 + 0) / 2.
    q = np.array([A, A, A, B])
    nb = arr([A], [A], [A], [A])
    p = modified_precision(q, nb, np.array([10, 10, 10, 10]), (1,))
    micro, macro = micro_macro(p, q)
    assert micro.tolist() == [0.75]
    assert macro.tolist() == [0.5]


def test_average_precision_hand_computed() -> None:
    # Relevant at ranks 1 and 3, C_y = 2: AP@3 = (1/1 + 2/3) / min(3, 2) = 5/6.
    ap = average_precision(np.array([A]), arr([A, B, A]), np.array([2]), (1, 3))
    assert ap[0].tolist() == [1.0, pytest.approx(5 / 6)]
    # Large class: AP@3 divides by 3.
    ap_big = average_precision(np.array([A]), arr([A, B, A]), np.array([9]), (3,))
    assert ap_big[0, 0] == pytest.approx(5 / 9)


def test_majority_vote_ties_go_to_the_higher_ranked_class() -> None:
    q = np.array([A, A, A])
    nb = arr([B, A, A, B], [A, B, B, A], [B, B, A, -1])
    vote = majority_vote_correct(q, nb, np.array([3, 3, 3]), (1, 4))
    # Row 1: 2-2 tie, B ranked first -> wrong. Row 2: tie, A first -> right. Row 3: B wins 2-1.
    assert vote[:, 1].tolist() == [0.0, 1.0, 0.0]
    assert vote[:, 0].tolist() == [0.0, 1.0, 0.0]
    none = majority_vote_correct(np.array([A]), arr([-1, -1]), np.array([1]), (2,))
    assert none.tolist() == [[0.0]]


def test_ann_recall_hand_computed() -> None:
    exact = arr([0, 1, 2], [3, 4, 5])
    approx = arr([0, 2, 9], [3, 4, 5])
    assert ann_recall(approx, exact, (1, 3)) == {"R@1": 1.0, "R@3": pytest.approx((2 / 3 + 1) / 2)}


def test_string_api_matches_the_array_api_and_chance() -> None:
    result = modified_precision_at_k(
        ["a", "a", "b"], [["a", "b", "a"], ["b", "b", "a"], ["b", "a", "a"]], {"a": 2, "b": 5}
    )
    # a: n=min(k,2); b: n=min(k,5) (only 3 hits listed: the rest are misses).
    assert result["micro"]["P@1"] == pytest.approx((1 + 0 + 1) / 3)
    assert result["micro"]["P@3"] == pytest.approx((0.5 + 0.0 + 1 / 3) / 3)
    assert result["macro"]["P@3"] == pytest.approx(((0.5 + 0.0) / 2 + 1 / 3) / 2)
    assert chance_precision(["a", "b"], ["a", "b", "b", "b"]) == pytest.approx((0.25 + 0.75) / 2)


def test_exact_topk_matches_brute_force_in_small_chunks_and_breaks_ties_by_position() -> None:
    rng = np.random.default_rng(1)
    index = rng.normal(size=(50, 8)).astype(np.float32)
    index /= np.linalg.norm(index, axis=1, keepdims=True)
    queries = rng.normal(size=(7, 8)).astype(np.float32)
    got = exact_topk(queries, index, 5, chunk_bytes=4 * 50 * 2)  # two queries per block
    want = np.argsort(-(queries @ index.T), axis=1, kind="stable")[:, :5]
    assert (got == want).all()
    # Ties: three identical index vectors come back in position order.
    tied = np.tile(index[:1], (3, 1))
    assert exact_topk(index[:1], tied, 3).tolist() == [[0, 1, 2]]
    # Fewer index images than the depth: padded with -1.
    assert exact_topk(index[:1], index[:2], 4)[0, 2:].tolist() == [-1, -1]


def test_same_patient_exclusion_shrinks_c_y_and_removes_hits() -> None:
    # Query of patient p has its own near-duplicate in the index (class X/a/1) plus one other X/a/1.
    base = np.eye(4, dtype=np.float32)
    index_vectors = np.stack([base[0] + 0.01 * base[1], base[0] + 0.5 * base[2], base[3], base[1]])
    index_records = [
        Record("i0", "X/a/1", "X", "a", "p"),
        Record("i1", "X/a/1", "X", "a", "q"),
        Record("i2", "X/a/2", "X", "a", "r"),
        Record("i3", "X/a/1", "X", "a", "p"),
    ]
    query_records = [Record("q0", "X/a/1", "X", "a", "p")]
    data = build_eval_data(index_records, index_vectors, query_records, base[:1], source="t", group_field="g")
    sizes = class_sizes(
        data.queries.labels,
        data.index.labels,
        len(data.classes),
        query_groups=data.queries.groups,
        index_groups=data.index.groups,
    )
    assert sizes.tolist() == [1]  # three X/a/1 in the index, two of them the query's own patient
    ranking = exact_topk(
        data.queries.vectors,
        data.index.vectors,
        3,
        query_groups=data.queries.groups,
        index_groups=data.index.groups,
    )
    assert ranking.tolist() == [[1, 2, -1]]
    result = evaluate(
        data,
        lambda exclude: exact_topk(
            data.queries.vectors,
            data.index.vectors,
            3,
            query_groups=data.queries.groups if exclude else None,
            index_groups=data.index.groups if exclude else None,
        ),
        EvalOptions(ks=(1, 3)),
        search="exact",
    )
    assert result["micro"]["P@1"] == 1.0  # the duplicate from the same patient
    assert result["exclude_same"]["micro"] == {"P@1": 1.0, "P@3": 1.0}  # i1 is first once i0 goes
    scored = score_ranking(data, ranking, (1,), exclude_same_group=True)
    assert scored["n_queries"] == 1


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def test_file_mode_npy_and_paper_h5_agree(tmp_path: Path) -> None:
    import h5py  # a dev dependency: missing is a broken environment, not a reason to skip

    rng = np.random.default_rng(0)
    fixed = ["filepath", "dataset", "split", "modality", "anatomic_region"]
    labels_chest = ["XR/chest/No Finding", "XR/chest/Pneumothorax"]
    labels_ct = ["CT/lung/nodule", "CT/lung/normal"]
    chest_rows: list[list[str]] = []
    ct_rows: list[list[str]] = []
    paths: list[str] = []
    centres = {name: rng.normal(size=16) for name in labels_chest + labels_ct}
    vectors = []
    for i in range(40):
        chest = i % 2 == 0
        names = labels_chest if chest else labels_ct
        label = names[(i // 2) % 2]
        split = "test" if i % 5 == 0 else "train"
        path = f"{'nih14' if chest else 'radimagenet'}/images/{i:03d}.png"  # nested, as in the paper's h5
        onehot = ["1.0" if n == label else "0.0" for n in names]
        row = [
            path,
            "nih14" if chest else "radimagenet",
            split,
            "XR" if chest else "CT",
            "chest" if chest else "lung",
            *onehot,
        ]
        (chest_rows if chest else ct_rows).append(row)
        paths.append(path)
        vectors.append(centres[label] + 0.8 * rng.normal(size=16))
    _write_csv(tmp_path / "nih14.csv", fixed + labels_chest, chest_rows)
    _write_csv(tmp_path / "radimagenet.csv", fixed + labels_ct, ct_rows)
    matrix = np.array(vectors, dtype=np.float32)
    np.save(tmp_path / "emb.npy", matrix)
    (tmp_path / "ids.txt").write_text("\n".join(paths) + "\n")
    with h5py.File(tmp_path / "emb.h5", "w") as h5f:
        for path, vector in zip(paths, matrix, strict=True):
            h5f.create_dataset(path, data=vector)
    csvs = [tmp_path / "nih14.csv", tmp_path / "radimagenet.csv"]
    opts = EvalOptions(ks=(1, 3, 5, 10), fractions=(0.5, 1.0))
    from_npy = evaluate_files([tmp_path / "emb.npy"], csvs, opts, ids=tmp_path / "ids.txt")
    from_h5 = evaluate_files([tmp_path / "emb.h5"], csvs, opts)
    assert from_npy["n_queries"] == from_h5["n_queries"] == 8
    assert from_npy["n_index"] == 32 and from_npy["n_classes"] == 4
    for key in ("micro", "macro", "map", "majority_vote", "levels", "index_size_curve"):
        assert from_npy[key] == from_h5[key], key
    assert set(from_npy["per_modality"]) == {"XR", "CT"}
    assert from_npy["levels"]["anatomy"]["micro"]["P@1"] == 1.0  # anatomy = modality/region: 2 groups


def test_file_mode_rejects_bad_csvs(tmp_path: Path) -> None:
    np.save(tmp_path / "e.npy", np.ones((2, 4), dtype=np.float32))
    _write_csv(
        tmp_path / "two.csv",
        ["filepath", "dataset", "split", "modality", "anatomic_region", "a", "b"],
        [["x", "d", "train", "CT", "lung", "1", "1"], ["y", "d", "test", "CT", "lung", "1", "0"]],
    )
    with pytest.raises(EvalInputError, match="exactly one positive"):
        evaluate_files([tmp_path / "e.npy"], [tmp_path / "two.csv"])
    _write_csv(tmp_path / "schema.csv", ["path", "split", "label"], [["x", "train", "a"]])
    with pytest.raises(EvalInputError, match="first columns"):
        evaluate_files([tmp_path / "e.npy"], [tmp_path / "schema.csv"])
    _write_csv(
        tmp_path / "ok.csv",
        ["filepath", "dataset", "split", "modality", "anatomic_region", "a"],
        [["x", "d", "train", "CT", "lung", "1"], ["y", "d", "test", "CT", "lung", "1"]],
    )
    with pytest.raises(EvalInputError, match="patient"):
        evaluate_files([tmp_path / "e.npy"], [tmp_path / "ok.csv"], exclude_same="patient")
    (tmp_path / "short-ids.txt").write_text("x\n")
    with pytest.raises(EvalInputError, match="2 embeddings but 1 ids"):
        evaluate_files([tmp_path / "e.npy"], [tmp_path / "ok.csv"], ids=tmp_path / "short-ids.txt")


def test_file_mode_refuses_what_it_could_not_rank(tmp_path: Path) -> None:
    """Found in the walkthrough: NaN (or all-zero) embeddings were evaluated into a meaningless P@1,
    and an --index-split no row has ended with "unexpected error: ValueError: cannot reshape"."""
    _write_csv(
        tmp_path / "ok.csv",
        ["filepath", "dataset", "split", "modality", "anatomic_region", "a"],
        [["x", "d", "train", "CT", "lung", "1"], ["y", "d", "test", "CT", "lung", "1"]],
    )
    for name, rows in (("nan", [[np.nan] * 4, [1.0] * 4]), ("zeros", [[1.0] * 4, [0.0] * 4])):
        np.save(tmp_path / f"{name}.npy", np.array(rows, dtype=np.float32))
        with pytest.raises(EvalInputError) as refused:
            evaluate_files([tmp_path / f"{name}.npy"], [tmp_path / "ok.csv"])
        assert "1 embedding(s) hold NaN, infinite values or only zeros" in str(refused.value)
        assert f"(first: {'x' if name == 'nan' else 'y'})" in str(refused.value)
    np.save(tmp_path / "e.npy", np.ones((2, 4), dtype=np.float32))
    with pytest.raises(EvalInputError) as refused:
        evaluate_files([tmp_path / "e.npy"], [tmp_path / "ok.csv"], index_splits=("val",))
    assert (
        str(refused.value) == "the labels CSV has no rows with split val (the index); its splits: test, train"
    )
