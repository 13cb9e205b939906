"""A PACS as a source: the demo archive's DICOMs in a real Orthanc, ingested over DICOMweb."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from core.config import DicomwebSettings, Settings
from core.errors import BadInput, ConfigError
from ingest.sources import open_source
from ingest.sources.dicomweb import DicomwebSource, parse_dicomweb_uri, with_since
from ingest.sources.multipart import encode_multipart, split_multipart
from radsearch.commands.main import main
from radsearch.demo_data import DemoArchive, generate_demo_archive
from radsearch.services import open_catalog
from tests.orthanc_server import Orthanc, orthanc  # noqa: F401 - the fixture

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> DemoArchive:
    return generate_demo_archive(tmp_path_factory.mktemp("demo"), per_class=2, seed=3)


def _dicoms(archive: DemoArchive) -> list[Path]:
    return sorted((archive.root / "dicom").rglob("*.dcm"))


def _last_json(out: str) -> dict[str, Any]:
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _points(settings: Settings, collection: str) -> list[dict[str, Any]]:
    with open_catalog(settings, owner="test") as catalog:
        return [dict(p.payload, _id=p.id) for p in catalog.index.scroll(collection)]


def test_uri_selectors_and_errors() -> None:
    parsed = parse_dicomweb_uri(
        "dicomweb+http://pacs:8042/dicom-web/?modality=ct&since=2024-01-02&study=1.2.3"
    )
    assert parsed.base_url == "http://pacs:8042/dicom-web"
    assert (parsed.selector.studies, parsed.selector.modality, parsed.selector.since) == (
        ("1.2.3",),
        "CT",
        "20240102",
    )
    for bad, field in (
        ("dicomweb+http://user:secret@pacs/dicom-web", "credentials"),
        ("dicomweb+http://pacs/dw?since=yesterday", "since"),
        ("dicomweb+http://pacs/dw?since=2024-13-01", "since must be a date"),  # the walkthrough's
        ("dicomweb+http://pacs/dw?modality=CT&modality=MR", "modality given 2 times"),
        ("dicomweb+http://pacs/dw?since=2024-01-01&since=2025-01-01", "since given 2 times"),
        ("dicomweb+http://pacs/dw?study=1.2.x", "study"),
        ("dicomweb+http://pacs/dw?colour=red", "selector"),
    ):
        with pytest.raises(ConfigError, match=field) as info:
            parse_dicomweb_uri(bad)
        assert "secret" not in str(info.value)


def test_a_later_polls_day_moves_the_since_of_a_source_on_never_back() -> None:
    """The QIDO watcher's poll day and a source URI's own ``since``: one ``since`` either way
    (found in the review: the day was appended, and a second since is now refused)."""
    uri = "dicomweb+http://pacs/dw?modality=CT&since=2024-06-01"
    moved = parse_dicomweb_uri(with_since(uri, "20250102"))
    assert (moved.selector.modality, moved.selector.since) == ("CT", "20250102")
    assert parse_dicomweb_uri(with_since(uri, "20240101")).selector.since == "20240601"
    assert parse_dicomweb_uri(with_since("dicomweb+http://pacs/dw", "20250102")).selector.since == "20250102"


def test_multipart_round_trip() -> None:
    body, content_type = encode_multipart([b"first\r\n--x", b"second"])
    boundary = content_type.rsplit("boundary=", 1)[1]
    parts = list(split_multipart(body, boundary))
    assert [content for _, content in parts] == [b"first\r\n--x", b"second"]
    assert parts[0][0]["content-type"] == "application/dicom"


def test_ingest_from_orthanc_matches_the_local_folder(
    orthanc: Orthanc,  # noqa: F811
    archive: DemoArchive,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    files = _dicoms(archive)
    for path in files:
        orthanc.upload(path.read_bytes())
    assert len(orthanc.get("/instances")) == len(files)

    data = str(tmp_path / "data")
    settings = Settings(data_dir=Path(data))
    caplog.set_level(logging.DEBUG)
    local = ["--data-dir", data, "ingest", str(archive.root / "dicom"), "--collection", "local", "--json"]
    assert main(local) == 0
    from_folder = _last_json(capsys.readouterr().out)
    pacs = ["--data-dir", data, "ingest", orthanc.dicomweb, "--collection", "pacs", "--json"]
    assert main(pacs) == 0
    captured = capsys.readouterr()
    from_pacs = _last_json(captured.out)
    assert from_pacs["objects"] == from_folder["objects"] == len(files)
    for count in ("frames_indexed", "failed", "quarantined"):
        assert from_pacs[count] == from_folder[count], count
    assert from_pacs["frames_indexed"] > 0

    # The same instances, the same ids (from the SOP Instance UID) and labels from the DICOM tags.
    local_points = {p["_id"]: p for p in _points(settings, "local")}
    pacs_points = {p["_id"]: p for p in _points(settings, "pacs")}
    assert set(local_points) == set(pacs_points)
    for pid, point in pacs_points.items():
        for label in ("modality", "anatomy", "instance_hash", "study_hash", "series_hash"):
            assert point.get(label) == local_points[pid].get(label), label
        assert point["source"] == orthanc.dicomweb.removeprefix("dicomweb+http://").replace(":", "-")
    assert {p["modality"] for p in pacs_points.values()} >= {"CT", "MR"}

    # No PHI canary anywhere (payloads, output, logs), and no UID in the payloads: keys and ETags
    # stand for the UIDs without showing them.
    everything = json.dumps(list(pacs_points.values())) + captured.out + captured.err + caplog.text
    uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    assert not [uid for uid in uids if uid in json.dumps(list(pacs_points.values()))]
    assert archive.phi_strings and not [s for s in archive.phi_strings if s in everything]

    # A second run finds every instance unchanged.
    assert main(pacs) == 0
    again = _last_json(capsys.readouterr().out)
    assert (again["skipped"], again["frames_indexed"]) == (from_pacs["objects"], 0), (from_pacs, again)

    # An instance deleted from the PACS (which Orthanc's change feed does not record): the README's
    # scheduled prune removes its point, and downloads nothing that is indexed.
    gone = orthanc.get("/instances")[0]
    assert httpx.delete(f"{orthanc.url}/instances/{gone}", timeout=30).status_code == 200
    assert main([*pacs, "--prune", "--force"]) == 0
    pruned = _last_json(capsys.readouterr().out)
    assert (pruned["deleted"], pruned["frames_indexed"], pruned["skipped"]) == (1, 0, len(files) - 1)
    assert len({p["key"] for p in _points(settings, "pacs")}) == len(files) - 1


def test_selectors_narrow_the_listing(orthanc: Orthanc, archive: DemoArchive) -> None:  # noqa: F811
    files = _dicoms(archive)
    for path in files:
        orthanc.upload(path.read_bytes())
    settings = DicomwebSettings(page_size=3)  # several pages at every level
    source = DicomwebSource(orthanc.dicomweb, settings, hash_key=b"k", max_object_bytes=1 << 30)
    everything = list(source.list())
    assert len({ref.key for ref in everything}) == len(files)

    ct = DicomwebSource(f"{orthanc.dicomweb}?modality=CT", settings, hash_key=b"k", max_object_bytes=1 << 30)
    ct_keys = {ref.key for ref in ct.list()}
    n_ct = sum(1 for p in files if "/CT/" in p.as_posix())
    assert len(ct_keys) == n_ct > 0

    one = everything[0]
    study, series, sop = source.keys.decode(one.key)
    assert source.locate(sop) == (study, series) and source.ref_for_uid(sop) == one
    assert sop not in one.key + one.etag and study not in one.key
    in_study = DicomwebSource(
        f"{orthanc.dicomweb}?study={study}", settings, hash_key=b"k", max_object_bytes=1 << 30
    )
    assert one.key in {ref.key for ref in in_study.list()}
    future = DicomwebSource(
        f"{orthanc.dicomweb}?since=2999-01-01", settings, hash_key=b"k", max_object_bytes=1 << 30
    )
    assert list(future.list()) == []

    # stat and fetch by key alone (another process: no listing before), the bytes as uploaded.
    fresh = open_source(
        orthanc.dicomweb,
        Settings(dicomweb=settings, security={"hash_key": "k"}),
    )
    assert isinstance(fresh, DicomwebSource)
    assert fresh.stat(one.key) == one
    data = fresh.fetch(one.key)
    assert data in {p.read_bytes() for p in files}
    with pytest.raises(BadInput, match="not found"):
        fresh.fetch(source.keys.encode(study, series, "1.2.3.4.5"))
    with pytest.raises(BadInput, match="not found"):
        fresh.stat(source.keys.encode(study, series, "1.2.3.4.5"))
    with pytest.raises(BadInput, match="another hash key"):  # keys are authenticated
        DicomwebSource(orthanc.dicomweb, settings, hash_key=b"other", max_object_bytes=1).fetch(one.key)
    with pytest.raises(BadInput):
        fresh.fetch("1.2.3.4.5")
    with pytest.raises(BadInput):
        fresh.stat("not-a-uid")
