"""PHI canaries: distinctive fake identities in every identifying tag of an archive; after ingest,
search, thumbnails, errors and a served process, none of them appears anywhere we can look."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pydicom
import pytest
from fastapi.testclient import TestClient

from core.catalog import Catalog
from core.encoders import get_spec
from core.index.factory import open_index
from ingest.inline import IngestOptions
from radsearch.demo_data import generate_demo_archive
from radsearch.services import ingest_source
from search_api import create_app
from search_api.errors import ErrorBody
from search_api.security import hash_api_key
from tests.conftest import free_port
from tests.security.conftest import KEYS, WEBHOOK_TOKEN, SecuredApp, key_headers, secured_settings
from tests.security.hostile import hostile_corpus

# Identifying attributes beyond the demo archive's own (names, ids, birth date, address,
# institution, referring physician, accession number, comments).
EXTRA_TAGS = {
    "OtherPatientIDs": "ZZCANARY-OTHERID-{i}",
    "PatientTelephoneNumbers": "555-0199-{i}",
    "PatientMotherBirthName": "ZZCANARY^MOTHER{i}",
    "MilitaryRank": "ZZCANARY-RANK",
    "OperatorsName": "ZZCANARY^OPERATOR{i}",
    "PerformingPhysicianName": "ZZCANARY^PERFORMER{i}",
    "RequestingPhysician": "ZZCANARY^REQUESTER{i}",
    "InstitutionAddress": "ZZCANARY Street {i}, Canary Town",
    "StationName": "ZZCANARYSTATION{i}",
    "DeviceSerialNumber": "ZZCANARYSERIAL{i}",
    "StudyDescription": "ZZCANARY study of patient {i}",
    "SeriesDescription": "ZZCANARY series {i}",
    "StudyID": "ZZCANSTUDY{i}",
    "PatientComments": "ZZCANARY comment {i}",
}
PRIVATE_CREATOR = "ZZCANARY PRIVATE"


@dataclass
class CanaryArchive:
    root: Path
    manifest: Path
    canaries: set[str]
    burned_in_keys: set[str]
    us_absent_keys: set[str]


def _canary_archive(out: Path) -> CanaryArchive:
    archive = generate_demo_archive(out, per_class=2, seed=11)
    canaries = set(archive.phi_strings)
    burned_in: set[str] = set()
    us_absent: set[str] = set()
    for i, path in enumerate(sorted(archive.root.glob("dicom/**/*.dcm"))):
        ds = pydicom.dcmread(path)
        for keyword, template in EXTRA_TAGS.items():
            value = template.format(i=i)
            setattr(ds, keyword, value)
            canaries.add(value)
        block = ds.private_block(0x0099, PRIVATE_CREATOR, create=True)
        block.add_new(0x01, "LO", f"ZZCANARY-PRIVATE-{i}")
        canaries.add(f"ZZCANARY-PRIVATE-{i}")
        # raw UIDs are identifying too: only their keyed hashes may be stored
        canaries.update(str(ds[k].value) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
        key = path.relative_to(archive.root).as_posix()
        if ds.Modality == "CT" and i % 5 == 0:
            ds.BurnedInAnnotation = "YES"
            burned_in.add(key)
        elif ds.Modality == "US" and "BurnedInAnnotation" in ds and not us_absent:
            del ds.BurnedInAnnotation
            us_absent.add(key)
        ds.save_as(path, enforce_file_format=True)
    # short values (e.g. a 4-digit number) could match by chance; every canary here is ≥ 8 chars
    canaries = {c for c in canaries if len(c) >= 8}
    return CanaryArchive(archive.root, archive.manifest, canaries, burned_in, us_absent)


def _hits(canaries: set[str], text: str) -> list[str]:
    """The canaries found in ``text``. An all-digit canary (a birth or study date) counts where
    no digit comes before it: one that does is the middle of another number (CI once found the
    birth date 20000210 inside a number of the metrics or timings, as in 1.7966594200002103e+09),
    while a date that starts a DICOM date-time (20000210093000) still counts."""
    lowered = text.lower()
    found = []
    for canary in canaries:
        if canary.isdigit():
            if re.search(rf"(?<!\d){canary}", text):
                found.append(canary)
        elif canary.lower() in lowered:
            found.append(canary)
    return sorted(found)


def test_phi_canaries(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    archive = _canary_archive(tmp_path / "archive")
    settings = secured_settings(tmp_path / "data")
    caplog.set_level(logging.DEBUG)

    # -- ingest (inline executor) -------------------------------------------------------------
    index = open_index(settings)
    try:
        catalog = Catalog(index, settings)
        catalog.create("canary", get_spec("baseline"))
        report = ingest_source(
            catalog,
            settings,
            str(archive.root),
            ["canary"],
            IngestOptions(manifest=archive.manifest),
            progress=False,
        )
        job_report = json.dumps(report.to_dict())
        quarantined = {item.key for item in report.quarantined}
        payload_export = json.dumps([p.payload for p in index.scroll("canary")])
        point_ids = [p.id for p in index.scroll("canary")]

        # -- the API: every read route, uploads of canary-laden files, error paths ------------
        api_text: list[str] = []
        # A body without canaries proves little if the route failed: every answer's status is
        # checked too (reads and query uploads of archive files 200 (a query is not stored, so
        # burned-in text is no reason to refuse it), bad input 4xx).
        statuses: list[tuple[str, int, str]] = []  # (what, status, expected)

        def expect(what: str, response: httpx.Response, expected: str) -> str:
            statuses.append((what, response.status_code, expected))
            return response.text

        with TestClient(create_app(settings, index=index), headers=key_headers("reader")) as client:
            api_text.append(expect("list collections", client.get("/v1/collections"), "200"))
            api_text.append(expect("get collection", client.get("/v1/collections/canary"), "200"))
            for field in ("modality", "anatomy", "pathology", "dataset", "split", "source"):
                api_text.append(
                    expect(f"facet {field}", client.get(f"/v1/collections/canary/facets/{field}"), "200")
                )
            for pid in point_ids[:40]:
                api_text.append(
                    expect("get point", client.get(f"/v1/collections/canary/points/{pid}"), "200")
                )
                thumb = client.get(f"/v1/collections/canary/points/{pid}/thumbnail?size=64")
                assert thumb.status_code == 200
                api_text.append(thumb.content.decode("latin-1"))
            api_text.append(
                expect(
                    "search by point",
                    client.post("/v1/collections/canary/search", json={"point_id": point_ids[0]}),
                    "200",
                )
            )
            for path in sorted(archive.root.glob("dicom/**/*.dcm"))[:12]:
                response = client.post(
                    "/v1/collections/canary/search/image",
                    files={"file": (path.name, path.read_bytes(), "application/dicom")},
                )
                api_text.append(expect(f"search by {path.name}", response, "200"))
            for name, data in hostile_corpus().items():
                api_text.append(
                    expect(
                        f"search by hostile {name}",
                        client.post(
                            "/v1/collections/canary/search/image",
                            files={"file": (name, data, "application/dicom")},
                        ),
                        "4xx",
                    )
                )
            # A DICOM sent the wrong way (a text form field, a JSON string, a filter): the 422 or
            # 400 names the field and the rule, never the value.
            dicom = sorted(archive.root.glob("dicom/**/*.dcm"))[0].read_bytes().decode("latin-1")
            wrongly_typed = [
                client.post("/v1/collections/canary/search/image", data={"file": dicom}),
                client.post(
                    "/v1/collections/canary/search/image",
                    files={"file": ("q.dcm", dicom.encode("latin-1"), "application/dicom")},
                    data={"filter": dicom, "limit": dicom},
                ),
                client.post("/v1/collections/canary/search", json={"point_id": dicom}),
                client.post("/v1/collections/canary/search", json={"text": 5, "vector": dicom}),
                client.post("/v1/collections/canary/search", json={"point_id": "x", "filter": dicom}),
                client.post("/v1/search/compare", data={"file": dicom, "collections": dicom}),
            ]
            assert all(400 <= r.status_code < 500 for r in wrongly_typed), [
                r.status_code for r in wrongly_typed
            ]
            api_text.extend(r.text for r in wrongly_typed)
            api_text.append(
                expect(
                    "point id of a name",
                    client.get("/v1/collections/canary/points/ZZCANARY^PATIENT"),
                    "4xx",
                )
            )
            api_text.append(
                expect(
                    "filter on PatientName",
                    client.post(
                        "/v1/collections/canary/search",
                        json={"point_id": point_ids[0], "filter": {"PatientName": ["x"]}},
                    ),
                    "4xx",
                )
            )
            # Metrics label values are route templates and names; the ingest and searches above
            # were recorded in this process.
            api_text.append(expect("metrics", client.get("/metrics", headers=key_headers("admin")), "200"))
    finally:
        index.close()
    log_text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)

    # -- the command line and a served process, at DEBUG ----------------------------------------
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}
    env["RADSEARCH_SECURITY__API_KEYS"] = json.dumps(
        [{"name": "canary", "role": "reader", "sha256": hash_api_key(KEYS["reader"])}]
    )
    env["RADSEARCH_SECURITY__HASH_KEY"] = "canary-hash-key"
    data_dir = str(tmp_path / "served")
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "radsearch",
            "-vv",
            "--data-dir",
            data_dir,
            "ingest",
            str(archive.root),
            "--collection",
            "canary",
            "--manifest",
            str(archive.manifest),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    cli_text = cli.stdout + cli.stderr
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "radsearch", "-vv", "--data-dir", data_dir, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    served_responses: list[str] = []
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        headers = key_headers("reader")
        for path in sorted(archive.root.glob("dicom/**/*.dcm"))[:6]:
            served_responses.append(
                expect(
                    f"served: search by {path.name}",
                    httpx.post(
                        f"{base}/v1/collections/canary/search/image",
                        files={"file": (path.name, path.read_bytes(), "application/dicom")},
                        headers=headers,
                        timeout=60,
                    ),
                    "200",
                )
            )
        for name, data in list(hostile_corpus().items())[:10]:
            served_responses.append(
                expect(
                    f"served: search by hostile {name}",
                    httpx.post(
                        f"{base}/v1/collections/canary/search/image",
                        files={"file": (name, data, "application/dicom")},
                        headers=headers,
                        timeout=60,
                    ),
                    "4xx",
                )
            )
    finally:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=30)
    served_text = stdout + stderr + "\n".join(served_responses)

    canaries = archive.canaries
    hits = {
        "payload": _hits(canaries, payload_export),
        "api": _hits(canaries, "\n".join(api_text)),
        "logs": _hits(canaries, log_text),
        "cli": _hits(canaries, cli_text),
        "served_process": _hits(canaries, served_text),
        "job_reports": _hits(canaries, job_report),
    }
    unquarantined = (archive.burned_in_keys | archive.us_absent_keys) - quarantined
    print(
        f"phi_canaries: canaries={len(canaries)} files={len(list(archive.root.glob('dicom/**/*.dcm')))} "
        f"points={len(point_ids)} log_records={len(caplog.records)} "
        + " ".join(f"hits_{name}={len(found)}" for name, found in hits.items())
        + f" hits={sum(len(f) for f in hits.values())} quarantined={len(quarantined)} "
        f"burned_in_unquarantined={len(unquarantined)}"
    )
    assert not any(hits.values()), hits
    wrong = [
        (what, status, expected)
        for what, status, expected in statuses
        if not (status == 200 if expected == "200" else 400 <= status < 500)
    ]
    assert not wrong, wrong
    assert archive.burned_in_keys and archive.us_absent_keys
    assert not unquarantined
    assert len(point_ids) > 0 and len(caplog.records) > 0


# -- every route and field, wrongly typed ------------------------------------------------------

ROUTE_CANARIES = {
    "PatientName": "ZZROUTECANARY^NAME",
    "PatientID": "ZZROUTECANARY-ID",
    "PatientBirthDate": "19010203",
    "PatientAddress": "ZZROUTECANARY Street 1",
    "OtherPatientIDs": "ZZROUTECANARY-OTHER",
    "InstitutionName": "ZZROUTECANARY HOSPITAL",
    "ReferringPhysicianName": "ZZROUTECANARY^REFERRER",
    "AccessionNumber": "ZZRCANACC1",
}


def _route_canary_dicom() -> bytes:
    import numpy as np

    from tests.search_api.test_api import dicom_bytes, make_frame

    raw = dicom_bytes(make_frame("circles", np.random.default_rng(5)), patient_name="x")
    ds = pydicom.dcmread(io.BytesIO(raw))
    for keyword, value in ROUTE_CANARIES.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def test_wrongly_typed_dicoms_through_every_route_and_field(secured: SecuredApp) -> None:
    """A canary-laden DICOM sent as every path segment, query parameter, header, JSON field, JSON
    body and form field of every operation: no answer is a 5xx, every error body is the error
    model, and no canary comes back."""
    on = secured.settings.api.model_copy(update={"docs": True})
    app = create_app(secured.settings.model_copy(update={"api": on}), index=secured.index)
    dicom = _route_canary_dicom()
    text = dicom.decode("latin-1")
    canaries = set(ROUTE_CANARIES.values())
    assert all(c in text for c in canaries)
    point = secured.corpus.ids("circles")[0]
    valid_path = {"name": "demo", "point_id": point, "field": "modality", "job_id": str(uuid.uuid4())}
    valid_path["alias"] = "demo-alias"
    valid_path["snapshot_id"] = "20261202T014500Z-3fa9c1"
    valid_path["study_uid"] = "1.2.3"
    valid_path["asset"] = "page.js"
    answers: list[tuple[str, Any]] = []
    with TestClient(app) as client:
        document = client.get("/openapi.json").json()
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                tag = operation["tags"][0]
                ingest_tags = ("points", "ingest-jobs", "workers")
                role = "admin" if tag == "admin" else "ingest" if tag in ingest_tags else "reader"
                headers = key_headers(role)
                if tag == "events":
                    headers = {"Authorization": f"Bearer {WEBHOOK_TOKEN}"}
                label = f"{method.upper()} {path}"
                params = operation.get("parameters", [])

                def call(
                    where: str,
                    *,
                    path_values: dict[str, str] | None = None,
                    query: dict[str, str] | None = None,
                    extra_headers: dict[str, str] | None = None,
                    label: str = label,
                    method: str = method,
                    path: str = path,
                    headers: dict[str, str] = headers,
                    **kwargs: Any,
                ) -> None:
                    values = {**valid_path, **(path_values or {})}
                    url = path.format(**{k: quote(v, safe="") for k, v in values.items()})
                    response = client.request(
                        method.upper(),
                        url,
                        params=query,
                        headers={**headers, **(extra_headers or {})},
                        **kwargs,
                    )
                    answers.append((f"{label} [{where}]", response))

                for param in params:
                    name = param["name"]
                    if param["in"] == "path":
                        call(f"path {name} = dicom", path_values={name: text})
                        call(f"path {name} = canary", path_values={name: ROUTE_CANARIES["PatientName"]})
                    elif param["in"] == "query":
                        call(f"query {name}", query={name: text})
                    elif param["in"] == "header":
                        call(f"header {name}", extra_headers={name: ROUTE_CANARIES["PatientName"]})
                call("unknown query parameter", query={"patient": text})
                if tag not in ("health", "web", "events"):
                    call("header X-API-Key", headers={"X-API-Key": ROUTE_CANARIES["PatientName"]})
                content = operation.get("requestBody", {}).get("content", {})
                if "application/json" in content:
                    schema = _resolve(document, content["application/json"]["schema"])
                    call("json body = string", json=text)
                    call(
                        "json body = raw dicom",
                        content=dicom,
                        extra_headers={"content-type": "application/json"},
                    )
                    for prop in schema.get("properties", {}):
                        for value in (text, [text]):
                            call(f"json {prop} = {type(value).__name__}", json={prop: value})
                if "multipart/form-data" in content:
                    schema = _resolve(document, content["multipart/form-data"]["schema"])
                    valid_form = {"collections": "demo"} if "collections" in schema["properties"] else {}
                    upload = {"file": ("q.dcm", dicom, "application/dicom")}
                    for prop in schema["properties"]:
                        if prop == "file":
                            call("form file as text", data={**valid_form, "file": text})
                        else:
                            call(f"form {prop} = dicom", data={**valid_form, prop: text}, files=upload)
                    call("form unknown field", data={**valid_form, "PatientName": text}, files=upload)
                if tag == "events":
                    call("event body = dicom", content=dicom)

    statuses = Counter(r.status_code for _, r in answers)
    server_errors = [f"{label} -> {r.status_code}" for label, r in answers if r.status_code >= 500]
    bad_bodies: list[str] = []
    for label, response in answers:
        if response.status_code >= 400:
            try:
                body = ErrorBody.model_validate(response.json())
            except ValueError as exc:
                bad_bodies.append(f"{label}: {str(exc)[:200]}")
                continue
            if body.detail != body.error.message:
                bad_bodies.append(f"{label}: detail differs from error.message")
    echoed = [f"{label}: {_hits(canaries, r.text)}" for label, r in answers if _hits(canaries, r.text)]
    print(
        f"route_canaries: requests={len(answers)} operations={len(document['paths'])} "
        f"statuses={dict(sorted(statuses.items()))} server_errors={len(server_errors)} "
        f"bad_error_bodies={len(bad_bodies)} echoed={len(echoed)}"
    )
    assert len(answers) > 150
    assert not server_errors, server_errors
    assert not bad_bodies, bad_bodies[:10]
    assert not echoed, echoed[:10]
