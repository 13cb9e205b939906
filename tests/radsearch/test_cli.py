"""The command line, in process (``main(argv)``) and once through the installed console script."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import numpy as np
import pytest
from minio import Minio
from PIL import Image

from core.config import Settings
from core.index.edge import EdgeIndex
from radsearch.commands.common import LABELS_KEPT, MANIFEST_UNMATCHED, MODALITY_CONFLICTS
from radsearch.commands.main import build_parser, main
from tests.workers.conftest import use_settings_env


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for modality, pattern in (("CT", "rows"), ("MR", "cols")):
        for i in range(4):
            base = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (64, 1))
            img = base if pattern == "rows" else base.T
            img = np.roll(img, i * 3, axis=0)
            path = root / modality / f"{pattern}_{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.astype(np.uint8)).save(path)
    (root / "bad.png").write_bytes(b"not an image")
    return root


def _last_json(out: str) -> dict[str, object]:
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_ingest_search_and_list_json(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "data")
    code = main(
        [
            "--data-dir",
            data,
            "ingest",
            str(folder),
            "--collection",
            "c",
            "--path-template",
            "{modality}/{file}",
            "--json",
        ]
    )
    assert code == 0
    summary = _last_json(capsys.readouterr().out)
    assert set(summary) >= {"collection", "objects", "frames_indexed", "skipped", "failed", "errors"}
    assert summary["collection"] == "c"
    assert (summary["objects"], summary["frames_indexed"], summary["skipped"], summary["failed"]) == (
        9,
        8,
        0,
        1,
    )
    assert summary["errors"] == [{"key": "bad.png", "reason": summary["errors"][0]["reason"]}]  # type: ignore[index]

    # a second run with the same label rules skips every unchanged object
    again = [
        "--data-dir",
        data,
        "ingest",
        str(folder),
        "--collection",
        "c",
        "--path-template",
        "{modality}/{file}",
    ]
    assert main([*again, "--json"]) == 0
    second = _last_json(capsys.readouterr().out)
    assert (second["skipped"], second["relabelled"], second["frames_indexed"]) == (8, 0, 0)
    # a run without the template keeps the labels it gave (the search below still finds MR), and says so
    assert main(again[:-2]) == 0
    out = capsys.readouterr().out
    assert "8 unchanged skipped, 0 relabelled" in out and f"  8 {LABELS_KEPT}" in out
    # a manifest keyed from the folder above the one ingested labels nothing, and is said to
    manifest = tmp_path / "labels.csv"
    manifest.write_text("key,pathology\nimages/CT/rows_0.png,nodule\nMR/cols_0.png,normal\n")
    assert main([*again[:-2], "--manifest", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert f"  1 {MANIFEST_UNMATCHED} (first: images/CT/rows_0.png)" in out and "1 relabelled" in out

    query = folder / "MR" / "cols_1.png"
    assert main(["--data-dir", data, "search", str(query), "--collection", "c", "-k", "3", "--json"]) == 0
    hits = _last_json(capsys.readouterr().out)["hits"]
    assert len(hits) == 3 and hits[0]["payload"]["modality"] == "MR"  # type: ignore[index]
    # --limit, the API's word for -k (session 26's walkthrough: "unrecognized arguments: --limit 3")
    assert (
        main(["--data-dir", data, "search", str(query), "--collection", "c", "--limit", "2", "--json"]) == 0
    )
    assert _last_json(capsys.readouterr().out)["hits"] == hits[:2]

    assert (
        main(["--data-dir", data, "search", str(query), "--collection", "c", "--modality", "CT", "--json"])
        == 0
    )
    hits = _last_json(capsys.readouterr().out)["hits"]
    assert hits and all(h["payload"]["modality"] == "CT" for h in hits)  # type: ignore[index,union-attr]

    # modality codes are upper-case whatever the case given; a value nothing holds warns on stderr
    argv = ["--data-dir", data, "search", str(query), "--collection", "c", "--json", "--modality"]
    assert main([*argv, "ct"]) == 0
    captured = capsys.readouterr()
    found: Any = _last_json(captured.out)
    assert [h["payload"]["modality"] for h in found["hits"]] == ["CT"] * 4
    assert captured.err == ""
    assert main([*argv, "mri"]) == 0
    captured = capsys.readouterr()
    found = _last_json(captured.out)
    assert found["hits"] == []
    [warning] = found["warnings"]
    assert (warning["field"], warning["value"], warning["suggestions"]) == ("modality", "MRI", ["MR"])
    assert captured.err == f"radsearch: warning: {warning['message']}\n"
    # as a table: nothing found is said, not a header over nothing
    assert main([*argv[:-2], "--modality", "mri"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "no hits (see the warning above)"

    assert main(["--data-dir", data, "search", str(query), "--collection", "c"]) == 0
    assert "MR" in capsys.readouterr().out

    assert main(["--data-dir", data, "collections", "list", "--json"]) == 0
    listing = _last_json(capsys.readouterr().out)
    (row,) = listing["collections"]
    assert datetime.fromisoformat(row.pop("created_at")).tzinfo is not None
    assert row == {
        "name": "c",
        "encoder": "baseline",
        "dim": 512,
        "points": 8,
        "weights": "builtin",
        "text_search": False,
    }


def test_ingest_says_which_modality_labels_disagree_with_the_dicom_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from radsearch.demo_data import generate_demo_archive

    archive = generate_demo_archive(tmp_path / "archive", per_class=2, seed=3)
    dicoms = archive.root / "dicom" / "CT"
    n = sum(1 for _ in dicoms.rglob("*.dcm"))
    args = ["--data-dir", str(tmp_path / "data"), "ingest", str(dicoms), "--collection", "c"]
    # one folder short: {modality} takes CT/'s anatomy folders (chest, abdomen)
    assert main([*args, "--path-template", "{modality}/{anatomy}/{file}"]) == 0
    out = capsys.readouterr().out
    assert f"  {n} {MODALITY_CONFLICTS}: " in out
    assert (
        "CHEST where the DICOM header says CT (" in out and "ABDOMEN where the DICOM header says CT (" in out
    )
    # the header's own modality, no rule: nothing to say
    assert main([*args, "--path-template", "{anatomy}/{pathology}/{file}"]) == 0
    assert MODALITY_CONFLICTS not in capsys.readouterr().out


def test_collections_create_takes_the_store_default_quantization(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = str(tmp_path / "data")

    def create(name: str, *extra: str) -> object:
        argv = ["--data-dir", data, "collections", "create", name, "--encoder", "baseline", "--json"]
        assert main([*argv, *extra]) == 0
        return _last_json(capsys.readouterr().out)

    assert create("default") == {
        "name": "default",
        "encoder": "baseline",
        "dim": 512,
        "weights": "builtin",
        "quantization": "int8",
        "on_disk": False,
    }
    assert create("float32", "--quantization", "none", "--on-disk") == {
        "name": "float32",
        "encoder": "baseline",
        "dim": 512,
        "weights": "builtin",
        "quantization": "none",
        "on_disk": True,
    }
    monkeypatch.setenv("RADSEARCH_STORE__DEFAULT_QUANTIZATION", "none")
    assert create("operator-default")["quantization"] == "none"  # type: ignore[index]


def test_usage_and_configuration_errors_exit_non_zero(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "data")
    assert main(["--data-dir", data, "ingest", str(tmp_path / "missing"), "--collection", "c"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(["--data-dir", data, "ingest", str(folder), "--collection", "c", "--encoder", "biomedclipp"])
        == 2
    )
    assert "(did you mean 'biomedclip'?)" in capsys.readouterr().err
    assert main(["--data-dir", data, "ingest", str(folder), "--collection", "Bad Name!"]) == 2
    assert main(["--data-dir", data, "search", str(folder / "bad.png"), "--collection", "nope"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["ingest"])
    assert exc.value.code == 2


def test_detach_without_a_job_is_refused_before_anything_is_indexed(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in the walkthrough: ``ingest --detach`` with no server and no workers ran the ingest
    here to its end, as if the option had not been given."""
    data = str(tmp_path / "data")
    assert main(["--data-dir", data, "ingest", str(folder), "--collection", "c", "--detach"]) == 2
    assert "--detach applies to a job" in capsys.readouterr().err
    assert main(["--data-dir", data, "collections", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"collections": []}


def test_an_invalid_setting_names_its_variable_and_rule_never_its_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RADSEARCH_STORE__RELEASE_MAPPED_MB", "-7")
    monkeypatch.setenv("RADSEARCH_STORE__MIN_FREE_MB", "lots-of-secret-text")
    assert main(["--data-dir", str(tmp_path / "data"), "collections", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("radsearch: error: invalid setting: ")
    assert "RADSEARCH_STORE__RELEASE_MAPPED_MB: Input should be greater than or equal to 0" in err
    assert "RADSEARCH_STORE__MIN_FREE_MB: Input should be a valid integer" in err
    assert "-7" not in err and "secret" not in err and "unexpected" not in err


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://pacs.example:8042/dicom-web", "must start with dicomweb+http://"),
        ("dicomweb+http://user:hunter2@pacs.example/dicom-web", "must not hold credentials"),
    ],
)
def test_a_pacs_url_is_checked_at_start_up(
    url: str, rule: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in the walkthrough: a PACS URL without the dicomweb+ prefix was taken, and each search
    by UID then answered the client 400 "a DICOMweb source starts with dicomweb+http://"."""
    monkeypatch.setenv("RADSEARCH_DICOMWEB__URL", url)
    assert main(["--data-dir", str(tmp_path / "data"), "collections", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("radsearch: error: invalid setting: RADSEARCH_DICOMWEB__URL: ") and rule in err
    assert "pacs.example" not in err and "hunter2" not in err


@pytest.mark.parametrize(
    ("variable", "value", "argv", "rule"),
    [
        (
            "S3__ENDPOINT",
            "http://127.0.0.1:9000",
            ["ingest", "s3://raw/x/", "--collection", "c"],
            "give host:port",
        ),
        ("REDIS__URL", "127.0.0.1:6379", ["jobs", "list"], "must start with redis://, rediss:// or unix://"),
    ],
)
def test_an_endpoint_in_the_wrong_form_is_refused_naming_the_form(
    variable: str,
    value: str,
    argv: list[str],
    rule: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Found in the walkthrough: RADSEARCH_S3__ENDPOINT=http://host:9000 ended an ingest with
    "unexpected error: ValueError: path in endpoint is not allowed"; a Redis URL without its
    scheme, `jobs list` with "unexpected error: ValueError" and `radsearch worker` with a traceback."""
    monkeypatch.setenv(f"RADSEARCH_{variable}", value)
    assert main(["--data-dir", str(tmp_path / "data"), *argv]) == 2
    err = capsys.readouterr().err
    assert f"invalid setting: RADSEARCH_{variable}: {rule}" in err


@pytest.mark.parametrize(
    ("variable", "value", "rule"),
    [
        ("API__PORT", "70000", "Input should be less than or equal to 65535"),
        ("API__MAX_LIMIT", "0", "Input should be greater than or equal to 1"),
        ("STORE__HNSW_EF", "0", "Input should be greater than or equal to 1"),
        ("STORE__POST_FILTER_MIN_SHARE", "1.5", "Input should be less than or equal to 1"),
        ("RUNTIME__TORCH_THREADS", "0", "Input should be greater than or equal to 1"),
        # one error naming the variable, not two naming RADSEARCH_RUNTIME__CPU_INT8_LINEAR__BOOL
        # and __LITERAL['AUTO'] (session 24)
        ("RUNTIME__CPU_INT8_LINEAR", "maybe", "must be auto, true or false"),
    ],
)
def test_a_number_setting_out_of_its_bounds_is_refused_at_start_up(
    variable: str,
    value: str,
    rule: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Found in the walkthrough: RADSEARCH_API__PORT=70000 was taken and `serve` ended with
    "unexpected error: OverflowError"; a max_limit of 0 made every search "-k must be between 1
    and 0"; an ef of 0 was taken silently."""
    monkeypatch.setenv(f"RADSEARCH_{variable}", value)
    assert main(["--data-dir", str(tmp_path / "data"), "collections", "list"]) == 2
    assert f"invalid setting: RADSEARCH_{variable}: {rule}" in capsys.readouterr().err


@pytest.mark.parametrize("port", ["70000", "0", "http"])
def test_a_port_that_is_none_is_refused_by_the_parser(port: str, tmp_path: Path) -> None:
    """Found in the walkthrough: `serve --port 70000` ended with "unexpected error: OverflowError"."""
    with pytest.raises(SystemExit) as refused:
        main(["--data-dir", str(tmp_path / "data"), "serve", "--port", port])
    assert refused.value.code == 2
    assert not (tmp_path / "data" / "index" / "owner.json").exists()


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (["demo", "--no-serve", "--per-class", "1"], "argument --per-class: must be at least 2, got 1"),
        (["eval", "--collection", "c", "--max-queries", "0"], "argument --max-queries: must be at least 1"),
        (["eval", "--collection", "c", "--seed", "-1"], "argument --seed: must be at least 0, got -1"),
        (["eval", "--collection", "c", "--hnsw-ef", "0"], "argument --hnsw-ef: must be at least 1"),
        (["eval", "--embeddings", "e.npy", "--chunk-mb", "0"], "argument --chunk-mb: must be at least 1"),
        (["jobs", "list", "--limit", "0"], "argument --limit: must be at least 1, got 0"),
        (["worker", "--concurrency", "0"], "argument --concurrency: must be at least 1, got 0"),
        (["worker", "--max-tasks-per-child", "-1"], "argument --max-tasks-per-child: must be at least 0"),
        (["worker", "--metrics-port", "70000"], "argument --metrics-port: 70000 is not a port"),
        (["worker", "--loglevel", "LOUD"], "argument --loglevel: invalid choice: 'LOUD'"),
        (["demo", "--per-class", "many"], "argument --per-class: expected a whole number, got 'many'"),
    ],
)
def test_a_number_option_out_of_its_bounds_is_refused_by_the_parser(
    command: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in the walkthrough: `demo --per-class 0` and `eval --seed -1` ended with "unexpected
    error: ValueError" (and `demo --per-class 1`, on a fresh data dir, with "collection 'demo' has
    no points with split test": one image per class leaves none to query with); `eval
    --max-queries 0` evaluated every query and `--hnsw-ef 0` searched at
    the default ef, silently; `jobs list --limit 0` said "no jobs"; `worker --concurrency 0` started
    a pool of the machine's size; `worker --max-tasks-per-child -1` printed Celery's traceback and
    exited 0."""
    with pytest.raises(SystemExit) as refused:
        main(["--data-dir", str(tmp_path / "data"), *command])
    assert refused.value.code == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "data" / "demo-archive").exists()


NAME_RULE = "a collection name must be 1 to 48 lower-case letters, digits, '_' or '-'"


@pytest.mark.parametrize(
    "command",
    [
        ["collections", "create", "Bad/Name", "--encoder", "baseline"],
        ["collections", "alias", "Upper", "c"],
        ["collections", "restore", "c", "--as", "Bad Name"],
        ["snapshot", "restore", "20260101T000000Z-abcdef", "--as", "x" * 49],
    ],
)
def test_a_new_collection_name_off_the_rule_is_refused_by_the_parser(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in the walkthrough: `snapshot restore --as Bad/Name` said "String should match pattern
    '^[a-z0-9]...'" through a server, and named the rule by a regular expression without one. The
    rule is said in words, here and by the API, before anything runs."""
    with pytest.raises(SystemExit) as refused:
        main(["--data-dir", str(tmp_path / "data"), *command])
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert NAME_RULE in err and "Bad" not in err and "Upper" not in err


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (
            ["--collection", "c", "--labels", "l.csv", "--chunk-mb", "4"],
            "--labels, --chunk-mb only with --embeddings",
        ),
        (["--collection", "c", "--ids", "i.txt", "--group-column", "pid"], "--ids, --group-column only with"),
        (
            ["--embeddings", "e.npy", "--labels", "l.csv", "--search", "exact"],
            "--search only with --collection",
        ),
        (
            ["--embeddings", "e.npy", "--labels", "l.csv", "--compare-exact", "--hnsw-ef", "9"],
            "--compare-exact, --hnsw-ef",
        ),
        (
            ["--embeddings", "e.npy", "--labels", "l.csv", "--group-column", "pid"],
            "--group-column names the patient or study column of --exclude-same: give both",
        ),
        # found in session 24's walkthrough: a k given twice was reported once
        (["--collection", "c", "--ks", "1,5,1"], "ks must not repeat a value"),
        (["--collection", "c", "--index-fractions", "0.5,0.5"], "index fractions must not repeat a value"),
    ],
)
def test_eval_options_of_the_other_mode_are_refused(
    options: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in the walkthrough: `eval --collection` with files-mode options (`--labels`, `--ids`,
    `--chunk-mb`...), or `eval --embeddings` with collection-mode ones (`--search exact`,
    `--hnsw-ef`), ran and left them unused without a word."""
    assert main(["--data-dir", str(tmp_path / "data"), "eval", *options]) == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "notaurl", "http://", "ftp://h/"])
def test_a_server_url_that_is_none_is_refused_before_any_request(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in the walkthrough: `--url 127.0.0.1:8000` (or RADSEARCH_URL=...) ended with "the
    radsearch server at 127.0.0.1:8000 did not answer: UnsupportedProtocol"."""
    with pytest.raises(SystemExit) as refused:
        main(["--data-dir", str(tmp_path / "data"), "--url", url, "collections", "list"])
    assert refused.value.code == 2
    assert "argument --url: expected an http:// or https:// URL with a host" in capsys.readouterr().err
    monkeypatch.setenv("RADSEARCH_URL", url)
    assert main(["--data-dir", str(tmp_path / "data"), "collections", "list"]) == 2
    err = capsys.readouterr().err
    assert "invalid setting: RADSEARCH_URL: must be an http:// or https:// URL" in err
    assert err.strip().endswith("with a host, e.g. http://127.0.0.1:8000")  # the value is not echoed


@pytest.mark.parametrize(
    ("option", "name", "says"),
    [
        ("--markdown", "missing/x.md", "the folder {tmp}/missing does not exist"),
        ("--plot", "curve.txt", "the file name ends in .png, .svg, .pdf"),
        ("--plot", ".", "a folder, not a file"),
    ],
)
def test_eval_refuses_an_output_it_could_not_write_before_it_runs(
    option: str, name: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in the walkthrough: `eval --markdown missing/x.md` (or `--plot curve.txt`) ran the
    whole evaluation, then ended with "unexpected error: FileNotFoundError" (or ValueError)."""
    path = tmp_path / name
    code = main(["--data-dir", str(tmp_path / "data"), "eval", "--collection", "nosuch", option, str(path)])
    assert code == 2
    err = capsys.readouterr().err
    assert says.format(tmp=tmp_path) in err and "collection 'nosuch'" not in err  # before any lookup


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (
            ["--queues", "plan,embedd"],
            "--queues 'plan,embedd': no queue 'embedd' (did you mean 'embed'?); the queues are plan and",
        ),
        # no CUDA here, or fewer than 100 devices on a machine with CUDA
        (["--device", "cuda:99"], "--device is 'cuda:99' but"),
        (["--device", "gpu"], "--device 'gpu' is not a torch device"),
    ],
)
def test_a_worker_that_could_not_do_its_work_does_not_start(
    options: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in the walkthrough: `worker --queues plan,embedd` consumed a queue nothing is sent to,
    and `worker --device cuda` on a machine without CUDA started and would fail every batch."""
    assert main(["--data-dir", str(tmp_path / "data"), "worker", *options]) == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("command", [["collections", "list"], ["demo", "--no-serve"], ["serve"]])
def test_a_data_dir_that_cannot_be_one_is_a_usage_error(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in the walkthrough: a data dir that is a file, or under a folder that cannot be created,
    ended commands with "unexpected error: NotADirectoryError" (or FileNotFoundError)."""
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert main(["--data-dir", str(a_file), *command]) == 2
    assert "invalid setting: RADSEARCH_DATA_DIR: is a file, not a folder" in capsys.readouterr().err
    if command[0] != "demo":  # the demo writes its archive first
        assert main(["--data-dir", str(a_file / "under"), *command]) == 2
        err = capsys.readouterr().err
        assert f"cannot create the store's folder {a_file / 'under' / 'index'}: Not a directory" in err


def test_an_encoder_spec_file_that_cannot_be_used_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in the walkthrough: `--encoder @missing.json` ended with "unexpected error:
    FileNotFoundError", and a spec missing fields printed pydantic's report with its input."""
    data = str(tmp_path / "data")
    assert (
        main(["--data-dir", data, "collections", "create", "c", "--encoder", f"@{tmp_path}/missing.json"])
        == 2
    )
    assert f"cannot read the encoder spec {tmp_path}/missing.json: No such file" in capsys.readouterr().err
    spec = tmp_path / "spec.json"
    spec.write_text('{"name": "x"}')
    assert main(["--data-dir", data, "collections", "create", "c", "--encoder", f"@{spec}"]) == 2
    err = capsys.readouterr().err
    assert (
        "invalid encoder spec: family: Field required; checkpoint: Field required; dim: Field required" in err
    )
    assert "input_value" not in err


def test_a_replaced_setting_is_refused_naming_its_successor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RADSEARCH_STORE__RELEASE_ORIGINALS_EVERY", "4321")
    assert main(["--data-dir", str(tmp_path / "data"), "collections", "list"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "radsearch: error: invalid setting: RADSEARCH_STORE__RELEASE_ORIGINALS_EVERY was replaced by "
        "RADSEARCH_STORE__RELEASE_MAPPED_MB (an RSS budget in MB)\n"
    )


def test_a_replaced_setting_in_a_json_group_is_refused_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RADSEARCH_STORE", '{"release_originals_every": 4321}')
    assert main(["--data-dir", str(tmp_path / "data"), "collections", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("radsearch: error: invalid setting: RADSEARCH_STORE: ")
    assert "replaced by release_mapped_mb" in err and "4321" not in err


@pytest.mark.parametrize(
    ("variable", "expected"),
    [
        ("RADSEARCH_SECURITY__API_KEY", " (did you mean RADSEARCH_SECURITY__API_KEYS?)"),
        ("RADSEARCH_STORE__MIN_FREE", " (did you mean RADSEARCH_STORE__MIN_FREE_MB?)"),
        ("RADSEARCH_DATADIR", " (did you mean RADSEARCH_DATA_DIR?)"),
        ("RADSEARCH_API_URL", " (did you mean RADSEARCH_URL?)"),  # the walkthrough's (session 25)
        ("radsearch_store__typo", ""),
        ("RADSEARCH_NOTHING_LIKE_IT", ""),
    ],
)
def test_a_variable_that_names_no_setting_is_refused_with_the_nearest_name(
    variable: str,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(variable, "secret-value")
    assert main(["--data-dir", str(tmp_path / "data"), "collections", "list"]) == 2
    err = capsys.readouterr().err
    assert err == f"radsearch: error: invalid setting: {variable} is not a setting{expected}\n"


@pytest.mark.parametrize(
    ("oidc", "expected"),
    [
        ({}, "give jwks_url (the provider's keys"),
        ({"jwks_url": "https://kc/certs", "shared_key": "k"}, "give jwks_url (the provider's keys"),
        ({"shared_key": "k"}, "a shared_key checks HS256, HS384 or HS512 only"),
        ({"jwks_url": "https://kc/certs", "algorithms": ["HS256"]}, "a JWKS holds public keys"),
    ],
)
def test_an_oidc_setting_that_could_check_no_token_is_refused_at_start_up(
    oidc: dict[str, object],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Found in the walkthrough: without a key to check signatures with (or with algorithms the key
    cannot check) the server started and answered 401 to every token, saying nothing of why."""
    monkeypatch.setenv(
        "RADSEARCH_SECURITY__OIDC", json.dumps({"issuer": "https://kc", "audience": "radsearch", **oidc})
    )
    assert main(["--data-dir", str(tmp_path / "data"), "collections", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"radsearch: error: invalid setting: RADSEARCH_SECURITY__OIDC: {expected}"), err
    assert 'k"' not in err


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "RADSEARCH_STORE",
            '{"min_fre_mb": 1}',
            "RADSEARCH_STORE__MIN_FRE_MB is not a setting (did you mean 'min_free_mb'?)",
        ),
        (
            "RADSEARCH_SECURITY__API_KEYS",
            '[{"name": "a", "role": "reader", "sha256": "' + "0" * 64 + '", "expires": "2027-01-01"}]',
            "RADSEARCH_SECURITY__API_KEYS__0__EXPIRES is not a setting",
        ),
        (
            "RADSEARCH_SECURITY__OIDC",
            '{"issuer": "https://kc", "audience": "radsearch", "jwks_url": "https://kc/certs", '
            '"role_clam": "groups"}',
            "RADSEARCH_SECURITY__OIDC__ROLE_CLAM is not a setting (did you mean 'role_claim'?)",
        ),
        (
            "RADSEARCH_EVENTS__SUBSCRIPTIONS",
            '[{"bucket": "raw", "collections": ["c"], "path_templte": "{modality}/x"}]',
            "RADSEARCH_EVENTS__SUBSCRIPTIONS__0__PATH_TEMPLTE is not a setting "
            "(did you mean 'path_template'?)",
        ),
    ],
)
def test_a_misspelt_key_in_a_json_setting_is_refused_not_left_at_its_default(
    variable: str,
    value: str,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Found in the walkthrough: an API key's "expires" or OIDC's "role_clam" was dropped without a
    word (the key never expires; roles are read from the default claim)."""
    monkeypatch.setenv(variable, value)
    assert main(["--data-dir", str(tmp_path / "data"), "collections", "list"]) == 2
    assert capsys.readouterr().err == f"radsearch: error: invalid setting: {expected}\n"


@pytest.mark.parametrize(
    "variable",
    [
        "RADSEARCH_S3_ACCESS_KEY",  # compose's, not a setting
        "RADSEARCH_FUZZ_SECONDS",
        "RADSEARCH_SECURITY__OIDC__ROLE_MAP__RADIOLOGIST",  # a key of a mapping setting
        "RADSEARCH_RUNTIME__CPU_INT8_LINEAR",
        "RADSEARCH_URL",
    ],
)
def test_settings_and_companion_variables_are_accepted(
    variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, "")  # empty: ignored by the settings, named all the same
    assert main(["--data-dir", str(tmp_path / "data"), "collections", "list"]) == 0


def test_a_subscription_path_template_is_checked_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    subscription = {
        "bucket": "raw",
        "collections": ["c"],
        "path_template": "{modality}/{anatomy}/{pathology}",
    }
    monkeypatch.setenv("RADSEARCH_EVENTS__SUBSCRIPTIONS", json.dumps([subscription]))
    assert main(["--data-dir", str(tmp_path / "data"), "collections", "list"]) == 2
    assert capsys.readouterr().err == (
        "radsearch: error: invalid setting: RADSEARCH_EVENTS__SUBSCRIPTIONS__0__PATH_TEMPLATE: its last part "
        "{pathology} would take each file's name as its label: end the template with /{file} (or /{_})\n"
    )


def test_a_list_setting_that_is_not_json_names_its_group_and_the_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RADSEARCH_STORE__COMBINED_FILTER_FIELDS", "modality,secret-ish")
    assert main(["--data-dir", str(tmp_path / "data"), "collections", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "radsearch: error: invalid setting: a RADSEARCH_STORE__* variable could not be parsed"
    )
    assert "written as JSON" in err and "secret" not in err and "unexpected" not in err


def test_console_script_is_installed(tmp_path: Path) -> None:
    exe = shutil.which("radsearch", path=str(Path(sys.executable).parent))
    assert exe is not None
    out = subprocess.run(
        [exe, "--data-dir", str(tmp_path), "collections", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"collections": []}


def _run_cli(tmp_path: Path, *argv: str) -> tuple[subprocess.CompletedProcess[str], float]:
    exe = shutil.which("radsearch", path=str(Path(sys.executable).parent))
    assert exe is not None
    # offline, with an empty Hugging Face cache: the weights of a hub encoder cannot be had
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf-cache")}
    started = time.monotonic()
    done = subprocess.run([exe, *argv], capture_output=True, text=True, env=env, timeout=60)
    return done, time.monotonic() - started


def test_missing_weights_fail_in_one_line_within_seconds(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    done, elapsed = _run_cli(
        tmp_path, "--data-dir", data, "collections", "create", "bmc", "--encoder", "biomedclip"
    )
    assert done.returncode == 2, done.stderr
    assert elapsed < 10, f"took {elapsed:.1f} s"
    [line] = done.stderr.splitlines()
    assert line.startswith("radsearch: error: encoder 'biomedclip': offline and no weights file")
    assert line.count("provide the weights") == 1
    assert line.endswith("(here: --weights PATH, --weights s3://BUCKET/KEY or --weights ORG/NAME)")
    assert done.stdout == ""


def test_unexpected_errors_are_one_line_and_v_shows_the_traceback(tmp_path: Path) -> None:
    damaged = tmp_path / "data"
    (damaged / "index" / "owner.lock").mkdir(parents=True)  # a store folder damaged by hand
    argv = ("--data-dir", str(damaged), "collections", "list")
    done, _ = _run_cli(tmp_path, *argv)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("radsearch: unexpected error: IsADirectoryError: ")
    assert line.endswith(" (run with -v for the traceback)")
    verbose, _ = _run_cli(tmp_path, "-v", *argv)
    assert verbose.returncode == 1
    assert verbose.stderr.startswith("Traceback (most recent call last):")
    assert verbose.stderr.splitlines()[-1].startswith("radsearch: unexpected error: IsADirectoryError: ")


def test_ingest_with_an_encoder_whose_weights_are_missing_fails_fast(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    argv = [
        "--data-dir",
        str(tmp_path / "data"),
        "ingest",
        str(folder),
        "--collection",
        "c",
        "--encoder",
        "biomedclip",
    ]
    started = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - started < 10
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("radsearch: error: encoder 'biomedclip': offline and no weights file")


def _patients_archive(root: Path) -> Path:
    """Three patients with two studies each, one smooth 64x64 CT frame per study."""
    from tests.search_api.test_results import dicom_bytes

    for p, patient in enumerate(("PAT-A", "PAT-B", "PAT-C")):
        for study in range(2):
            low = np.random.default_rng(10 * p + study).random((6, 6)) * 255
            frame = np.asarray(
                Image.fromarray(low.astype(np.uint8)).resize((64, 64), Image.Resampling.BILINEAR)
            )
            path = root / patient / f"study_{study}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(dicom_bytes(frame, patient_id=patient, study_uid=f"1.2.3.{p}.{study}"))
    return root


def test_search_excludes_the_query_patient_or_study_groups_and_crops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "data")
    archive = _patients_archive(tmp_path / "archive")
    assert main(["--data-dir", data, "ingest", str(archive), "--collection", "c", "--json"]) == 0
    capsys.readouterr()
    query = archive / "PAT-A" / "study_0.dcm"
    search = ["--data-dir", data, "search", str(query), "--collection", "c", "--json"]

    def hits(*extra: str) -> list[dict[str, Any]]:
        assert main([*search, *extra]) == 0
        return _last_json(capsys.readouterr().out)["hits"]  # type: ignore[return-value]

    everything = hits()
    assert len(everything) == 6 and everything[0]["payload"]["key"] == "PAT-A/study_0.dcm"
    own_patient = everything[0]["payload"]["patient_hash"]
    own_study = everything[0]["payload"]["study_hash"]
    other_patients = hits("--exclude", "same-patient")
    assert len(other_patients) == 4 and own_patient not in {
        h["payload"]["patient_hash"] for h in other_patients
    }
    other_studies = hits("--exclude", "same-study")
    assert [h["payload"]["key"] for h in other_studies] == [h["payload"]["key"] for h in everything[1:]]
    assert hits("--exclude", "same-patient", "--exclude", "same-study") == other_patients

    assert main([*search, "--group-by", "study", "-k", "2", "--group-size", "1"]) == 0
    grouped: Any = _last_json(capsys.readouterr().out)
    assert [g["key"] for g in grouped["groups"]] == [own_study, everything[1]["payload"]["study_hash"]]
    assert [len(g["hits"]) for g in grouped["groups"]] == [1, 1]
    assert (
        main(
            ["--data-dir", data, "search", str(query), "--collection", "c", "--group-by", "study", "-k", "2"]
        )
        == 0
    )
    table = capsys.readouterr().out.splitlines()
    assert table[0] == f"group 1: {own_study}" and "PAT-A/study_0.dcm#0" in table[2]

    cropped = hits("--roi", "0,0,24,24")
    assert cropped[0]["score"] < everything[0]["score"] - 1e-4  # the crop, not the whole frame, was embedded


def test_a_group_by_the_hits_cannot_take_says_why_nothing_came_back(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "data")
    assert main(["--data-dir", data, "ingest", str(folder), "--collection", "c"]) == 0
    capsys.readouterr()
    query = str(folder / "CT" / "rows_0.png")
    assert main(["--data-dir", data, "search", query, "--collection", "c", "--group-by", "study"]) == 0
    out, err = capsys.readouterr()
    assert out == "no hits (see the warning above)\n"
    assert "warning: group_by 'study' found no group: no hit holds a study (PNG" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--roi", "0,0,65,10"], "the region does not fit inside the 64x64 frame of study_0.dcm"),
        (["--exclude", "same-patient"], "the upload has no patient to exclude"),
    ],
)
def test_search_options_the_query_cannot_serve_are_refused(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(tmp_path / "data")
    archive = _patients_archive(tmp_path / "archive")
    assert main(["--data-dir", data, "ingest", str(archive), "--collection", "c", "--json"]) == 0
    query = archive / "PAT-A" / "study_0.dcm"
    if extra[0] == "--exclude":  # a PNG has no patient
        query = tmp_path / "query.png"
        Image.fromarray(np.zeros((64, 64), dtype=np.uint8)).save(query)
    capsys.readouterr()
    assert main(["--data-dir", data, "search", str(query), "--collection", "c", *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("roi", "says"),
    [
        ("0,0,10", "give X,Y,WIDTH,HEIGHT in pixels"),
        # found in the walkthrough: "unexpected error: ValidationError: 1 validation error for Roi"
        ("0,0,100000,10", "X, Y, WIDTH and HEIGHT are at most 65535 pixels"),
    ],
)
def test_a_malformed_roi_is_a_usage_error(
    roi: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--data-dir", str(tmp_path), "search", "q.dcm", "--collection", "c", "--roi", roi])
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err


def test_ingest_reads_an_s3_manifest_inline(
    settings: Settings,
    minio_client: Minio,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    folder: Path,
) -> None:
    """``--manifest s3://bucket/key`` is a URI, not a path: the labels come from the object."""
    use_settings_env(monkeypatch, settings)
    labels = b"key,pathology\nCT/rows_0.png,nodule\nMR/cols_1.png,effusion\n"
    minio_client.put_object(bucket, "manifests/labels.csv", io.BytesIO(labels), len(labels))
    (folder / "bad.png").unlink()
    argv = ["ingest", str(folder), "--collection", "c", "--json"]
    assert main([*argv, "--manifest", f"s3://{bucket}/manifests/labels.csv"]) == 0
    assert _last_json(capsys.readouterr().out)["frames_indexed"] == 8
    index = EdgeIndex(settings.index_dir, settings.store)
    try:
        labelled = {str(p.payload["key"]): p.payload.get("pathology") for p in index.scroll("c")}
    finally:
        index.close()
    assert {k: v for k, v in labelled.items() if v} == {
        "CT/rows_0.png": ["nodule"],
        "MR/cols_1.png": ["effusion"],
    }
    # a missing object is a clear error naming the manifest's file, before anything is written
    assert main([*argv, "--manifest", f"s3://{bucket}/manifests/gone.csv", "--no-skip-unchanged"]) == 2
    assert "gone.csv" in capsys.readouterr().err


def test_global_options_are_taken_after_the_command_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``radsearch collections list --data-dir d`` works as ``radsearch --data-dir d collections list``
    (argparse alone refuses an option of the main parser after the command); given in both places,
    the one after the command wins."""
    data = tmp_path / "data"
    folder = tmp_path / "archive"
    folder.mkdir()
    Image.fromarray(np.full((32, 32), 90, dtype=np.uint8)).save(folder / "a.png")
    ingest = ["ingest", str(folder), "--collection", "c", "--encoder", "baseline"]
    assert main([*ingest, "--data-dir", str(data)]) == 0
    capsys.readouterr()
    elsewhere = str(tmp_path / "elsewhere")
    assert main(["--data-dir", elsewhere, "collections", "list", "--data-dir", str(data), "--json"]) == 0
    assert [c["name"] for c in _last_json(capsys.readouterr().out)["collections"]] == ["c"]
    args = build_parser().parse_args(["search", "q.png", "--collection", "c", "--url", "http://h:1", "-vv"])
    assert (args.url, args.verbose, args.data_dir) == ("http://h:1", 2, None)


def _terminal() -> tuple[int, int]:
    """A pseudo-terminal of 24 x 120 characters (a new one has none, and tqdm draws no bar in 0
    columns): its own end, and the end to give a program as its stderr."""
    terminal, program_end = pty.openpty()
    fcntl.ioctl(program_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    return terminal, program_end


def _read_terminal(fd: int) -> bytes:
    """What a pseudo-terminal's program wrote next; b"" once it has closed its end."""
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: no process holds the terminal's other end any more
        return b""


def test_the_progress_bar_is_for_terminals_only(tmp_path: Path) -> None:
    """Found in the walkthrough (session 25): `radsearch collections backfill` with stderr in a log
    file wrote a carriage-return progress line per update, ~100 for 180 images. Without a
    terminal there is no bar; the result line is the same."""
    folder = tmp_path / "archive"
    folder.mkdir()
    for i in range(40):
        Image.fromarray(np.full((32, 32), i, dtype=np.uint8)).save(folder / f"{i:02d}.png")
    argv = [sys.executable, "-m", "radsearch", "--data-dir", str(tmp_path / "data"), "ingest", str(folder)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}
    logged = subprocess.run(
        [*argv, "--collection", "a"], env=env, capture_output=True, text=True, timeout=120
    )
    assert logged.returncode == 0, logged.stderr
    assert "\r" not in logged.stderr and "obj/s" not in logged.stderr, logged.stderr
    assert "40 frames indexed" in logged.stdout, logged.stdout
    terminal, stderr = _terminal()
    shown = subprocess.run(
        [*argv, "--collection", "b"], env=env, stdout=subprocess.PIPE, stderr=stderr, timeout=120
    )
    os.close(stderr)
    bar = b"".join(iter(lambda: _read_terminal(terminal), b"")).decode(errors="replace")
    os.close(terminal)
    assert shown.returncode == 0 and "obj/s" in bar, bar


def test_a_reader_of_stdout_that_went_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """Found in the walkthrough (session 26): `radsearch snapshot list | head -1` said "radsearch:
    unexpected error: BrokenPipeError". Now nothing on stderr and 141, as a command killed by
    SIGPIPE; the stdout here is a pipe whose reader is already closed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}
    argv = [sys.executable, "-m", "radsearch", "--data-dir", str(tmp_path / "data")]
    for command in (["encoders"], ["encoders", "--json"]):
        reader, writer = os.pipe()
        os.close(reader)
        try:
            done = subprocess.run(
                [*argv, *command], env=env, stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60
            )
        finally:
            os.close(writer)
        assert (done.returncode, done.stderr) == (141, ""), done.stderr


def test_ctrl_c_during_an_ingest_is_one_line_and_keeps_what_was_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in the walkthrough: Ctrl-C in `radsearch ingest` printed a KeyboardInterrupt traceback
    and the process died by the signal. Now one line and exit 130; a run again goes on."""
    folder = tmp_path / "archive"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(2000):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    data = str(tmp_path / "data")
    argv = [sys.executable, "-m", "radsearch", "--data-dir", data, "ingest", str(folder), "--collection", "c"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}
    # stderr on a terminal, as where Ctrl-C is pressed: the progress bar shows the batches written
    terminal, stderr = _terminal()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)
    os.close(stderr)
    seen = b""
    while b"frames=" not in seen or b"frames=0]" in seen.rsplit(b"\r", 1)[-1]:  # a batch written
        chunk = _read_terminal(terminal)
        assert chunk, f"the ingest ended first: {seen[-500:]!r}"
        seen += chunk
    os.killpg(proc.pid, signal.SIGINT)
    rest = b"".join(iter(lambda: _read_terminal(terminal), b"")).decode(errors="replace")
    os.close(terminal)
    assert proc.wait(timeout=60) == 130, rest
    assert "radsearch: interrupted; what was already written stays" in rest
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest
    assert main(["--data-dir", data, "collections", "list", "--json"]) == 0
    (written,) = [c["points"] for c in _last_json(capsys.readouterr().out)["collections"]]  # type: ignore[index]
    assert 0 < written < 2000
    assert main(["--data-dir", data, "ingest", str(folder), "--collection", "c", "--json"]) == 0
    again = _last_json(capsys.readouterr().out)
    assert (again["skipped"], again["frames_indexed"]) == (written, 2000 - written)


def test_a_damaged_collection_is_named_on_the_command_line_and_over_http(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in the walkthrough: a collection.json that could not be read ended every command,
    `collections list` included, with "unexpected error: JSONDecodeError" (a 500 over HTTP)."""
    import httpx

    from tests.orthanc_server import ServedApp

    data = tmp_path / "data"
    base = ["--data-dir", str(data)]
    for name in ("c", "d"):
        assert main([*base, "collections", "create", name, "--encoder", "baseline"]) == 0
    (data / "index" / "d" / "collection.json").write_text('{"broken')
    capsys.readouterr()
    assert main([*base, "collections", "list"]) == 0
    listed = capsys.readouterr()
    assert listed.out.startswith("c ") and "\nd " not in listed.out
    assert "collection 'd' is damaged: its collection.json: not JSON (line 1)" in listed.err
    query = tmp_path / "q.png"
    Image.fromarray(np.full((32, 32), 128, np.uint8)).save(query)
    assert main([*base, "search", "--collection", "d", str(query)]) == 2
    assert "radsearch: error: collection 'd' is damaged" in capsys.readouterr().err

    with ServedApp(Settings(data_dir=data)) as api:
        found = httpx.post(f"{api.url}/v1/collections/d/search", json={"vector": [0.5] * 512}, timeout=30)
        assert found.status_code == 500 and found.json()["error"]["code"] == "store_damaged", found.text
        assert str(tmp_path) not in found.text
        assert [
            c["name"] for c in httpx.get(f"{api.url}/v1/collections", timeout=30).json()["collections"]
        ] == ["c"]
        dropped = httpx.delete(f"{api.url}/v1/collections/d", timeout=30)
        assert dropped.status_code == 200 and dropped.json()["points"] is None, dropped.text
    assert main([*base, "collections", "trash"]) == 0
    assert capsys.readouterr().out.startswith("d                        points=?")
