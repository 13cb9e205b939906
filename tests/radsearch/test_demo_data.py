"""The synthetic demo archive: deterministic, decodable, fully labelled, realistic tags, PHI canaries."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from core.errors import BadInput
from ingest.readers import DecodeLimits, decode_object
from radsearch.demo_data import DATASET_NAME, DemoArchive, generate_demo_archive

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> DemoArchive:
    started = time.perf_counter()
    result = generate_demo_archive(tmp_path_factory.mktemp("demo"), per_class=12, seed=0)
    print(f"\ndemo archive: {result.n_files} files in {time.perf_counter() - started:.1f} s")
    return result


def all_files(root: Path) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != "manifest.csv"
    )


def manifest_rows(archive: DemoArchive) -> list[dict[str, str]]:
    with archive.manifest.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["key", "modality", "anatomy", "pathology", "dataset", "split"]
        return list(reader)


def test_generation_is_deterministic(tmp_path: Path) -> None:
    first = generate_demo_archive(tmp_path / "a", per_class=3, seed=5)
    second = generate_demo_archive(tmp_path / "b", per_class=3, seed=5)
    other = generate_demo_archive(tmp_path / "c", per_class=3, seed=6)
    files = all_files(first.root)
    assert files == all_files(second.root) and len(files) == first.n_files
    for name in [*files, "manifest.csv"]:
        assert (first.root / name).read_bytes() == (second.root / name).read_bytes(), name
    assert first.phi_strings == second.phi_strings
    assert any((first.root / n).read_bytes() != (other.root / n).read_bytes() for n in files)


def test_a_smaller_archive_over_a_larger_one_holds_what_its_manifest_lists(tmp_path: Path) -> None:
    """Noticed in session 23: a demo with a smaller --per-class than before rewrote the manifest and
    left the earlier images beside it, unlabelled, to be ingested."""
    root = tmp_path / "archive"
    generate_demo_archive(root, per_class=4)
    foreign = root / "png" / "mine.png"
    foreign.write_bytes(b"not the archive's")
    smaller = generate_demo_archive(root, per_class=2)
    listed = sorted(row["key"] for row in manifest_rows(smaller))
    assert listed == [name for name in all_files(root) if name != "png/mine.png"]
    assert len(listed) == 2 * len(smaller.classes) and foreign.exists()


def test_manifest_covers_every_file(archive: DemoArchive) -> None:
    rows = manifest_rows(archive)
    assert sorted(r["key"] for r in rows) == all_files(archive.root)
    assert len(rows) == archive.n_files == 12 * len(archive.classes)
    assert {r["dataset"] for r in rows} == {DATASET_NAME}
    for row in rows:
        if row["key"].startswith("dicom/"):
            assert row["key"].split("/")[1:4] == [row["modality"], row["anatomy"], row["pathology"]]
        else:
            assert row["key"].startswith("png/") and row["key"].endswith(".png")
    per_class: dict[tuple[str, str, str], list[str]] = {}
    for row in rows:
        per_class.setdefault((row["modality"], row["anatomy"], row["pathology"]), []).append(row["split"])
    assert set(per_class) == set(archive.classes)
    for splits in per_class.values():
        assert splits.count("train") == round(0.7 * len(splits))
        assert set(splits) == {"train", "test"}


def test_classes_span_modalities(archive: DemoArchive) -> None:
    dicom_classes = [c for c in archive.classes if c[0] != "XR"]
    assert len(archive.classes) >= 10 and len(dicom_classes) >= 10
    assert {"CT", "MR", "US"} <= {c[0] for c in archive.classes}
    assert {"CR", "DX"} & {c[0] for c in archive.classes}
    assert len({(m, a) for m, a, _ in archive.classes}) >= 6


def test_every_file_decodes_with_labels_and_realistic_tags(archive: DemoArchive) -> None:
    limits = DecodeLimits()
    syntaxes: set[str] = set()
    photometric: set[str] = set()
    multi_frame = 0
    sop_classes: set[str] = set()
    for row in manifest_rows(archive):
        data = (archive.root / row["key"]).read_bytes()
        try:
            obj = decode_object(data, row["key"], limits=limits, hash_key=b"demo-key")
        except BadInput as exc:  # a typed error is still a failure for our own demo data
            pytest.fail(f"{row['key']}: {exc}")
        assert obj.frames and all(f.dtype == np.uint8 for f in obj.frames)
        assert all(128 <= min(f.shape[:2]) and max(f.shape[:2]) <= 320 for f in obj.frames)
        assert all(f.std() > 5 for f in obj.frames), row["key"]  # not blank
        if row["key"].endswith(".dcm"):
            assert obj.labels == {"modality": row["modality"], "anatomy": row["anatomy"]}
            ds = pydicom.dcmread(archive.root / row["key"], stop_before_pixels=True)
            syntaxes.add(ds.file_meta.TransferSyntaxUID.name)
            photometric.add(ds.PhotometricInterpretation)
            sop_classes.add(ds.SOPClassUID.name)
            assert ds.BodyPartExamined == row["anatomy"].upper()
            assert ds.BitsAllocated == (8 if row["modality"] == "US" else 16)
            if row["modality"] == "CT":
                assert "RescaleIntercept" in ds and "WindowCenter" in ds
            if row["modality"] == "CR":
                assert ds.PhotometricInterpretation == "MONOCHROME1"
            if obj.meta["n_frames"] > 1:
                multi_frame += 1
                assert 3 <= obj.meta["n_frames"] <= 5
                assert ds.SOPClassUID.name == "Ultrasound Multi-frame Image Storage"
            for name in ("study_hash", "series_hash", "instance_hash", "patient_hash"):
                assert name in obj.meta
        else:
            assert obj.labels == {}
    assert "RLE Lossless" in syntaxes
    assert len(syntaxes) >= 3  # native, RLE and (with the encoder installed) JPEG 2000
    assert {"MONOCHROME1", "MONOCHROME2"} <= photometric
    assert multi_frame >= 3
    assert {
        "CT Image Storage",
        "MR Image Storage",
        "Ultrasound Image Storage",
        "Ultrasound Multi-frame Image Storage",
        "Computed Radiography Image Storage",
    } <= sop_classes


def test_monochrome1_displays_lungs_dark(archive: DemoArchive) -> None:
    key = next(r["key"] for r in manifest_rows(archive) if r["modality"] == "CR")
    obj = decode_object((archive.root / key).read_bytes(), key, limits=DecodeLimits(), hash_key=b"k")
    frame = obj.frames[0].astype(float)
    rows, cols = frame.shape
    lung = frame[int(rows * 0.4), int(cols * 0.2) : int(cols * 0.35)].mean()
    spine = frame[int(rows * 0.5), int(cols * 0.48) : int(cols * 0.52)].mean()
    assert lung < spine - 40


def test_some_png_are_16_bit(archive: DemoArchive) -> None:
    from PIL import Image

    modes = set()
    for path in (archive.root / "png").glob("*.png"):
        with Image.open(path) as image:
            modes.add(image.mode)
    assert "L" in modes and modes & {"I;16", "I"}


def test_phi_canaries_are_real_and_never_decoded(archive: DemoArchive) -> None:
    assert len(archive.phi_strings) >= 8
    headers = b""
    decoded_text: list[str] = []
    for row in manifest_rows(archive):
        data = (archive.root / row["key"]).read_bytes()
        if row["key"].endswith(".dcm"):
            headers += data[: data.find(PIXEL_DATA_TAG)]
        obj = decode_object(data, row["key"], limits=DecodeLimits(), hash_key=b"k")
        decoded_text.append(repr(obj.labels) + repr(obj.meta))
    for value in archive.phi_strings:
        assert value.encode() in headers, value  # a real canary: it is in the files
    everything = "\n".join(decoded_text)
    for value in archive.phi_strings:
        assert value not in everything, value
    assert "ZZDEMO" not in everything and "DEMO-" not in everything and "canary" not in everything
