"""Identity from the image, complete updates and relabels (issue 14, items 1, 4 and 5).

Real readers, the baseline encoder and Qdrant Edge on disk; the DICOM files are written here with
pydicom (its own RLE encoder for the second transfer syntax).
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from minio import Minio
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from core.catalog import Catalog
from core.config import Settings
from core.encoders.registry import get_spec
from core.errors import ConfigError
from core.index import open_index
from core.payload import SearchFilter, point_id
from ingest.inline import IngestOptions, build_context, ingest_inline
from ingest.sources import open_source
from search_api import services


@pytest.fixture
def catalog(settings: Settings) -> Iterator[Catalog]:
    index = open_index(settings)
    catalog = Catalog(index, settings)
    catalog.create("c", get_spec("baseline"))
    yield catalog
    index.close()


def _ingest(
    catalog: Catalog, settings: Settings, uri: str, *, collection: str = "c", **options: Any
) -> dict[str, Any]:
    source = open_source(uri, settings, name=options.get("source_name"))
    try:
        ctx = build_context(source, catalog, [collection], IngestOptions(**options), settings)
        return ingest_inline(ctx, settings, progress=False).to_dict()
    finally:
        source.close()


def _pixels(n_frames: int, seed: int, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 255, (size, size), dtype=np.uint8) for _ in range(n_frames)]
    return frames[0] if n_frames == 1 else np.stack(frames)


def _write_dicom(path: Path, uid: str, n_frames: int = 1, *, seed: int = 0, syntax: str = "") -> None:
    """A DICOM instance ``uid``: single-frame CT, or an n-frame ultrasound cine loop."""
    multi = n_frames > 1
    sop = UltrasoundMultiFrameImageStorage if multi else CTImageStorage
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = uid + ".1"
    ds.SeriesInstanceUID = uid + ".2"
    ds.Modality = "US" if multi else "CT"
    ds.BurnedInAnnotation = "NO"
    ds.set_pixel_data(_pixels(n_frames, seed), "MONOCHROME2", 8, generate_instance_uid=False)
    if syntax == "rle":
        ds.compress(RLELossless, generate_instance_uid=False)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def _write_png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(1, seed)).save(path)


def test_fewer_frames_leave_no_stale_points(catalog: Catalog, settings: Settings, tmp_path: Path) -> None:
    """Reproduced first: a 5-frame cine loop re-sent with 2 frames kept its 3 old extra frames
    searchable (5 points after the re-ingest instead of 2)."""
    folder = tmp_path / "cine"
    uid = generate_uid()
    _write_dicom(folder / "loop.dcm", uid, n_frames=5, seed=1)
    first = _ingest(catalog, settings, str(folder))
    assert first["frames_indexed"] == 5 and catalog.index.count("c") == 5
    _write_dicom(folder / "loop.dcm", uid, n_frames=2, seed=2)
    again = _ingest(catalog, settings, str(folder))
    assert again["frames_indexed"] == 2
    points = list(catalog.index.scroll("c"))
    assert len(points) == 2
    assert sorted(p.payload["frame"] for p in points) == [0, 1]
    assert {p.payload["n_frames"] for p in points} == {2}


def test_overlapping_and_moved_ingests_never_duplicate(
    catalog: Catalog, settings: Settings, tmp_path: Path
) -> None:
    """Reproduced first: ingesting a subfolder, then its parent, then a copy of the archive moved
    elsewhere stored every image once per ingest (ids came from the absolute path: 10 images →
    30 points), and payload ``source`` showed the server's absolute path."""
    archive = tmp_path / "site" / "archive"
    for i in range(3):
        _write_dicom(archive / "sub" / f"ct{i}.dcm", generate_uid(), seed=10 + i)
    for i in range(2):
        _write_dicom(archive / f"top{i}.dcm", generate_uid(), seed=20 + i)
    _write_png(archive / "scan.png", seed=30)
    # A source name that could be a path is refused, naming the field.
    with pytest.raises(ConfigError, match="source_name"):
        open_source(str(tmp_path / "site"), settings, name="../escape")

    assert _ingest(catalog, settings, str(archive / "sub"))["frames_indexed"] == 3
    assert catalog.index.count("c") == 3
    _ingest(catalog, settings, str(archive))
    # the 3 DICOM instances of sub/ are the same images under the parent's name
    assert catalog.index.count("c") == 3 + 2 + 1
    moved = tmp_path / "elsewhere" / "archive"
    shutil.copytree(archive, moved)
    shutil.rmtree(archive)
    report = _ingest(catalog, settings, str(moved))
    assert report["failed"] == 0
    points = list(catalog.index.scroll("c"))
    assert len(points) == 6  # the moved archive keeps every id: nothing duplicated
    sources = {p.payload["source"] for p in points}
    assert sources <= {"archive", "sub"}
    assert not any(str(tmp_path) in str(p.payload) for p in points)  # no server path in any payload
    # the thumbnail route reads the object from where the name is registered now (the move)
    scan = next(p for p in points if p.payload["key"] == "scan.png")
    uri = services.source_location(catalog, "c", scan)
    assert uri == str(moved.resolve())
    png = services.render_thumbnail(settings=settings, point=scan, size=32, source_uri=uri)
    assert png.startswith(b"\x89PNG")


