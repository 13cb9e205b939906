"""``radsearch eval`` on the demo archive: both modes agree, baseline beats chance, outputs exist."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from core.config import RuntimeSettings, SecuritySettings, Settings
from core.errors import EvalInputError
from core.index import CollectionConfig, VectorIndex, open_index
from core.payload import SearchFilter
from evaluation import EvalOptions, evaluate_collection, evaluate_files, export_collection
from ingest.inline import IngestOptions
from radsearch.commands.main import main
from radsearch.demo import evaluate_collection as demo_evaluate_collection
from radsearch.demo_data import generate_demo_archive
from radsearch.services import ensure_collection, ingest_source, open_catalog

KS = ("P@1", "P@3", "P@5", "P@10")
COMPARED = ("n_queries", "n_index", "n_classes", "micro", "macro", "map", "majority_vote", "levels", "chance")


@pytest.fixture(scope="module")
def demo_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A data dir with the demo archive (6 images a class) indexed by ``baseline`` as ``demo``."""
    root = tmp_path_factory.mktemp("eval")
    settings = Settings(
        data_dir=root / "data",
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(hash_key="test-hash-key"),
    )
    archive = generate_demo_archive(root / "archive", per_class=6, seed=0)
    with open_catalog(settings) as catalog:
        ensure_collection(catalog, "demo", "baseline")
        report = ingest_source(
            catalog,
            settings,
            str(archive.root),
            ["demo"],
            IngestOptions(manifest=archive.manifest),
            progress=False,
        )
    assert report.frames_indexed > 50
    return settings


@pytest.fixture
def index(demo_settings: Settings) -> Iterator[VectorIndex]:
    store = open_index(demo_settings)
    try:
        yield store
    finally:
        store.close()


def _flat(obj: object, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict):
        out: dict[str, object] = {}
        for key, value in obj.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): obj}


