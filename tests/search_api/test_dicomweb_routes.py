"""DICOMweb routes against a real Orthanc: STOW-RS pushed by Orthanc (a DICOMweb peer), search by
UID fetched from Orthanc by WADO-RS, re-identification for clinicians only."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from core.config import ApiKeyEntry, DicomwebSettings, RuntimeSettings, SecuritySettings, Settings
from ingest.sources.multipart import encode_multipart
from radsearch.demo_data import DemoArchive, generate_demo_archive
from radsearch.services import ensure_collection, open_catalog
from search_api.security import hash_api_key
from tests.orthanc_server import Orthanc, ServedApp, start_orthanc

pytestmark = pytest.mark.timeout(300)

REID_KEY = Fernet.generate_key().decode()
KEYS = {"ingest": "ingest-key-123", "reader": "reader-key-456", "clinician": "clinician-key-789"}


def headers(role: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[role]}


@dataclass
class Setup:
    orthanc: Orthanc
    api: ServedApp
    archive: DemoArchive
    settings: Settings

    def post(self, path: str, role: str, *, content_type: str | None = None, **kwargs: Any) -> httpx.Response:
        extra = {"Content-Type": content_type} if content_type else {}
        return httpx.post(f"{self.api.url}{path}", headers={**headers(role), **extra}, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("dicomweb")
    archive = generate_demo_archive(root / "demo", per_class=1, seed=11)
    # Orthanc first (radsearch's settings name it as the PACS), its peer pointing at radsearch.
    from tests.conftest import free_port

    api_port = free_port()
    orthanc = start_orthanc(
        root / "orthanc",
        dicomweb_servers={
            "radsearch": {
                "Url": f"http://127.0.0.1:{api_port}/v1/dicomweb/",
                "HttpHeaders": {"X-API-Key": KEYS["ingest"]},
            }
        },
    )
    try:
        settings = Settings(
            data_dir=root / "data",
            runtime=RuntimeSettings(device="cpu", dtype="float32"),
            security=SecuritySettings(
                hash_key=SecretStr("test-hash-key"),
                api_keys=[
                    ApiKeyEntry(name=f"{role}-bot", role=role, sha256=hash_api_key(key))
                    for role, key in KEYS.items()
                ],
            ),
            dicomweb=DicomwebSettings(
                url=orthanc.dicomweb, viewer="https://ohif.example", reid_key=SecretStr(REID_KEY)
            ),
        )
        with open_catalog(settings, owner="test") as catalog:
            ensure_collection(catalog, "pacs", None)
            ensure_collection(catalog, "uploads", None)
        with ServedApp(settings, port=api_port) as api:
            yield Setup(orthanc, api, archive, settings)
    finally:
        # Stopped whatever failed after it started (a leaked Orthanc outlives the test run).
        orthanc.stop()


def _dicoms(archive: DemoArchive, modality: str) -> list[Path]:
    return sorted((archive.root / "dicom" / modality).rglob("*.dcm"))


def _count(setup: Setup, collection: str) -> int:
    response = httpx.get(
        f"{setup.api.url}/v1/collections/{collection}", headers=headers("reader"), timeout=30
    )
    response.raise_for_status()
    return int(response.json()["points"])


def test_orthanc_forwards_a_study_to_the_stow_receiver(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = _dicoms(setup.archive, "CT")[0]
    stored = setup.orthanc.upload(path.read_bytes())
    before = _count(setup, "pacs")
    response = httpx.post(
        f"{setup.orthanc.url}/dicom-web/servers/radsearch/stow",
        json={"Resources": [stored["ParentStudy"]], "Synchronous": True},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    after = _count(setup, "pacs")
    assert after > before

    # Searchable: an upload of the same file finds the pushed instance first.
    with path.open("rb") as fh:
        found = setup.post("/v1/collections/pacs/search/image", "reader", files={"file": ("q.dcm", fh)})
    assert found.status_code == 200, found.text
    top = found.json()["hits"][0]
    assert top["score"] > 0.999 and top["payload"]["modality"] == "CT"

    # Forwarding again changes nothing (idempotent point ids), and no PHI reached the logs.
    again = httpx.post(
        f"{setup.orthanc.url}/dicom-web/servers/radsearch/stow",
        json={"Resources": [stored["ParentStudy"]], "Synchronous": True},
        timeout=120,
    )
    assert again.status_code == 200 and _count(setup, "pacs") == after
    assert not [s for s in setup.archive.phi_strings if s in caplog.text]


def test_direct_stow_client_roles_and_errors(setup: Setup) -> None:
    files = _dicoms(setup.archive, "MR")[:2]
    body, content_type = encode_multipart([p.read_bytes() for p in files] + [b"not dicom"])
    response = setup.post(
        "/v1/dicomweb/studies?collection=uploads", "ingest", content=body, content_type=content_type
    )
    assert response.status_code == 202, response.text  # two stored, one not understood
    result = response.json()
    assert len(result["00081199"]["Value"]) == 2 and len(result["00081198"]["Value"]) == 1
    assert _count(setup, "uploads") >= 2
    n = _count(setup, "uploads")
    assert (
        setup.post(
            "/v1/dicomweb/studies?collection=uploads", "ingest", content=body, content_type=content_type
        ).status_code
        == 202
    )
    assert _count(setup, "uploads") == n

    refused = setup.post("/v1/dicomweb/studies", "reader", content=body, content_type=content_type)
    assert refused.status_code == 403
    wrong = setup.post("/v1/dicomweb/studies", "ingest", content=b"x", content_type="application/json")
    assert wrong.status_code == 415 and wrong.json()["error"]["field"] == "Content-Type"
    missing = setup.post(
        "/v1/dicomweb/studies?collection=nope", "ingest", content=body, content_type=content_type
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "collection_not_found"
    assert json.dumps(missing.json()).count("ZZ") == 0


def test_search_by_uid_matches_an_upload_and_reidentifies_for_clinicians(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    studies = [setup.orthanc.upload(p.read_bytes())["ParentStudy"] for p in _dicoms(setup.archive, "")]
    forwarded = httpx.post(
        f"{setup.orthanc.url}/dicom-web/servers/radsearch/stow",
        json={"Resources": sorted(set(studies)), "Synchronous": True},
        timeout=300,
    )
    assert forwarded.status_code == 200, forwarded.text
    path = _dicoms(setup.archive, "MR")[0]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    uids = {
        "study_uid": str(ds.StudyInstanceUID),
        "series_uid": str(ds.SeriesInstanceUID),
        "instance_uid": str(ds.SOPInstanceUID),
    }

    with path.open("rb") as fh:
        uploaded = setup.post("/v1/collections/pacs/search/image", "reader", files={"file": ("q.dcm", fh)})
    assert uploaded.status_code == 200, uploaded.text
    expected = [(h["id"], round(h["score"], 4)) for h in uploaded.json()["hits"]]
    for query in (uids, {"study_uid": uids["study_uid"]}, {**uids, "series_uid": None}):
        by_uid = setup.post("/v1/collections/pacs/search/dicomweb", "reader", json=query)
        assert by_uid.status_code == 200, by_uid.text
        assert [(h["id"], round(h["score"], 4)) for h in by_uid.json()["hits"]] == expected
    reader_text = by_uid.text
    assert "study_uid" not in reader_text and uids["study_uid"] not in reader_text

    caplog.set_level(logging.INFO, logger="radsearch.audit")
    caplog.clear()
    clinician = setup.post("/v1/collections/pacs/search/dicomweb", "clinician", json={**uids, "limit": 5})
    assert clinician.status_code == 200, clinician.text
    hits = clinician.json()["hits"]
    top = hits[0]
    assert (top["study_uid"], top["series_uid"], top["instance_uid"]) == (
        uids["study_uid"],
        uids["series_uid"],
        uids["instance_uid"],
    )
    assert top["viewer_url"] == f"https://ohif.example/viewer?StudyInstanceUIDs={uids['study_uid']}"
    reidentified = [h for h in hits if "instance_uid" in h]
    audit = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reidentify ")]
    assert len(audit) == len(reidentified) == len(hits)
    assert all("who=clinician-bot" in line and "at=" in line for line in audit)
    assert {line.split("instance_hash=")[1].split()[0] for line in audit} == {
        h["payload"]["instance_hash"] for h in hits
    }
    assert not [line for line in audit if uids["study_uid"] in line]

    # Every search route re-identifies for a clinician, grouped hits audited once each; a reader
    # of the same route sees hashes only.
    caplog.clear()
    body = {"point_id": top["id"], "group_by": "object", "limit": 3}
    by_point = setup.post("/v1/collections/pacs/search", "clinician", json=body).json()
    assert by_point["hits"] and all("instance_uid" in h for h in by_point["hits"])
    assert all("instance_uid" in h for g in by_point["groups"] for h in g["hits"])
    audit = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reidentify ")]
    assert len(audit) == len({h["id"] for h in by_point["hits"]})
    as_reader = setup.post("/v1/collections/pacs/search", "reader", json=body).json()
    assert as_reader["hits"] and not [h for h in as_reader["hits"] if "instance_uid" in h]
    # A plain search by point too (the API's direct path, search_api.direct_search).
    caplog.clear()
    plain = {"point_id": top["id"], "limit": 3}
    by_point = setup.post("/v1/collections/pacs/search", "clinician", json=plain).json()
    assert len(by_point["hits"]) == 3 and all("instance_uid" in h for h in by_point["hits"])
    audit = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reidentify ")]
    assert len(audit) == 3 and all("who=clinician-bot" in line for line in audit)
    as_reader = setup.post("/v1/collections/pacs/search", "reader", json=plain).json()
    assert len(as_reader["hits"]) == 3 and not [h for h in as_reader["hits"] if "instance_uid" in h]

    # The table on disk holds no UID in the clear.
    table = (setup.settings.data_dir / "reid" / "uids.sqlite").read_bytes()
    assert uids["study_uid"].encode() not in table and uids["instance_uid"].encode() not in table

    # exclude and group_by: the query's own study left out, one hit per study, limit still met.
    own_study = by_uid.json()["hits"][0]["payload"]["study_hash"]
    others = setup.post(
        "/v1/collections/pacs/search/dicomweb",
        "reader",
        json={**uids, "exclude": {"same_study": True}, "group_by": "study", "group_size": 1, "limit": 5},
    )
    assert others.status_code == 200, others.text
    studies = [h["payload"]["study_hash"] for h in others.json()["hits"]]
    assert len(studies) == 5 and own_study not in studies and len(set(studies)) == 5
    unfiltered = [h["id"] for h in by_uid.json()["hits"] if h["payload"]["study_hash"] != own_study]
    assert [h["id"] for h in others.json()["hits"]][:2] == unfiltered[:2]

    bad = setup.post("/v1/collections/pacs/search/dicomweb", "reader", json={"study_uid": "1.2.x"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "study_uid"
    unknown = setup.post("/v1/collections/pacs/search/dicomweb", "reader", json={"study_uid": "1.2.3.4"})
    assert unknown.status_code == 404 and unknown.json()["error"]["field"] == "study_uid"
    assert "1.2.3.4" not in unknown.text
    gone = setup.post(
        "/v1/collections/pacs/search/dicomweb", "reader", json={**uids, "instance_uid": "1.2.3.4.5"}
    )
    assert gone.status_code == 404 and gone.json()["error"]["field"] == "instance_uid"
    # a frame the instance does not have (found in the walkthrough: its last frame stood in for it)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    past = setup.post("/v1/collections/pacs/search/dicomweb", "reader", json={**uids, "frame": frames})
    assert past.status_code == 400 and past.json()["error"]["field"] == "frame", past.text
    assert f"the instance has {frames} frame(s)" in past.json()["error"]["message"]
    last = setup.post("/v1/collections/pacs/search/dicomweb", "reader", json={**uids, "frame": frames - 1})
    assert last.status_code == 200, last.text


def test_ingest_job_from_the_configured_pacs_only(setup: Setup) -> None:
    for path in _dicoms(setup.archive, "CT"):
        setup.orthanc.upload(path.read_bytes())
    # The collection is created by the job (baseline encoder).
    created = setup.post(
        "/v1/ingest-jobs",
        "ingest",
        json={
            "source": f"{setup.orthanc.dicomweb}?modality=CT",
            "collections": ["jobs"],
            "executor": "owner",
        },
    )
    assert created.status_code in (200, 201, 202), created.text
    job_id = created.json()["id"]
    deadline = time.monotonic() + 120
    while True:
        job = httpx.get(
            f"{setup.api.url}/v1/ingest-jobs/{job_id}", headers=headers("ingest"), timeout=30
        ).json()
        if job["state"] in ("done", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert job["state"] == "done", job
    assert _count(setup, "jobs") >= len(_dicoms(setup.archive, "CT"))

    # Any other server is refused: a job never makes radsearch call an arbitrary URL.
    refused = setup.post(
        "/v1/ingest-jobs",
        "ingest",
        json={
            "source": "dicomweb+http://169.254.169.254/dicom-web",
            "collections": ["jobs"],
            "executor": "owner",
        },
    )
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "source", refused.text
    assert "RADSEARCH_DICOMWEB__URL" in refused.json()["detail"] and "169.254" not in refused.text