def test_a_file_reached_through_two_source_names_is_refused_not_stored_twice(
    catalog: Catalog, settings: Settings, tmp_path: Path
) -> None:
    """Reproduced first (walkthrough): the README's `ingest s3://raw/chest/` then `reconcile
    s3://raw/` stored every PNG a second time (sources raw/chest and raw: 119 + 117 points), and
    the reconcile never saw the files deleted from chest/. The same with a folder and its parent."""
    archive = tmp_path / "archive"
    for i in range(2):
        _write_png(archive / "sub" / f"s{i}.png", seed=40 + i)
    _write_png(archive / "top.png", seed=42)
    _write_dicom(archive / "sub" / "ct.dcm", generate_uid(), seed=43)
    assert _ingest(catalog, settings, str(archive / "sub"))["frames_indexed"] == 3

    parent = _ingest(catalog, settings, str(archive))
    # the parent's own file is indexed, the DICOM instance is the same image under any name, and
    # sub/'s PNGs are refused with the way out
    assert {e["key"] for e in parent["errors"]} == {"sub/s0.png", "sub/s1.png"}
    reason = parent["errors"][0]["reason"]
    assert "already stored in 'c' under source 'sub'" in reason
    assert "ingest it through the folder source 'sub' was ingested from" in reason
    assert str(tmp_path) not in reason  # never the server's path
    assert catalog.index.count("c") == 3 + 1
    # sub/ itself goes on as before (its DICOM instance written again under its name)
    assert _ingest(catalog, settings, str(archive / "sub"))["failed"] == 0
    assert catalog.index.count("c") == 3 + 1

    # one folder under a second name: the same keys, so the second name is the way out
    again = _ingest(catalog, settings, str(archive / "sub"), source_name="sub-2024")
    assert {e["key"] for e in again["errors"]} == {"s0.png", "s1.png"}
    assert "give this run the source name 'sub' (--source-name" in again["errors"][0]["reason"]
    # and a folder inside an ingested one: its keys lack the path between the two roots
    catalog.create("d", get_spec("baseline"))
    _ingest(catalog, settings, str(archive), collection="d")
    report = _ingest(catalog, settings, str(archive / "sub"), collection="d")
    assert {e["key"] for e in report["errors"]} == {"s0.png", "s1.png"}
    assert catalog.index.count("d") == 4
    assert catalog.index.count("c") == 4


def test_a_bucket_reached_through_two_prefixes_is_not_stored_twice(
    catalog: Catalog, settings: Settings, minio_client: Minio, bucket: str
) -> None:
    for i, key in enumerate(("chest/a.png", "chest/b.png", "head/c.png")):
        data = io.BytesIO()
        Image.fromarray(_pixels(1, 50 + i)).save(data, format="PNG")
        minio_client.put_object(bucket, key, io.BytesIO(data.getvalue()), len(data.getvalue()))
    assert _ingest(catalog, settings, f"s3://{bucket}/chest/")["frames_indexed"] == 2

    whole = _ingest(catalog, settings, f"s3://{bucket}/")
    assert whole["frames_indexed"] == 1  # head/c.png
    assert {e["key"] for e in whole["errors"]} == {"chest/a.png", "chest/b.png"}
    assert f"give this run the source name '{bucket}/chest'" in whole["errors"][0]["reason"]
    assert catalog.index.count("c") == 3
    # the way out: the name chest/ was stored with (same keys, same ids): chest/ is unchanged, and
    # head/c.png is now the one stored under the other name
    renamed = _ingest(catalog, settings, f"s3://{bucket}/", source_name=f"{bucket}/chest")
    assert renamed["skipped"] == 2
    assert [e["key"] for e in renamed["errors"]] == ["head/c.png"]
    assert catalog.index.count("c") == 3


