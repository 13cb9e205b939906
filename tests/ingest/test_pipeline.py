"""The batch pipeline end to end: real readers, the baseline encoder, Qdrant Edge on disk."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from minio import Minio
from PIL import Image

from core.catalog import Catalog
from core.config import Settings
from core.encoders.registry import get_spec
from core.index import open_index
from core.payload import PAYLOAD_FIELDS, SearchFilter, image_point_id
from ingest.inline import IngestOptions, build_context, ingest_inline
from ingest.sources import open_source
from radsearch.demo_data import DemoArchive, generate_demo_archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> DemoArchive:
    return generate_demo_archive(tmp_path_factory.mktemp("archive"), per_class=3, seed=1)


@pytest.fixture
def catalog(settings: Settings) -> Iterator[Catalog]:
    index = open_index(settings)
    catalog = Catalog(index, settings)
    catalog.create("c", get_spec("baseline"))
    yield catalog
    index.close()


def _ingest(catalog: Catalog, settings: Settings, uri: str, **options: object) -> dict[str, object]:
    source = open_source(uri, settings)
    ctx = build_context(source, catalog, ["c"], IngestOptions(**options), settings)  # type: ignore[arg-type]
    manifest = options.get("manifest")
    exclude = frozenset({"manifest.csv"}) if manifest else frozenset()
    return ingest_inline(ctx, settings, progress=False, exclude_keys=exclude).to_dict()


def test_ingest_archive_labels_and_idempotent_rerun(
    catalog: Catalog, settings: Settings, archive: DemoArchive
) -> None:
    first = _ingest(catalog, settings, str(archive.root), manifest=archive.manifest)
    assert first["objects"] == archive.n_files and first["failed"] == 0
    count = catalog.index.count("c")
    assert count == first["frames_indexed"] > archive.n_files  # multi-frame US adds frames
    # every point is labelled from the manifest, and modality filters return only that modality
    facets = catalog.index.facet("c", "modality")
    assert set(facets) >= {"CT", "MR", "US", "CR", "XR"}
    assert sum(facets.values()) == count
    ct = catalog.index.scroll("c", filter=SearchFilter(modality=["CT"]))
    assert all(p.payload["modality"] == "CT" and p.payload["split"] in {"train", "test"} for p in ct)

    again = _ingest(catalog, settings, str(archive.root), manifest=archive.manifest)
    assert again["skipped"] == archive.n_files and again["frames_indexed"] == 0
    forced = _ingest(catalog, settings, str(archive.root), manifest=archive.manifest, skip_unchanged=False)
    assert forced["frames_indexed"] == count
    assert catalog.index.count("c") == count  # overwritten, not duplicated


def test_a_modality_label_other_than_the_dicom_header_is_counted_and_named(
    catalog: Catalog, settings: Settings, archive: DemoArchive
) -> None:
    """A path template one folder short of the tree ({modality}/{anatomy}/{file} over
    CT/chest/normal/x.dcm) takes the anatomy folder for the modality: the labels it gives are
    stored (rules take precedence over headers), and the run says which disagree with the header."""
    dicoms = archive.root / "dicom"
    n_dicoms = sum(1 for _ in dicoms.rglob("*.dcm"))
    right = _ingest(catalog, settings, str(dicoms), path_template="{modality}/{anatomy}/{pathology}/{file}")
    assert right["failed"] == 0 and right["modality_conflicts"] == 0
    assert right["modality_conflict_values"] == []

    short = _ingest(catalog, settings, str(dicoms), path_template="{modality}/{anatomy}/{file}")
    assert short["relabelled"] == n_dicoms  # unchanged pixels, new labels: no re-embedding
    assert short["modality_conflicts"] == n_dicoms
    values = {(v["stored"], v["header"]): v["objects"] for v in short["modality_conflict_values"]}  # type: ignore[union-attr]
    assert ("CHEST", "CT") in values and ("BRAIN", "MR") in values
    assert sum(values.values()) == n_dicoms
    assert "CHEST" in catalog.index.facet("c", "modality")  # stored as the rule said


def test_payloads_are_allow_listed_and_carry_no_phi(
    catalog: Catalog, settings: Settings, archive: DemoArchive, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    report = _ingest(catalog, settings, str(archive.root), manifest=archive.manifest)
    payloads = [p.payload for p in catalog.index.scroll("c")]
    assert payloads and all(set(p) <= PAYLOAD_FIELDS for p in payloads)
    dicom_payload = next(p for p in payloads if p["key"].endswith(".dcm"))
    assert len(dicom_payload["study_hash"]) == 32  # keyed hash, not the UID
    haystack = json.dumps(payloads) + json.dumps(report) + caplog.text
    leaked = [s for s in archive.phi_strings if len(s) >= 4 and s in haystack]
    print(f"phi: canaries={len(archive.phi_strings)} hits={len(leaked)}")
    assert leaked == []


def test_bad_files_are_reported_and_the_batch_goes_on(
    catalog: Catalog, settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(5):
        Image.fromarray((np.arange(64 * 64).reshape(64, 64) * (i + 1) % 256).astype(np.uint8)).save(
            folder / f"ok{i}.png"
        )
    (folder / "notes.dcm").write_text("this is not a DICOM file")
    (folder / "empty.png").write_bytes(b"")
    png = io.BytesIO()
    Image.new("L", (64, 64), 7).save(png, format="PNG")
    (folder / "truncated.png").write_bytes(png.getvalue()[:40])
    report = _ingest(catalog, settings, str(folder))
    assert report["objects"] == 8
    assert report["frames_indexed"] == 5
    failed = {e["key"]: e["reason"] for e in report["errors"]}  # type: ignore[union-attr]
    assert set(failed) == {"notes.dcm", "empty.png", "truncated.png"}
    assert all(reason for reason in failed.values())
    assert catalog.index.count("c") == 5


def test_changed_object_is_re_embedded(catalog: Catalog, settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "one"
    folder.mkdir()
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (64, 1))).save(folder / "a.png")
    _ingest(catalog, settings, str(folder))
    pid = image_point_id(0, instance_hash=None, source_name="one", key="a.png")
    before = catalog.index.retrieve("c", [pid], with_vectors=True)[0]
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (64, 1)).T.copy()).save(folder / "b.png")
    (folder / "b.png").replace(folder / "a.png")
    report = _ingest(catalog, settings, str(folder))
    assert report["frames_indexed"] == 1 and report["skipped"] == 0
    after = catalog.index.retrieve("c", [pid], with_vectors=True)[0]
    assert after.payload["etag"] != before.payload["etag"]
    assert before.vector is not None and after.vector is not None
    assert float(np.dot(before.vector, after.vector)) < 0.999


def test_ingest_from_s3_over_http(
    catalog: Catalog, settings: Settings, archive: DemoArchive, minio_client: Minio, bucket: str
) -> None:
    keys = sorted(p.relative_to(archive.root).as_posix() for p in archive.root.rglob("*.dcm"))[:10]
    for key in keys:
        data = (archive.root / key).read_bytes()
        minio_client.put_object(
            bucket,
            f"export/{key}",
            io.BytesIO(data),
            len(data),
            metadata={"split": "train", "modality": "OT"},
        )
    report = _ingest(
        catalog,
        settings,
        f"s3://{bucket}/export/",
        path_template="dicom/{modality}/{anatomy}/{pathology}/{file}",
    )
    assert report["objects"] == 10 and report["failed"] == 0
    points = list(catalog.index.scroll("c"))
    # the source's stable name (bucket/prefix), never its URI or a path
    assert {p.payload["source"] for p in points} == {f"{bucket}/export"}
    # the path template outranks object metadata (modality), metadata fills what it lacks (split)
    for p in points:
        assert p.payload["split"] == "train"
        modality, anatomy, pathology = p.payload["key"].split("/")[2:5]
        assert (p.payload["modality"], p.payload["anatomy"], p.payload["pathology"]) == (
            modality,
            anatomy,
            [pathology],
        )
