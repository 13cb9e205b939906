"""Deletions, safely (issue 14, items 1-3): ``radsearch ingest --prune`` in the embedded mode, its
dry run and its guard, and reconcile's like-with-like frame count. In process (``main(argv)``) on a
local folder and the embedded store: no Redis, no workers."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

from core.catalog import Catalog
from core.config import Settings
from core.encoders.registry import get_spec
from core.index import open_index
from ingest.inline import IngestOptions, build_context, ingest_inline
from ingest.prune import diff_source, indexed_objects
from ingest.sources import open_source
from radsearch.commands.main import main

N_IMAGES = 20


def png_bytes(i: int, size: int = 48) -> bytes:
    """A small grey PNG, different for each ``i``."""
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:size, 0:size]
    base = (np.sin(xx / (3 + i % 7)) + np.cos(yy / (2 + i % 5))) * 60 + 128
    pixels = np.clip(base + rng.normal(0, 10, (size, size)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def dicom_bytes(
    i: int,
    *,
    frames: int = 1,
    modality: str = "CT",
    burned_in: str | None = "NO",
    size: int = 24,
) -> bytes:
    """A small DICOM, different for each ``i``: single-frame CT, or a multi-frame ultrasound loop
    (``modality`` US); ``burned_in`` is BurnedInAnnotation (None: absent)."""
    rng = np.random.default_rng(500 + i)
    yy, xx = np.mgrid[0:size, 0:size]
    stack = np.stack(
        [
            np.clip(128 + 80 * np.sin((xx + 2 * f) / (3 + i % 5)) + rng.normal(0, 10, (size, size)), 0, 255)
            for f in range(frames)
        ]
    ).astype(np.uint8)
    sop_class = UltrasoundMultiFrameImageStorage if modality == "US" else CTImageStorage
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    ds.set_pixel_data(stack if frames > 1 else stack[0], "MONOCHROME2", 8)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if frames > 1:
        ds.NumberOfFrames = frames
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    root.mkdir()
    for i in range(N_IMAGES):
        (root / f"img_{i:02d}.png").write_bytes(png_bytes(i))
    return root


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any], str]:
    """Run the command line; (exit code, its last JSON line or {}, stderr)."""
    code = main(list(argv))
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    last = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return code, last, captured.err


def _count(data: str) -> int:
    index = open_index(Settings(data_dir=Path(data)))
    try:
        return index.count("c")
    finally:
        index.close()


def test_deleted_file_is_searchable_until_ingest_prune(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reproduced first: a file deleted from the archive stayed the top hit (score 1.0) of a
    search by its own pixels in the embedded mode, since only reconcile (Redis + worker) removed
    points. ``ingest --prune --dry-run`` prints the diff and writes nothing; ``ingest --prune``
    deletes the points, reporting the key."""
    data = str(tmp_path / "data")
    assert _run(capsys, "--data-dir", data, "ingest", str(folder), "--collection", "c", "--json")[0] == 0
    gone = folder / "img_07.png"
    query = tmp_path / "query.png"
    shutil.copy(gone, query)
    gone.unlink()

    search = ("--data-dir", data, "search", str(query), "--collection", "c", "-k", "1", "--json")
    code, hits, _ = _run(capsys, *search)
    assert code == 0 and hits["hits"][0]["payload"]["key"] == "img_07.png"
    assert hits["hits"][0]["score"] > 0.999  # the failure: a deleted file is still found

    ingest = ("--data-dir", data, "ingest", str(folder), "--collection", "c")
    code, dry, _ = _run(capsys, *ingest, "--prune", "--dry-run", "--json")
    assert code == 0 and dry["dry_run"] is True
    diff = dry["diffs"][0]
    assert (diff["added"], diff["changed"], diff["deleted"], diff["deleted_items"]) == (
        0,
        0,
        1,
        ["img_07.png"],
    )
    assert _count(data) == N_IMAGES  # nothing written
    (folder / "img_99.png").write_bytes(png_bytes(99))
    assert main([*ingest, "--prune", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "  + img_99.png" in text and "  - img_07.png" in text and "nothing was written" in text
    (folder / "img_99.png").unlink()

    code, summary, _ = _run(capsys, *ingest, "--prune", "--json")
    assert code == 0 and summary["deleted"] == 1 and summary["deleted_items"] == ["img_07.png"]
    assert _count(data) == N_IMAGES - 1
    code, hits, _ = _run(capsys, *search)
    assert code == 0 and hits["hits"][0]["payload"]["key"] != "img_07.png"
    # a plain ingest (no --prune) never deletes
    (folder / "img_03.png").unlink()
    code, summary, _ = _run(capsys, *ingest, "--json")
    assert code == 0 and summary["deleted"] == 0 and _count(data) == N_IMAGES - 1


def test_prune_refuses_an_empty_listing_and_too_many_deletions_unless_forced(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reproduced first: reconcile against an empty source (an unmounted share) deleted the whole
    collection. A prune of an empty listing, or of more than --max-delete-fraction (0.1) of a
    collection's objects, is refused with exit 2 naming the numbers, nothing deleted; --force goes."""
    data = str(tmp_path / "data")
    ingest = ("--data-dir", data, "ingest", str(folder), "--collection", "c")
    assert _run(capsys, *ingest, "--json")[0] == 0

    unmounted = folder.rename(tmp_path / "elsewhere")
    folder.mkdir()  # the mount point, empty
    code, error, err = _run(capsys, *ingest, "--prune", "--json")
    assert code == 2 and error["error"]["type"] == "DeletionRefused"
    assert f"all {N_IMAGES} objects of collection 'c'" in err and "--force" in err
    assert _count(data) == N_IMAGES
    folder.rmdir()
    unmounted.rename(folder)

    for i in range(3):  # 3 of 20 = 15 %
        (folder / f"img_{i:02d}.png").unlink()
    code, error, err = _run(capsys, *ingest, "--prune", "--json")
    assert code == 2 and "3 of the 20 objects" in err and "0.1" in err
    assert _count(data) == N_IMAGES
    assert _run(capsys, *ingest, "--prune", "--max-delete-fraction", "0.2", "--dry-run", "--json")[0] == 0
    code, summary, _ = _run(capsys, *ingest, "--prune", "--force", "--json")
    assert code == 0 and summary["deleted_items"] == ["img_00.png", "img_01.png", "img_02.png"]
    assert _count(data) == N_IMAGES - 3
    assert _run(capsys, *ingest, "--prune", "--max-delete-fraction", "1.5")[0] == 2
    # found in the walkthrough: the guard's options without --prune were taken, and unused
    for unused in (["--force"], ["--max-delete-fraction", "0.5"], ["--dry-run", "--force"]):
        code, _, err = _run(capsys, *ingest, *unused)
        assert code == 2 and "with --prune (guarding its deletions)" in err, unused


def test_long_series_is_not_changed_for_reconcile(settings: Settings, tmp_path: Path) -> None:
    """Reproduced first: reconcile compared the stored points of an object (64 at most: long
    series are sampled) with the file's frame count, so a 70-frame series was "changed" and
    re-embedded on every run. Now the payload records ``frames_sampled`` and the diff compares
    with it; a point written before it (no ``frames_sampled``) counts the reader's cap."""
    root = tmp_path / "series"
    root.mkdir()
    (root / "long.dcm").write_bytes(dicom_bytes(1, frames=70, modality="US", size=16))
    (root / "short.dcm").write_bytes(dicom_bytes(2, frames=5, modality="US", size=16))
    index = open_index(settings)
    try:
        catalog = Catalog(index, settings)
        catalog.create("c", get_spec("baseline"))
        source = open_source(str(root), settings)
        ctx = build_context(source, catalog, ["c"], IngestOptions(), settings)
        report = ingest_inline(ctx, settings, progress=False)
        assert report.frames_indexed == 64 + 5 and not report.failed and not report.quarantined
        payloads = [p.payload for p in index.scroll("c")]
        long_points = [p for p in payloads if p["key"] == "long.dcm"]
        assert {p["n_frames"] for p in long_points} == {70} and {
            p["frames_sampled"] for p in long_points
        } == {64}
        # the old rule: 64 stored points < 70 frames in the file → "changed"
        assert len(long_points) < long_points[0]["n_frames"]

        listing = {ref.key: ref for ref in source.list()}
        max_frames = settings.ingest.max_frames_per_object
        diff = diff_source("c", listing, indexed_objects(index, "c", source, max_frames=max_frames))
        assert (diff.added, diff.changed, diff.deleted) == ([], [], [])
        # points written before frames_sampled existed: compared with the reader's cap
        legacy = [p for p in index.scroll("c") if p.payload["key"] == "long.dcm"]
        index.upsert(
            "c",
            [p.id for p in legacy],
            np.stack([np.ones(get_spec("baseline").dim, dtype=np.float32)] * len(legacy)),
            [{k: v for k, v in p.payload.items() if k != "frames_sampled"} for p in legacy],
        )
        diff = diff_source("c", listing, indexed_objects(index, "c", source, max_frames=max_frames))
        assert diff.changed == []
        # a missing frame is still a change
        index.delete("c", [legacy[0].id])
        diff = diff_source("c", listing, indexed_objects(index, "c", source, max_frames=max_frames))
        assert diff.changed == ["long.dcm"]
        source.close()
    finally:
        index.close()