def test_two_transfer_syntaxes_of_one_instance_are_one_image(
    catalog: Catalog, settings: Settings, tmp_path: Path
) -> None:
    """Reproduced first: one instance stored uncompressed and as RLE Lossless became two images
    (two point ids, each its own search hit)."""
    folder = tmp_path / "syntaxes"
    uid = generate_uid()
    _write_dicom(folder / "explicit.dcm", uid, seed=5)
    _write_dicom(folder / "rle.dcm", uid, seed=5, syntax="rle")
    other = generate_uid()
    _write_dicom(folder / "other.dcm", other, seed=6)
    report = _ingest(catalog, settings, str(folder), source_name="pacs-export")
    assert report["failed"] == 0 and report["objects"] == 3
    points = list(catalog.index.scroll("c"))
    assert len(points) == 2
    assert {p.payload["source"] for p in points} == {"pacs-export"}


def _labelled(tmp_path: Path, seed: int, manifest_text: str) -> tuple[Path, Path]:
    """A folder of two PNGs and a DICOM (a.png, b.png, c.dcm) and its manifest."""
    folder = tmp_path / "labelled"
    _write_png(folder / "a.png", seed=seed)
    _write_png(folder / "b.png", seed=seed + 1)
    _write_dicom(folder / "c.dcm", generate_uid(), seed=seed + 2)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(manifest_text)
    return folder, manifest


