"""Quarantine is enforced on what is stored, and burned-in objects are accepted only explicitly
(issue 14, items 6 and 7): the pipeline, the thumbnail route, ``radsearch ingest
--accept-burned-in`` and ``POST /v1/ingest-jobs`` (owner executor: also its prune)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.catalog import Catalog
from core.config import Settings
from core.encoders.registry import get_spec
from core.index.edge import EdgeIndex
from core.payload import SearchFilter
from ingest.inline import IngestOptions, build_context, ingest_inline
from ingest.sources import open_source
from radsearch.commands.main import main
from search_api.app import create_app
from tests.ingest.test_prune import dicom_bytes


@pytest.fixture
def index(settings: Settings) -> Iterator[EdgeIndex]:
    opened = EdgeIndex(settings.index_dir, settings.store)
    yield opened
    opened.close()


def _ingest(index: EdgeIndex, settings: Settings, root: Path) -> dict[str, Any]:
    catalog = Catalog(index, settings)
    source = open_source(str(root), settings)
    try:
        ctx = build_context(source, catalog, ["q"], IngestOptions(), settings)
        return ingest_inline(ctx, settings, progress=False).to_dict()
    finally:
        source.close()


def _point_of(index: EdgeIndex, key: str) -> str:
    return next(p.id for p in index.scroll("q", filter=SearchFilter(key=[key])))


def _thumbnail(client: TestClient, collection: str, pid: str) -> Any:
    return client.get(f"/v1/collections/{collection}/points/{pid}/thumbnail", params={"size": 32})


def test_resent_burned_in_object_loses_its_points_and_pixels(
    settings: Settings, index: EdgeIndex, tmp_path: Path
) -> None:
    """Reproduced first: an indexed image re-sent with BurnedInAnnotation=YES was reported
    quarantined on re-ingest, but its point stayed and the thumbnail route kept serving its
    burned-in pixels (200). Now the route re-checks the object (410 once it is flagged, 404 once
    it is deleted) and the re-ingest deletes its points."""
    root = tmp_path / "archive"
    root.mkdir()
    for i, name in enumerate(("a.dcm", "b.dcm", "c.dcm")):
        (root / name).write_bytes(dicom_bytes(i))
    Catalog(index, settings).create("q", get_spec("baseline"))
    first = _ingest(index, settings, root)
    assert first["frames_indexed"] == 3 and first["quarantined"] == 0
    a, b = _point_of(index, "a.dcm"), _point_of(index, "b.dcm")

    with TestClient(create_app(settings, index=index)) as client:
        assert _thumbnail(client, "q", a).status_code == 200
        # re-sent with burned-in text: the route refuses its pixels before any re-ingest
        (root / "a.dcm").write_bytes(dicom_bytes(0, burned_in="YES"))
        os.utime(root / "a.dcm", ns=(time.time_ns(), time.time_ns()))
        refused = _thumbnail(client, "q", a)
        assert refused.status_code == 410 and "quarantined" in refused.json()["detail"]
        assert refused.headers["content-type"].startswith("application/json")

        second = _ingest(index, settings, root)
        assert second["quarantined_items"][0]["key"] == "a.dcm" and second["quarantined"] == 1
        assert index.count("q", SearchFilter(key=["a.dcm"])) == 0  # the failure: its point stayed
        assert index.count("q") == 2
        assert _thumbnail(client, "q", a).status_code == 404

        # deleted from the archive: 404 naming why, no pixels
        (root / "b.dcm").unlink()
        gone = _thumbnail(client, "q", b)
        assert gone.status_code == 404 and "no longer exists" in gone.json()["detail"]


def _wait(client: TestClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        job: dict[str, Any] = client.get(f"/v1/ingest-jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def test_ultrasound_archive_ingests_with_accept_burned_in(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reproduced first: an ultrasound archive (BurnedInAnnotation absent: quarantined) could not
    be indexed at all, since ``accept_burned_in`` existed only inside the pipeline. Now
    ``--accept-burned-in`` (CLI) and ``accept_burned_in`` (jobs API, owner executor) opt in; the
    choice is in the report, the job and the collection's catalog entry. The owner executor's
    prune is refused (409) beyond the fraction, dry-runs, and goes with force."""
    import json

    root = tmp_path / "us"
    root.mkdir()
    for i in range(4):
        (root / f"loop_{i}.dcm").write_bytes(dicom_bytes(i, frames=3, modality="US", burned_in=None))
    data = ["--data-dir", str(settings.data_dir)]
    ingest = [*data, "ingest", str(root), "--collection", "us", "--json"]
    assert main(ingest) == 0
    refused = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (refused["quarantined"], refused["frames_indexed"], refused["accept_burned_in"]) == (4, 0, False)
    assert main([*ingest, "--accept-burned-in"]) == 0
    accepted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (accepted["quarantined"], accepted["frames_indexed"], accepted["accept_burned_in"]) == (
        0,
        12,
        True,
    )

    index = EdgeIndex(settings.index_dir, settings.store)
    try:
        with TestClient(create_app(settings, index=index)) as client:
            detail = client.get("/v1/collections/us").json()
            assert detail["accept_burned_in"] is True and detail["points"] == 12
            pid = next(p.id for p in index.scroll("us"))
            assert _thumbnail(client, "us", pid).status_code == 200  # accepted: pixels served

            def submit(**extra: Any) -> dict[str, Any]:
                body = {"executor": "owner", "source": str(root), "collections": ["us2"], **extra}
                response = client.post("/v1/ingest-jobs", json=body)
                assert response.status_code == 202, response.text
                return _wait(client, response.json()["id"])

            plain = submit()
            assert plain["state"] == "done" and plain["summary"]["quarantined"] == 4
            assert client.get("/v1/collections/us2").json()["accept_burned_in"] is False
            job = submit(accept_burned_in=True)
            assert job["state"] == "done" and job["options"]["accept_burned_in"] is True
            assert job["summary"]["accept_burned_in"] is True and job["summary"]["frames_indexed"] == 12
            assert client.get("/v1/collections/us2").json()["accept_burned_in"] is True

            # the owner executor's prune: 1 of 4 gone is beyond 0.1 → 409, nothing deleted
            (root / "loop_3.dcm").unlink()
            job = submit(prune=True)
            assert job["state"] == "failed" and job["error_status"] == 409
            assert "1 of the 4 objects" in job["error"] and index.count("us2") == 12
            job = submit(prune=True, dry_run=True)
            assert job["summary"]["diffs"][0]["deleted_items"] == ["loop_3.dcm"] and index.count("us2") == 12
            job = submit(prune=True, force=True)
            assert job["state"] == "done" and job["summary"]["deleted_items"] == ["loop_3.dcm"]
            assert job["counts"]["deleted"] == 1 and index.count("us2") == 9
            # with the workers, deletions are reconcile's
            celery = {"source": "s3://b/p/", "collections": ["x"], "prune": True}
            assert client.post("/v1/ingest-jobs", json=celery).status_code == 422
            # the deletion guard without a prune would go unused: refused, not ignored
            for unused in ({"force": True}, {"max_delete_fraction": 0.5}):
                refused = client.post(
                    "/v1/ingest-jobs",
                    json={"source": str(root), "collections": ["us2"], "executor": "owner", **unused},
                )
                assert refused.status_code == 422, refused.text
                assert "only apply with prune" in refused.json()["error"]["message"]
    finally:
        index.close()
