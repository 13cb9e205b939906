from __future__ import annotations

import io
from pathlib import Path

import pytest
from minio import Minio

from core.config import Settings
from core.errors import ConfigError
from core.s3 import S3Location
from ingest.labels import Labeler, PathTemplate, load_manifest, parse_manifest, read_manifest
from ingest.sources import open_source


def test_path_template_matches_radimagenet_layout() -> None:
    template = PathTemplate("{modality}/{anatomy}/{pathology}/{file}")
    assert template.match("CT/chest/nodule/img001.png") == {
        "modality": "CT",
        "anatomy": "chest",
        "pathology": "nodule",
    }
    # extra leading folders are fine; too few segments is no match
    assert template.match("radimagenet/CT/chest/nodule/img001.png")["anatomy"] == "chest"
    assert template.match("chest/img001.png") == {}


def test_path_template_literal_and_ignored_segments() -> None:
    template = PathTemplate("dicom/{modality}/{_}/{pathology}/{file}")
    assert template.match("dicom/MR/brain/tumor/a.dcm") == {"modality": "MR", "pathology": "tumor"}
    assert template.match("png/MR/brain/tumor/a.dcm") == {}


@pytest.mark.parametrize("bad", ["{modality}/{patient}/{file}", "{modality}/{modality}/{file}"])
def test_path_template_rejects_unknown_or_repeated_fields(bad: str) -> None:
    with pytest.raises(ConfigError, match="path template"):
        PathTemplate(bad)


def test_path_template_names_the_field_meant_and_refuses_a_label_in_the_file_name_s_place() -> None:
    """Found in the walkthrough: {modality}/{anatomy}/{pathology} labelled every object with its
    file name as pathology ("liver_lesion_005.dcm")."""
    with pytest.raises(ConfigError, match=r"unknown field \{modalty\} \(did you mean 'modality'\?\)"):
        PathTemplate("{modalty}/{anatomy}/{file}")
    with pytest.raises(ConfigError, match=r"its last part \{pathology\} would take each file's name"):
        PathTemplate("{modality}/{anatomy}/{pathology}")
    assert PathTemplate("{modality}/{_}").match("CT/a.dcm") == {"modality": "CT"}
    assert PathTemplate("{modality}/{pathology}.png").match("CT/cyst.png") == {
        "modality": "CT",
        "pathology": "cyst",
    }


def test_manifest_csv_and_jsonl(tmp_path: Path) -> None:
    csv_text = "key,modality,anatomy,pathology,split\na.png,ct,Chest,nodule|effusion,train\nb.png,MR,,,test\n"
    rows = parse_manifest(csv_text)
    assert rows["a.png"]["pathology"] == "nodule|effusion"
    assert "anatomy" not in rows["b.png"]
    jsonl = (
        '{"key": "a.png", "modality": "CT", "pathology": ["nodule"]}\n\n{"key": "c.dcm", "split": "test"}\n'
    )
    path = tmp_path / "m.jsonl"
    path.write_text(jsonl)
    rows = load_manifest(path)
    assert rows["a.png"]["pathology"] == ["nodule"]
    assert rows["c.dcm"] == {"split": "test"}