def _cli(settings: Settings, *args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--data-dir", str(settings.data_dir), "eval", *args])
    assert code == 0
    return out.getvalue()


def test_collection_and_file_modes_agree_with_exact_search(index: VectorIndex, tmp_path: Path) -> None:
    from_collection = evaluate_collection(index, "demo", search="exact")
    n = export_collection(index, "demo", tmp_path / "demo.npy", tmp_path / "demo.csv")
    assert n == from_collection["n_index"] + from_collection["n_queries"]
    from_files = evaluate_files([tmp_path / "demo.npy"], [tmp_path / "demo.csv"])
    for key in COMPARED:
        assert _flat(from_collection[key]) == pytest.approx(_flat(from_files[key])), key
    assert from_collection["per_modality"].keys() == from_files["per_modality"].keys()


def test_a_split_no_point_holds_names_the_one_meant_and_those_held(index: VectorIndex) -> None:
    """Found in the walkthrough: ``--index-split trian`` said only that no point has it."""
    with pytest.raises(EvalInputError) as typo:
        evaluate_collection(index, "demo", index_splits=("trian",))
    assert str(typo.value) == (
        "collection 'demo' has no points with split trian (did you mean 'train'?); it holds test, train"
    )
    with pytest.raises(EvalInputError, match=r"split val/holdout; it holds test, train$"):
        evaluate_collection(index, "demo", query_splits=("val", "holdout"))


def test_baseline_well_above_chance_and_a_random_control_near_chance(index: VectorIndex) -> None:
    baseline = evaluate_collection(index, "demo")
    chance = baseline["chance"]["micro"]
    assert chance < 0.15
    assert baseline["micro"]["P@1"] >= max(0.5, 4 * chance)
    assert baseline["macro"]["P@1"] >= max(0.5, 4 * chance)
    assert baseline["micro"]["P@10"] >= 3 * chance
    # A truly random encoder: vectors independent of the images, same payloads. (A randomly
    # initialised ViT is no such control: it still ranks by image statistics, P@1 ~0.5 here.)
    points = list(index.scroll("demo", filter=SearchFilter(split=["train", "test"])))
    rng = np.random.default_rng(0)
    if index.collection_exists("noise"):
        index.drop_collection("noise")
    index.create_collection(CollectionConfig(name="noise", dim=64))
    index.upsert(
        "noise",
        [p.id for p in points],
        rng.normal(size=(len(points), 64)).astype(np.float32),
        [p.payload for p in points],
    )
    noise = evaluate_collection(index, "noise", search="exact")
    assert noise["chance"]["micro"] == pytest.approx(chance)
    # Near chance: per-query P@k averages C_y/N for a random ranking; with ~30 queries the standard
    # error is ~0.04 at P@1 and ~0.02 at P@10, so allow about four of them.
    assert abs(noise["micro"]["P@1"] - chance) < 0.16
    assert abs(noise["micro"]["P@10"] - chance) < 0.08
    assert noise["micro"]["P@1"] < baseline["micro"]["P@1"] / 2


def test_cli_json_markdown_plot_per_modality_and_ann_vs_exact(
    demo_settings: Settings, tmp_path: Path
) -> None:
    markdown, plot = tmp_path / "eval.md", tmp_path / "curve.png"
    out = _cli(
        demo_settings,
        "--collection",
        "demo",
        "--compare-exact",
        "--exclude-same",
        "patient",
        "--json",
        "--markdown",
        str(markdown),
        "--plot",
        str(plot),
    )
    result = json.loads(out)  # exactly one JSON object
    for block in ("micro", "macro"):
        assert set(result[block]) == set(KS)
        assert all(isinstance(result[block][k], float) for k in KS)
    assert result["n_queries"] > 20 and result["n_index"] > 50
    assert result["search"] == "ann"
    assert result["ann_recall"]["R@10"] >= 0.9
    assert result["exact"]["micro"]["P@1"] == pytest.approx(result["micro"]["P@1"], abs=0.05)
    assert result["exclude_same"]["field"] == "patient_hash"
    assert result["levels"]["anatomy"]["micro"]["P@1"] >= result["levels"]["pathology"]["micro"]["P@1"]
    curve = result["index_size_curve"]
    assert [p["fraction"] for p in curve] == [0.01, 0.1, 0.25, 0.5, 1.0]
    assert curve[-1]["micro"] == result["exact"]["micro"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    modalities = set(result["per_modality"])
    assert len(modalities) >= 4
    table = markdown.read_text()
    assert "Per modality" in table and "Index-size curve" in table
    for modality in modalities:
        assert f"| {modality} |" in table
    human = _cli(demo_settings, "--collection", "demo", "--ks", "1,5")
    assert "| micro P (ann) |" in human and "P@5" in human


def test_cli_files_mode_json(index: VectorIndex, demo_settings: Settings, tmp_path: Path) -> None:
    export_collection(index, "demo", tmp_path / "e.npy", tmp_path / "l.csv")
    result = json.loads(
        _cli(
            demo_settings,
            "--embeddings",
            str(tmp_path / "e.npy"),
            "--labels",
            str(tmp_path / "l.csv"),
            "--json",
        )
    )
    assert result["mode"] == "files" and result["search"] == "exact"
    assert set(result["micro"]) == set(KS)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("e.h5", b"not hdf5", "not an HDF5 file"),
        ("e.npy", None, "not a NumPy .npy array of numbers"),  # an object array: loading it would unpickle
    ],
)
def test_embeddings_that_cannot_be_read_are_a_usage_error_naming_the_file(
    name: str, content: bytes | None, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in the walkthrough: a file that is not HDF5 or a numeric .npy ended `radsearch eval`
    with "unexpected error: OSError: Unable to synchronously open file" (or a ValueError about
    pickled data)."""
    embeddings = tmp_path / name
    if content is None:
        np.save(embeddings, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        embeddings.write_bytes(content)
    labels = tmp_path / "l.csv"
    labels.write_text("filepath,dataset,split,modality,anatomic_region,normal\nx.png,d,train,CT,chest,1\n")
    argv = [
        "--data-dir",
        str(tmp_path / "data"),
        "eval",
        "--embeddings",
        str(embeddings),
        "--labels",
        str(labels),
    ]
    assert main(argv) == 2
    assert f"radsearch: error: {embeddings}: cannot read the embeddings: {reason}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("labels", "ids", "says"),
    [
        (None, None, "l.csv: cannot read the labels: No such file or directory"),
        (b"\xfa\xfb", None, "l.csv: cannot read the labels: not a UTF-8 CSV file"),
        (
            b"filepath,dataset,split,modality,anatomic_region,a\nx.png,d,train,CT,chest,yes\n",
            None,
            "l.csv:2: label columns hold numbers",
        ),
        (
            b"filepath,dataset,split,modality,anatomic_region,a\nx.png,d\n",
            None,
            "l.csv:2: 2 columns, fewer than the header names",
        ),
        (
            b"filepath,dataset,split,modality,anatomic_region,a\nx.png,d,train,CT,chest,1\n",
            b"[1",
            "ids.json: not JSON (line 1)",
        ),
    ],
    ids=["missing", "not-utf8", "not-a-number", "short-row", "ids-not-json"],
)
def test_labels_and_ids_that_cannot_be_read_are_a_usage_error_naming_the_file(
    labels: bytes | None, ids: bytes | None, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in the walkthrough: a missing or binary labels CSV, a label "yes", a short row or an
    ids file that is not JSON ended `radsearch eval` with "unexpected error: ..."."""
    embeddings = tmp_path / "e.npy"
    np.save(embeddings, np.ones((1, 4), dtype=np.float32))
    argv = ["--data-dir", str(tmp_path / "data"), "eval", "--embeddings", str(embeddings)]
    argv += ["--labels", str(tmp_path / "l.csv")]
    if labels is not None:
        (tmp_path / "l.csv").write_bytes(labels)
    if ids is not None:
        (tmp_path / "ids.json").write_bytes(ids)
        argv += ["--ids", str(tmp_path / "ids.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"radsearch: error: {tmp_path}/{says}" in err and "unexpected" not in err


def test_exclusion_agrees_between_collection_and_files(demo_settings: Settings, tmp_path: Path) -> None:
    """Leave-one-patient-out through the store's search path equals the in-memory exact one."""
    rng = np.random.default_rng(3)
    store = open_index(demo_settings)
    try:
        if store.collection_exists("patients"):
            store.drop_collection("patients")
        store.create_collection(CollectionConfig(name="patients", dim=16))
        centres = rng.normal(size=(3, 16))
        patient_offsets = 1.5 * rng.normal(size=(15, 16))
        ids, vectors, payloads = [], [], []
        for i in range(90):
            label = i % 3
            patient = f"p{i // 6}"  # six images a patient, two per class: near-duplicates across splits
            vectors.append(centres[label] + patient_offsets[i // 6] + 0.3 * rng.normal(size=16))
            ids.append(f"00000000-0000-0000-0000-{i:012d}")
            payloads.append(
                {
                    "modality": "CT",
                    "anatomy": "chest" if label < 2 else "head",
                    "pathology": [f"c{label}"],
                    "split": "test" if i % 6 in (0, 1) else "train",
                    "patient_hash": patient,
                }
            )
        store.upsert("patients", ids, np.array(vectors, dtype=np.float32), payloads)
        opts = EvalOptions(ks=(1, 3, 5, 10))
        from_collection = evaluate_collection(store, "patients", opts, search="exact", exclude_same="patient")
        export_collection(store, "patients", tmp_path / "p.npy", tmp_path / "p.csv", group_by="patient")
    finally:
        store.close()
    from_files = evaluate_files([tmp_path / "p.npy"], [tmp_path / "p.csv"], opts, exclude_same="patient")
    assert _flat(from_collection["exclude_same"]) == pytest.approx(_flat(from_files["exclude_same"]))
    assert from_collection["micro"] == pytest.approx(from_files["micro"])
    assert from_collection["exclude_same"]["n_queries"] == from_collection["n_queries"]
    # Same-patient neighbours inflate P@1; leaving the patient out lowers it.
    assert from_collection["exclude_same"]["micro"]["P@1"] < from_collection["micro"]["P@1"]


def test_demo_delegates_to_the_evaluation_module(demo_settings: Settings) -> None:
    with open_catalog(demo_settings) as catalog:
        metrics = demo_evaluate_collection(catalog, "demo")
    assert isinstance(metrics["chance"], float)
    assert set(metrics["micro"]) == set(KS) and metrics["n_index"] > 0


def test_the_evaluation_module_does_not_import_ingest() -> None:
    code = (
        "import sys, evaluation, radsearch.commands.eval; "
        "bad = [m for m in sys.modules if m == 'ingest' or m.startswith('ingest.')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ann_recall_against_exact_on_an_hnsw_indexed_collection(tmp_path: Path) -> None:
    """Above the store's indexing threshold (~20 MB of vectors) search is HNSW, not a full scan."""
    from core.config import StoreSettings
    from core.index.edge import EdgeIndex

    rng = np.random.default_rng(0)
    n, dim = 12_000, 512
    labels = rng.integers(0, 20, n)
    vectors = (0.6 * rng.normal(size=(20, dim))[labels] + rng.normal(size=(n, dim))).astype(np.float32)
    store = EdgeIndex(tmp_path / "index", StoreSettings())
    try:
        store.create_collection(
            CollectionConfig(name="ann", dim=dim, hnsw_m=4, hnsw_ef_construct=8, full_scan_threshold_kb=1)
        )
        store.upsert(
            "ann",
            [f"00000000-0000-0000-0000-{i:012d}" for i in range(n)],
            vectors,
            [
                {
                    "modality": "CT",
                    "anatomy": "chest",
                    "pathology": [f"p{v}"],
                    "split": "train" if i % 10 else "test",
                }
                for i, v in enumerate(labels.tolist())
            ],
        )
        store.optimize("ann")
        opts = EvalOptions(max_queries=100)
        low = evaluate_collection(store, "ann", opts, compare_exact=True, hnsw_ef=4)
        high = evaluate_collection(store, "ann", opts, compare_exact=True, hnsw_ef=256)
    finally:
        store.close()
    assert low["ann_recall"]["R@10"] < high["ann_recall"]["R@10"]
    assert high["ann_recall"]["R@10"] >= 0.8
    assert low["exact"]["micro"] == high["exact"]["micro"]
    assert low["micro"]["P@10"] <= low["exact"]["micro"]["P@10"]


def test_grouped_by_study_with_the_patient_excluded(demo_settings: Settings) -> None:
    """``--exclude same-patient --group-by study``: P@k over distinct studies, the query's patient
    left out, equal to a brute-force count; the image-level protocols are reported beside it."""
    rng = np.random.default_rng(5)
    store = open_index(demo_settings)
    ids, vectors, payloads = [], [], []
    try:
        if store.collection_exists("studies"):
            store.drop_collection("studies")
        store.create_collection(CollectionConfig(name="studies", dim=16))
        centres = rng.normal(size=(3, 16))
        for i in range(120):
            patient, study = i // 12, i // 4  # 3 studies of 4 images a patient
            label = study % 3
            vectors.append(
                centres[label] + 0.8 * rng.normal(size=16) + (0.5 * rng.normal(size=16) if i % 4 else 0)
            )
            ids.append(f"00000000-0000-0000-0000-{i:012d}")
            payloads.append(
                {
                    "modality": "CT",
                    "anatomy": "chest",
                    "pathology": [f"c{label}"],
                    "split": "test" if patient % 5 == 0 else "train",
                    "patient_hash": f"p{patient}",
                    "study_hash": f"s{study}",
                }
            )
        store.upsert("studies", ids, np.array(vectors, dtype=np.float32), payloads)
        opts = EvalOptions(ks=(1, 3))
        result = evaluate_collection(
            store, "studies", opts, search="exact", exclude_same="patient", group_by="study"
        )
    finally:
        store.close()

    unit = np.array(vectors) / np.linalg.norm(vectors, axis=1, keepdims=True)
    train = [i for i, p in enumerate(payloads) if p["split"] == "train"]
    precision_at_3 = []
    for q, payload in enumerate(payloads):
        if payload["split"] != "test":
            continue
        order = sorted(train, key=lambda i: -float(unit[i] @ unit[q]))
        studies: list[int] = []
        for i in order:
            if payloads[i]["patient_hash"] != payload["patient_hash"] and i not in studies:
                if all(payloads[j]["study_hash"] != payloads[i]["study_hash"] for j in studies):
                    studies.append(i)
        relevant = {
            payloads[i]["study_hash"] for i in train if payloads[i]["pathology"] == payload["pathology"]
        }
        hits = sum(payloads[i]["pathology"] == payload["pathology"] for i in studies[:3])
        precision_at_3.append(hits / min(3, len(relevant)))
    grouped = result["grouped"]
    assert (grouped["group_by"], grouped["exclude_same"]) == ("study", "patient")
    assert grouped["n_groups"] == len({payloads[i]["study_hash"] for i in train})
    assert grouped["micro"]["P@3"] == pytest.approx(float(np.mean(precision_at_3)))
    assert "exclude_same" in result and "micro" in result  # both protocols

    out = _cli(
        demo_settings,
        "--collection",
        "studies",
        "--search",
        "exact",
        "--exclude",
        "same-patient",
        "--group-by",
        "study",
        "--index-split",
        "train",
        "--query-split",
        "test",
    )
    assert "grouped by study, same patient excluded" in out and "same patient_hash excluded" in out


def test_the_command_line_loads_the_evaluation_only_to_evaluate() -> None:
    """The evaluation (and its NumPy code) was imported at every command's start, ``--help``
    included: ~40 ms of each. It is now imported by ``eval`` alone, and its defaults, written in
    the help, are the protocol's."""
    code = """
import contextlib, io, json, sys
from radsearch.commands.main import main
help_text = io.StringIO()
with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
    main(["eval", "--help"])
print(json.dumps({"loaded": "evaluation" in sys.modules, "help": help_text.getvalue()}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["loaded"] is False
    from evaluation.metrics import DEFAULT_KS
    from evaluation.protocol import DEFAULT_FRACTIONS

    help_text = " ".join(seen["help"].split())
    assert f"default {','.join(map(str, DEFAULT_KS))}" in help_text
    assert f"default with --plot: {','.join(map(str, DEFAULT_FRACTIONS))}" in help_text