def test_corrected_manifest_relabels_without_re_embedding(
    catalog: Catalog, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reproduced first: a corrected manifest row on an unchanged image was skipped as unchanged,
    so the search for the corrected label returned nothing."""
    folder, manifest = _labelled(tmp_path, 40, "key,anatomy\na.png,knee\nb.png,knee\nc.dcm,chest\n")
    first = _ingest(catalog, settings, str(folder), manifest=manifest)
    assert first["frames_indexed"] == 3 and first["relabelled"] == 0

    encoder = catalog.encoder(get_spec("baseline"))
    calls: list[int] = []
    real_embed = encoder.embed_batch

    def counting(batch: Any) -> Any:
        calls.append(len(batch))
        return real_embed(batch)

    monkeypatch.setattr(encoder, "embed_batch", counting)
    before = {p.id: p.vector for p in catalog.index.scroll("c", with_vectors=True)}
    manifest.write_text("key,anatomy\na.png,hand\nb.png,knee\nc.dcm,chest\n")
    again = _ingest(catalog, settings, str(folder), manifest=manifest)
    assert again["relabelled"] == 1 and again["skipped"] == 2 and again["frames_indexed"] == 0
    assert calls == []  # nothing re-embedded
    hand = list(catalog.index.scroll("c", filter=SearchFilter(anatomy=["hand"]), with_vectors=True))
    assert [p.payload["key"] for p in hand] == ["a.png"]
    assert hand[0].vector is not None and np.allclose(hand[0].vector, before[hand[0].id])
    assert catalog.index.count("c", SearchFilter(anatomy=["knee"])) == 1
    query = hand[0].vector
    hits = catalog.index.search("c", query, filter=SearchFilter(anatomy=["hand"]), limit=5)
    assert [h.id for h in hits] == [hand[0].id]
    # and a third run with the same manifest has nothing left to do
    third = _ingest(catalog, settings, str(folder), manifest=manifest)
    assert third["relabelled"] == 0 and third["skipped"] == 3 and calls == []


def test_manifest_rows_that_name_no_object_are_counted_and_named(
    catalog: Catalog, settings: Settings, tmp_path: Path
) -> None:
    """Found in the walkthrough: a manifest whose keys carry the folder's own name
    (`labelled/a.png` for an ingest of `labelled/`) labelled nothing, and the run said nothing."""
    folder, manifest = _labelled(
        tmp_path, 80, "key,anatomy\nlabelled/a.png,hand\nlabelled/b.png,knee\nc.dcm,chest\n"
    )
    report = _ingest(catalog, settings, str(folder), manifest=manifest)
    assert report["frames_indexed"] == 3
    assert (report["manifest_unmatched"], report["manifest_unmatched_keys"]) == (
        2,
        ["labelled/a.png", "labelled/b.png"],
    )
    assert catalog.index.count("c", SearchFilter(anatomy=["chest"])) == 1  # the row that matched
    manifest.write_text("key,anatomy\na.png,hand\nb.png,knee\nc.dcm,chest\n")
    fixed = _ingest(catalog, settings, str(folder), manifest=manifest)
    assert (fixed["relabelled"], fixed["manifest_unmatched"], fixed["manifest_unmatched_keys"]) == (2, 0, [])


def test_keys_without_the_path_templates_layout_are_counted_and_named(
    catalog: Catalog, settings: Settings, tmp_path: Path
) -> None:
    """A folder one level short of the template gave its images no labels, and the run said
    nothing: a filter on the labels then left them out of every search without a word."""
    folder = tmp_path / "tree"
    for i, key in enumerate(["CT/chest/a.png", "CT/chest/b.png", "CT/c.png", "d.png"]):
        _write_png(folder / key, seed=200 + i)
    report = _ingest(catalog, settings, str(folder), path_template="{modality}/{anatomy}/{file}")
    assert report["frames_indexed"] == 4
    assert (report["template_unmatched"], report["template_unmatched_keys"]) == (2, ["CT/c.png", "d.png"])
    assert catalog.index.count("c", SearchFilter(anatomy=["chest"])) == 2


def test_run_without_the_manifest_keeps_the_labels_it_gave(
    catalog: Catalog, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reproduced first: re-running the demo's ingest without its manifest relabelled every object
    and left the collection without a pathology or split. Rules that say nothing about an object
    leave its labels alone; a manifest row with empty labels clears them; a template that labels
    it rewrites them."""
    folder, manifest = _labelled(
        tmp_path, 60, "key,anatomy,pathology\na.png,hand,fracture\nc.dcm,chest,nodule\n"
    )
    assert _ingest(catalog, settings, str(folder), manifest=manifest)["frames_indexed"] == 3
    encoder = catalog.encoder(get_spec("baseline"))
    monkeypatch.setattr(encoder, "embed_batch", lambda batch: pytest.fail("nothing is re-embedded"))

    def labels() -> dict[str, tuple[Any, Any]]:
        return {
            p.payload["key"]: (p.payload.get("anatomy"), p.payload.get("pathology"))
            for p in catalog.index.scroll("c")
        }

    labelled = labels()
    assert labelled["a.png"] == ("hand", ["fracture"]) and labelled["c.dcm"] == ("chest", ["nodule"])

    bare = _ingest(catalog, settings, str(folder))
    assert (bare["skipped"], bare["relabelled"], bare["labels_kept"]) == (3, 0, 2)
    assert labels() == labelled
    assert catalog.index.count("c", SearchFilter(pathology=["fracture"])) == 1

    manifest.write_text("key,anatomy,pathology\na.png,,\n")  # a row with empty labels clears them
    cleared = _ingest(catalog, settings, str(folder), manifest=manifest)
    assert (cleared["relabelled"], cleared["labels_kept"]) == (1, 1)
    assert labels() == {**labelled, "a.png": (None, None)}

    templated = _ingest(catalog, settings, str(folder), path_template="{anatomy}.png")
    assert (templated["relabelled"], templated["labels_kept"]) == (2, 1)
    assert labels() == {"a.png": ("a", None), "b.png": ("b", None), "c.dcm": ("chest", ["nodule"])}


def test_a_re_embedded_object_keeps_the_labels_earlier_rules_gave_it(
    catalog: Catalog, settings: Settings, tmp_path: Path
) -> None:
    """Noticed in session 21, fixed in 22: an object whose pixels changed (a new ETag), a DICOM
    re-sent with fewer frames, every object under --no-skip-unchanged, and a DICOM reached under
    another source name were labelled by the run's rules alone, so a run without the manifest
    stripped the labels the manifest gave them."""
    folder, manifest = _labelled(
        tmp_path, 70, "key,anatomy,pathology\na.png,hand,fracture\nc.dcm,chest,nodule\n"
    )
    uid = generate_uid()
    _write_dicom(folder / "c.dcm", uid, n_frames=3, seed=71)
    assert _ingest(catalog, settings, str(folder), manifest=manifest)["frames_indexed"] == 5

    def labels() -> dict[str, set[tuple[Any, Any]]]:
        found: dict[str, set[tuple[Any, Any]]] = {}
        for point in catalog.index.scroll("c"):
            pathology = tuple(point.payload.get("pathology") or ())
            found.setdefault(point.payload["key"], set()).add((point.payload.get("anatomy"), pathology))
        return found

    labelled = labels()
    assert labelled["a.png"] == {("hand", ("fracture",))} and labelled["c.dcm"] == {("chest", ("nodule",))}

    _write_png(folder / "a.png", seed=170)  # new pixels: another ETag
    _write_dicom(folder / "c.dcm", uid, n_frames=2, seed=172)  # re-sent with fewer frames
    changed = _ingest(catalog, settings, str(folder))
    assert (changed["frames_indexed"], changed["skipped"], changed["labels_kept"]) == (3, 1, 2)
    assert labels() == labelled and catalog.index.count("c") == 4
    assert catalog.index.count("c", SearchFilter(pathology=["nodule"])) == 2

    everything = _ingest(catalog, settings, str(folder), skip_unchanged=False)
    assert (everything["frames_indexed"], everything["labels_kept"]) == (4, 2)
    assert labels() == labelled

    moved = tmp_path / "moved"  # the DICOM under another folder's name: its frames are the same points
    moved.mkdir()
    (moved / "c.dcm").write_bytes((folder / "c.dcm").read_bytes())
    assert _ingest(catalog, settings, str(moved))["frames_indexed"] == 2
    assert catalog.index.count("c") == 4
    assert {
        p.payload["source"] for p in catalog.index.scroll("c", filter=SearchFilter(anatomy=["chest"]))
    } == {"moved"}
    assert labels()["c.dcm"] == {("chest", ("nodule",))}

    # Rules that do speak still decide: the manifest's row for a.png, cleared, clears it.
    manifest.write_text("key,anatomy,pathology\na.png,,\n")
    _write_png(folder / "a.png", seed=270)
    _ingest(catalog, settings, str(folder), manifest=manifest)
    assert labels()["a.png"] == {(None, ())}


def test_v1_collection_keeps_its_ids_and_takes_names(
    catalog: Catalog, settings: Settings, tmp_path: Path
) -> None:
    """A collection created before stable identity (no ``id_scheme`` in its catalog entry) keeps
    deriving ids from the source path; its points take the source name on the next run without
    being re-embedded."""
    config = catalog.index.collection_config("c")
    entry = {k: v for k, v in config.metadata["catalog"].items() if k != "id_scheme"}
    catalog.index.update_metadata("c", {"catalog": entry})
    assert catalog.get("c").id_scheme == "v1"
    folder = tmp_path / "old"
    _write_png(folder / "a.png", seed=50)
    uri = str(folder.resolve())
    # what the old pipeline wrote: source = the absolute path
    source = open_source(uri, settings)
    ctx = build_context(source, catalog, ["c"], IngestOptions(), settings)
    assert ctx.targets[0].id_scheme == "v1"
    _ingest(catalog, settings, uri)
    pid = point_id(uri, "a.png", 0)
    stored = catalog.index.retrieve("c", [pid])
    assert len(stored) == 1 and stored[0].payload["source"] == "old"
    legacy = dict(stored[0].payload, source=uri)
    legacy.pop("labels_hash")
    catalog.index.overwrite_payloads("c", {pid: legacy})
    again = _ingest(catalog, settings, uri)
    assert again["frames_indexed"] == 0 and again["relabelled"] == 1
    assert [p.payload["source"] for p in catalog.index.scroll("c")] == ["old"]


@pytest.mark.parametrize("command", ["ingest", "reconcile"])
def test_bad_source_name_is_a_usage_error_naming_the_flag(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A source name that could be a path or carries control characters is refused before anything
    is created or queued (exit 2), the message naming the field and not echoing the value."""
    from radsearch.commands.main import main

    folder = tmp_path / "images"
    _write_png(folder / "a.png", seed=60)
    argv = ["--data-dir", str(tmp_path / "data"), command, str(folder), "--collection", "c"]
    assert main([*argv, "--source-name", "../up\x07"]) == 2
    err = capsys.readouterr().err
    assert "source" in err and "name" in err and "../up" not in err
    assert not (tmp_path / "data" / "index").exists() or not any((tmp_path / "data" / "index").iterdir())