def test_manifest_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'key' column"):
        parse_manifest("path,modality\na,CT\n")
    with pytest.raises(ConfigError, match="line 2"):
        parse_manifest('{"key": "a"}\n{not json}\n')
    with pytest.raises(ConfigError, match="cannot read manifest"):
        load_manifest(tmp_path / "missing.csv")
    (tmp_path / "labels.xlsx").write_bytes(b"PK\x03\x04\xfa\xfb")  # found in the walkthrough: a traceback
    with pytest.raises(ConfigError, match="manifest labels.xlsx: not UTF-8 text"):
        load_manifest(tmp_path / "labels.xlsx")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "key,modalty,anatomy\na.png,CT,chest\n",
            "manifest header: unknown column 'modalty' (did you mean 'modality'?)",
        ),
        (
            "key,modality,notes\na.png,CT,x\n",
            "manifest header: unknown column 'notes'; a manifest has key and",
        ),
        ("key,modality,modality\na.png,CT,MR\n", "manifest header: column 'modality' appears twice"),
        ("key,modality\na.png,CT\nb.png,MR\na.png,US\n", "manifest line 4: key 'a.png' was given on line 2"),
        ("key,modality\na.png,CT,chest\n", "manifest line 2: more values than the header has named columns"),
        (
            '{"key": "a.png", "Modality": "CT"}\n',
            "manifest line 1: unknown field 'Modality' (did you mean 'modality'?)",
        ),
        (
            '{"key": "a.png"}\n{"key": "a.png", "split": "test"}\n',
            "manifest line 2: key 'a.png' was given on line 1",
        ),
    ],
    ids=[
        "typo",
        "extra-column",
        "column-twice",
        "key-twice",
        "row-too-long",
        "jsonl-typo",
        "jsonl-key-twice",
    ],
)
def test_a_manifest_that_would_label_wrongly_is_refused_naming_the_line(text: str, says: str) -> None:
    """Found in the walkthrough: a misspelt column (`modalty`) labelled nothing, and of two rows
    for one key the last counted, both without a word."""
    with pytest.raises(ConfigError) as refused:
        parse_manifest(text)
    assert says in str(refused.value)


def test_a_manifest_with_a_blank_trailing_column_is_read() -> None:
    # spreadsheets export a trailing comma: an unnamed column without values carries nothing
    assert parse_manifest("key,modality,\na.png,CT,\n") == {"a.png": {"modality": "CT"}}


def test_precedence_manifest_over_template_over_metadata_over_dicom() -> None:
    labeler = Labeler(
        manifest={"CT/chest/nodule/x.dcm": {"pathology": "effusion"}},
        path_template=PathTemplate("{modality}/{anatomy}/{pathology}/{file}"),
    )
    labels = labeler.labels(
        "CT/chest/nodule/x.dcm",
        dicom_tags={"modality": "MR", "anatomy": "brain"},
        object_metadata={"modality": "US", "dataset": "bucket-meta", "split": "train"},
    )
    # pathology from the manifest, modality/anatomy from the path, dataset/split from metadata
    assert labels == {
        "modality": "CT",
        "anatomy": "chest",
        "pathology": ["effusion"],
        "dataset": "bucket-meta",
        "split": "train",
    }


def test_dicom_tags_are_the_fallback_and_labels_are_normalised() -> None:
    labels = Labeler().labels("x.dcm", dicom_tags={"modality": "ct ", "anatomy": "CHEST"})
    assert labels == {"modality": "CT", "anatomy": "chest"}
    assert Labeler().labels("x.dcm") == {}


def test_read_manifest_from_an_s3_object_or_a_local_file(
    settings: Settings, minio_client: Minio, bucket: str, tmp_path: Path
) -> None:
    text = b"key,modality,pathology\na.png,ct,nodule|mass\n"
    minio_client.put_object(bucket, "manifests/labels.csv", io.BytesIO(text), len(text))
    minio_client.put_object(bucket, "manifests/latin1.csv", io.BytesIO(b"key\n\xe9.png\n"), 9)
    source = open_source(f"s3://{bucket}", settings)

    def fetch(location: S3Location) -> bytes:
        assert location.bucket == bucket
        return source.fetch(location.key)

    expected = {"a.png": {"modality": "ct", "pathology": "nodule|mass"}}
    assert read_manifest(f"s3://{bucket}/manifests/labels.csv", fetch) == expected
    local = tmp_path / "labels.csv"
    local.write_bytes(text)
    assert read_manifest(str(local), fetch) == expected
    # the errors never repeat the reference (it is what a caller sent)
    with pytest.raises(ConfigError, match="names a bucket, not an object") as info:
        read_manifest(f"s3://{bucket}/", fetch)
    assert bucket not in str(info.value)
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        read_manifest(f"s3://{bucket}/manifests/latin1.csv", fetch)
    assert bucket not in str(info.value)
