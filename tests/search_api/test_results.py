"""Results a radiologist can use, on both index backends: hits grouped by object, series and study;
the query's patient or study excluded; positive and negative examples; region-of-interest crops of
uploads; the calibrated "no close match".

The corpus is DICOM-like: the payloads carry the keyed hashes ingest stores (patient, study,
series), frames of one multi-frame object share its key, and a few PNGs carry none.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from pydantic import SecretStr

from core.calibration import CALIBRATION_KEY, calibrate
from core.catalog import Catalog
from core.config import RuntimeSettings, SecuritySettings, Settings
from core.encoders import get_spec
from core.index.base import VectorIndex
from core.index.factory import open_index
from core.payload import build_payload, image_point_id, keyed_hash
from search_api import create_app
from tests.search_api.test_api import HEIGHT, WIDTH, make_frame, memory_index, png_bytes

pytestmark = pytest.mark.filterwarnings(
    "ignore:Payload indexes have no effect:UserWarning", "ignore:Local mode performs exact:UserWarning"
)

COLLECTION = "cases"
HASH_KEY = "results-hash-key"


@dataclass(frozen=True)
class Obj:
    """One stored object: its key, class of picture, frames, and (DICOM) patient/study/series."""

    key: str
    kind: str
    frames: int
    patient: str | None = None
    study: str | None = None
    series: str | None = None


OBJECTS = [
    # patient 1: one study, a 5-frame cine series and a 2-instance series
    Obj("p1/cine.dcm", "circles", 5, "PAT-1", "1.2.1", "1.2.1.1"),
    Obj("p1/b1.dcm", "circles", 1, "PAT-1", "1.2.1", "1.2.1.2"),
    Obj("p1/b2.dcm", "circles", 1, "PAT-1", "1.2.1", "1.2.1.2"),
    # patient 2: circles too, another study
    Obj("p2/c.dcm", "circles", 3, "PAT-2", "1.2.2", "1.2.2.1"),
    Obj("p2/d.dcm", "circles", 1, "PAT-2", "1.2.2", "1.2.2.1"),
    # patient 3: stripes and gradients
    Obj("p3/s.dcm", "stripes", 4, "PAT-3", "1.2.3", "1.2.3.1"),
    Obj("p3/g.dcm", "gradient", 2, "PAT-3", "1.2.3", "1.2.3.2"),
    # PNGs: no patient, study or series
    *(Obj(f"png/{kind}_{i}.png", kind, 1) for kind in ("circles", "stripes", "noise") for i in range(3)),
]


def h(value: str) -> str:
    return keyed_hash(HASH_KEY.encode(), value)


@dataclass
class Cases:
    client: TestClient
    index: VectorIndex
    kind: str
    ids: list[str] = field(default_factory=list)
    payloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    vectors: dict[str, NDArray[np.float32]] = field(default_factory=dict)
    frames: dict[str, NDArray[np.uint8]] = field(default_factory=dict)

    def of(self, key: str) -> list[str]:
        return [pid for pid in self.ids if self.payloads[pid]["key"] == key]

    def search(self, **body: Any) -> dict[str, Any]:
        response = self.client.post(f"/v1/collections/{COLLECTION}/search", json=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def upload(self, files: list[tuple[str, bytes]], **form: Any) -> Any:
        data = {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in form.items()}
        return self.client.post(
            f"/v1/collections/{COLLECTION}/search/image",
            files=[("file", (name, content, "application/octet-stream")) for name, content in files],
            data=data,
        )


def populate(
    index: VectorIndex, settings: Settings
) -> tuple[list[str], dict[str, Any], dict[str, Any], dict[str, Any]]:
    catalog = Catalog(index, settings)
    catalog.create(COLLECTION, get_spec("baseline"))
    rng = np.random.default_rng(11)
    ids, frames, payloads = [], [], []
    for obj in OBJECTS:
        base = make_frame(obj.kind, rng)
        for frame_no in range(obj.frames):
            # the frames of one object differ a little, as the frames of a cine clip do
            frame = np.clip(base.astype(np.int16) + rng.integers(-6, 7, size=base.shape), 0, 255).astype(
                np.uint8
            )
            instance = h(f"{obj.key}-instance") if obj.patient else None
            ids.append(image_point_id(frame_no, instance_hash=instance, source_name="cases", key=obj.key))
            frames.append(frame)
            payloads.append(
                build_payload(
                    {
                        "modality": "CT" if obj.patient else "OT",
                        "anatomy": "chest",
                        "source": "cases",
                        "key": obj.key,
                        "frame": frame_no,
                        "n_frames": obj.frames,
                        "patient_hash": h(obj.patient) if obj.patient else None,
                        "study_hash": h(obj.study) if obj.study else None,
                        "series_hash": h(obj.series) if obj.series else None,
                        "instance_hash": instance,
                    }
                )
            )
    vectors = catalog.encoder_for(COLLECTION).embed(frames)
    index.upsert(COLLECTION, ids, vectors, payloads)
    return (
        ids,
        dict(zip(ids, payloads, strict=True)),
        dict(zip(ids, np.asarray(vectors, dtype=np.float32), strict=True)),
        dict(zip(ids, frames, strict=True)),
    )


@pytest.fixture(scope="module", params=["edge", "qdrant-memory"])
def cases(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cases]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(hash_key=SecretStr(HASH_KEY)),
    )
    index = open_index(settings) if request.param == "edge" else memory_index(settings)
    ids, payloads, vectors, frames = populate(index, settings)
    with TestClient(create_app(settings, index=index)) as client:
        yield Cases(client, index, request.param, ids, payloads, vectors, frames)
    index.close()


def dicom_bytes(frame: NDArray[np.uint8], *, patient_id: str, study_uid: str, frames: int = 1) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("query.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientID = patient_id
    ds.PatientName = "ZZCANARY^RESULTS"
    ds.Rows, ds.Columns = frame.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = frame.astype(np.uint8).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def cosine_order(cases: Cases, query: NDArray[np.float32], leave_out: set[str]) -> list[str]:
    query = query / np.linalg.norm(query)
    scores = {pid: float(np.dot(vec, query)) for pid, vec in cases.vectors.items() if pid not in leave_out}
    return sorted(scores, key=lambda pid: -scores[pid])


# -- grouping ------------------------------------------------------------------------------------


def test_a_multi_frame_object_collapses_to_one_group(cases: Cases) -> None:
    query = cases.of("p1/cine.dcm")[0]
    flat = cases.search(point_id=query, limit=4)["hits"]
    assert "groups" not in cases.search(point_id=query, limit=4)
    assert [cases.payloads[h["id"]]["key"] for h in flat[:3]] == [
        "p1/cine.dcm"
    ] * 3  # frames fill a flat list

    body = cases.search(point_id=query, group_by="object", group_size=2, limit=4)
    keys = [g["key"] for g in body["groups"]]
    assert len(keys) == 4 and len(set(keys)) == 4 and keys[0] == "p1/cine.dcm"
    for group in body["groups"]:
        assert 1 <= len(group["hits"]) <= 2
        assert {h["payload"]["key"] for h in group["hits"]} == {group["key"]}
        scores = [h["score"] for h in group["hits"]]
        assert scores == sorted(scores, reverse=True)
    best = [g["hits"][0]["score"] for g in body["groups"]]
    assert best == sorted(best, reverse=True)
    assert [h["id"] for h in body["hits"]] == [h["id"] for g in body["groups"] for h in g["hits"]]
    assert query not in {h["id"] for h in body["hits"]}


def test_series_and_study_group_by_their_keyed_hashes(cases: Cases) -> None:
    query = cases.vectors[cases.of("p1/b1.dcm")[0]].tolist()
    series = cases.search(vector=query, group_by="series", group_size=10, limit=10)["groups"]
    # the two instances of series 1.2.1.2 are one group; PNGs (no series) are left out
    keys = [g["key"] for g in series]
    assert len(keys) == len(set(keys)) == 5  # every series of the corpus
    two = next(g for g in series if g["key"] == h("1.2.1.2"))
    assert {cases.payloads[x["id"]]["key"] for x in two["hits"]} == {"p1/b1.dcm", "p1/b2.dcm"}
    cine = next(g for g in series if g["key"] == h("1.2.1.1"))
    assert len(cine["hits"]) == 5

    studies = cases.search(vector=query, group_by="study", group_size=3, limit=10)["groups"]
    assert [g["key"] for g in studies][0] == h("1.2.1")
    assert sorted(g["key"] for g in studies) == sorted({h("1.2.1"), h("1.2.2"), h("1.2.3")})
    for group in studies:
        assert len(group["hits"]) == 3
        assert {x["payload"]["study_hash"] for x in group["hits"]} == {group["key"]}
    # limit counts groups
    assert len(cases.search(vector=query, group_by="study", limit=2)["groups"]) == 2


def test_a_group_by_no_hit_holds_is_a_warning_not_a_silent_nothing(cases: Cases) -> None:
    """Found in the walkthrough: ``group_by study`` over PNGs (no study) answered no hits and no
    word why, while the same search without groups finds them."""
    query = cases.vectors[cases.of("p1/b1.dcm")[0]].tolist()
    pngs = cases.search(vector=query, group_by="study", filter={"modality": ["OT"]}, limit=3)
    assert pngs["hits"] == [] and pngs["groups"] == []
    assert [(w["field"], w["value"]) for w in pngs["warnings"]] == [("group_by", "study")]
    assert "no hit holds a study" in pngs["warnings"][0]["message"]
    # grouped by object, the same hits form groups: no warning
    objects = cases.search(vector=query, group_by="object", filter={"modality": ["OT"]}, limit=3)
    assert objects["groups"] and objects["warnings"] == []
    # nothing found at all: the filter's own warning says why, not the grouping
    none = cases.search(vector=query, group_by="study", filter={"anatomy": ["knee"]}, limit=3)
    assert [(w["field"], w["value"]) for w in none["warnings"]] == [("anatomy", "knee")]


def test_grouping_agrees_with_grouping_the_exact_ranking(cases: Cases) -> None:
    query = cases.vectors[cases.of("p2/c.dcm")[1]]
    body = cases.search(vector=query.tolist(), group_by="object", group_size=2, limit=5)
    expected: dict[str, list[str]] = {}
    for pid in cosine_order(cases, query, set()):
        key = cases.payloads[pid]["key"]
        if key in expected or len(expected) < 5:
            members = expected.setdefault(key, [])
            if len(members) < 2:
                members.append(pid)
    assert [(g["key"], [x["id"] for x in g["hits"]]) for g in body["groups"]] == list(expected.items())


def test_bad_grouping_is_refused(cases: Cases) -> None:
    pid = cases.ids[0]
    for body, status in (
        ({"point_id": pid, "group_by": "patient"}, 422),
        ({"point_id": pid, "group_by": "study", "group_size": 0}, 422),
        ({"point_id": pid, "group_by": "study", "offset": 3}, 400),
    ):
        response = cases.client.post(f"/v1/collections/{COLLECTION}/search", json=body)
        assert response.status_code == status, response.text
        assert response.json()["error"]["field"]


# -- exclusion -----------------------------------------------------------------------------------


def test_same_patient_hits_are_never_returned_by_point(cases: Cases) -> None:
    query = cases.of("p1/cine.dcm")[0]
    everything = len(cases.ids)
    plain = cases.search(point_id=query, limit=everything)["hits"]
    assert any(x["payload"].get("patient_hash") == h("PAT-1") for x in plain)
    body = cases.search(point_id=query, limit=everything, exclude={"same_patient": True})
    patients = {x["payload"].get("patient_hash") for x in body["hits"]}
    assert h("PAT-1") not in patients
    assert len(body["hits"]) == everything - 7  # the 7 frames of patient 1
    grouped = cases.search(point_id=query, group_by="study", limit=10, exclude={"same_patient": True})
    assert h("1.2.1") not in [g["key"] for g in grouped["groups"]]
    studies = cases.search(point_id=query, limit=everything, exclude={"same_study": True})["hits"]
    assert h("1.2.1") not in {x["payload"].get("study_hash") for x in studies}


def test_same_patient_of_an_uploaded_dicom_is_hashed_with_the_ingest_key(cases: Cases) -> None:
    frame = cases.frames[cases.of("p1/b2.dcm")[0]]
    data = dicom_bytes(frame, patient_id="PAT-1", study_uid="1.2.9")
    plain = cases.upload([("q.dcm", data)], limit=5)
    assert plain.status_code == 200, plain.text
    assert plain.json()["hits"][0]["payload"]["patient_hash"] == h("PAT-1")
    response = cases.upload([("q.dcm", data)], limit=len(cases.ids), exclude={"same_patient": True})
    assert response.status_code == 200, response.text
    assert "ZZCANARY" not in response.text and "PAT-1" not in response.text
    hits = response.json()["hits"]
    assert hits and h("PAT-1") not in {x["payload"].get("patient_hash") for x in hits}
    # the upload's own study
    same_study = dicom_bytes(frame, patient_id="PAT-9", study_uid="1.2.2")
    response = cases.upload([("q.dcm", same_study)], limit=len(cases.ids), exclude={"same_study": True})
    assert h("1.2.2") not in {x["payload"].get("study_hash") for x in response.json()["hits"]}


def test_listed_patients_are_excluded_from_a_vector_search(cases: Cases) -> None:
    query = cases.vectors[cases.of("p2/c.dcm")[0]].tolist()
    body = cases.search(vector=query, limit=len(cases.ids), exclude={"patients": [h("PAT-2"), h("PAT-3")]})
    assert {x["payload"].get("patient_hash") for x in body["hits"]} == {h("PAT-1"), None}


def test_exclusion_the_query_cannot_make_is_400(cases: Cases) -> None:
    response = cases.client.post(
        f"/v1/collections/{COLLECTION}/search",
        json={"vector": cases.vectors[cases.ids[0]].tolist(), "exclude": {"same_patient": True}},
    )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "invalid_query",
        "field": "exclude.same_patient",
        "message": response.json()["detail"],
    }
    png = cases.upload([("q.png", png_bytes(cases.frames[cases.ids[0]]))], exclude={"same_study": True})
    assert png.status_code == 400 and png.json()["error"]["field"] == "exclude.same_study"
    unknown = cases.upload(
        [("q.png", png_bytes(cases.frames[cases.ids[0]]))], exclude={"same_patients": True}
    )
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_field"
    bad_hash = cases.client.post(
        f"/v1/collections/{COLLECTION}/search",
        json={"point_id": cases.ids[0], "exclude": {"patients": ["x"]}},
    )
    assert bad_hash.status_code == 422


# -- several examples ----------------------------------------------------------------------------


def test_positive_and_negative_points_rank_as_the_average_vector_strategy(cases: Cases) -> None:
    positive = [cases.of("p2/c.dcm")[0], cases.of("png/stripes_0.png")[0]]
    negative = [cases.of("p1/cine.dcm")[0]]
    body = cases.search(positive=positive, negative=negative, limit=len(cases.ids))
    pos = np.mean([cases.vectors[p] for p in positive], axis=0)
    neg = np.mean([cases.vectors[p] for p in negative], axis=0)
    expected = cosine_order(cases, pos + (pos - neg), set(positive + negative))
    got = [x["id"] for x in body["hits"]]
    assert got == expected
    # the negative moves its own kind down: patient 1's frames rank lower than without it
    plain = [x["id"] for x in cases.search(positive=positive, limit=len(cases.ids))["hits"]]
    rank = {pid: i for i, pid in enumerate(plain)}
    moved = {pid: i for i, pid in enumerate(got)}
    p1 = [pid for pid in got if cases.payloads[pid].get("patient_hash") == h("PAT-1")]
    assert sum(moved[p] for p in p1) > sum(rank[p] for p in p1)


def test_uploads_with_roles_and_point_examples(cases: Cases) -> None:
    stripes, circles = cases.of("p3/s.dcm")[0], cases.of("p2/d.dcm")[0]
    files = [("a.png", png_bytes(cases.frames[stripes])), ("b.png", png_bytes(cases.frames[circles]))]
    response = cases.upload(files, role=["positive", "negative"], limit=len(cases.ids))
    assert response.status_code == 200, response.text
    # the uploads are stored frames (same pixels, same vectors): scored as those points would be
    query = 2 * cases.vectors[stripes] - cases.vectors[circles]
    query = query / np.linalg.norm(query)
    for hit in response.json()["hits"]:
        assert hit["score"] == pytest.approx(float(np.dot(cases.vectors[hit["id"]], query)), abs=1e-4)
    hits = [x["id"] for x in response.json()["hits"]]
    assert cases.payloads[hits[0]]["key"] == "p3/s.dcm" and hits[-1] == circles
    # an upload plus a point id: the point is an example, and never a hit
    mixed = cases.upload(files[:1], negative=circles, limit=len(cases.ids))
    assert mixed.status_code == 200, mixed.text
    assert circles not in {x["id"] for x in mixed.json()["hits"]}
    # refusals
    assert cases.upload(files, role=["positive"]).json()["error"]["field"] == "role"
    assert cases.upload(files, role=["positive", "maybe"]).json()["error"]["field"] == "role[1]"
    assert cases.upload(files[:1], role=["negative"]).status_code == 400
    missing = cases.client.post(
        f"/v1/collections/{COLLECTION}/search",
        json={"positive": [cases.ids[0], "00000000-0000-0000-0000-000000000000"]},
    )
    assert missing.status_code == 404 and "positive[1]" in missing.json()["detail"]
    lone_negative = cases.client.post(
        f"/v1/collections/{COLLECTION}/search", json={"point_id": cases.ids[0], "negative": [cases.ids[1]]}
    )
    assert lone_negative.status_code == 422


# -- region of interest --------------------------------------------------------------------------


def test_a_cropped_region_ranks_its_source_first(cases: Cases) -> None:
    source = cases.of("png/stripes_1.png")[0]
    rng = np.random.default_rng(3)
    mosaic = np.zeros((HEIGHT * 2, WIDTH * 2), dtype=np.uint8)
    mosaic[:HEIGHT, :WIDTH] = make_frame("gradient", rng)
    mosaic[:HEIGHT, WIDTH:] = cases.frames[source]
    mosaic[HEIGHT:, :WIDTH] = make_frame("noise", rng)
    mosaic[HEIGHT:, WIDTH:] = make_frame("circles", rng)
    roi = {"x": WIDTH, "y": 0, "width": WIDTH, "height": HEIGHT}
    response = cases.upload([("mosaic.png", png_bytes(mosaic))], roi=roi, limit=3)
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert hits[0]["id"] == source and hits[0]["score"] > 0.999
    whole = cases.upload([("mosaic.png", png_bytes(mosaic))], limit=3).json()["hits"]
    assert whole[0]["id"] != source
    outside = cases.upload([("mosaic.png", png_bytes(mosaic))], roi={**roi, "x": WIDTH + 1})
    assert outside.status_code == 400 and outside.json()["error"]["field"] == "roi"
    for bad in ('{"x": 0, "y": 0, "width": 0, "height": 4}', "[1, 2]", "not json"):
        response = cases.upload([("mosaic.png", png_bytes(mosaic))], roi=bad)
        assert response.status_code == 400, bad
        assert response.json()["error"]["field"].startswith("roi")


# -- calibrated "no close match" -----------------------------------------------------------------


def test_calibrated_collections_say_when_nothing_is_close(cases: Cases) -> None:
    pid = cases.of("p3/s.dcm")[0]
    before = cases.search(point_id=pid, limit=3)
    assert "close_match" not in before and all("weak" not in x for x in before["hits"])
    record = calibrate(cases.index, COLLECTION)
    assert record is not None and record["queries"] == 200
    stored = cases.index.collection_config(COLLECTION).metadata[CALIBRATION_KEY]
    assert stored["threshold"] == record["threshold"]

    near = cases.search(point_id=pid, limit=3)
    assert near["close_match"] is True and near["hits"][0]["weak"] is False
    rng = np.random.default_rng(2026)
    answers = []
    for _ in range(20):
        body = cases.search(vector=rng.normal(size=len(cases.vectors[pid])).tolist(), limit=5)
        answers.append(body["close_match"])
        assert all(x["weak"] == (x["score"] < record["threshold"]) for x in body["hits"])
    assert answers.count(False) == 20, answers
    grouped = cases.search(point_id=pid, group_by="study", limit=2)
    assert all("weak" in x for g in grouped["groups"] for x in g["hits"])
    cases.index.update_metadata(COLLECTION, {CALIBRATION_KEY: None})


def test_calibrate_route(cases: Cases) -> None:
    response = cases.client.post(f"/v1/collections/{COLLECTION}/calibrate")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["collection"] == COLLECTION and body["queries"] == 200 and body["points"] == len(cases.ids)
    assert (
        body["threshold"] == cases.index.collection_config(COLLECTION).metadata[CALIBRATION_KEY]["threshold"]
    )
    assert "close_match" in cases.search(point_id=cases.ids[0], limit=1)
    assert cases.client.post("/v1/collections/nope/calibrate").status_code == 404
    cases.index.update_metadata(COLLECTION, {CALIBRATION_KEY: None})


def test_the_calibration_needs_points(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, runtime=RuntimeSettings(device="cpu", dtype="float32"))
    index = memory_index(settings)
    Catalog(index, settings).create("empty", get_spec("baseline"))
    assert calibrate(index, "empty") is None
    assert CALIBRATION_KEY not in index.collection_config("empty").metadata


# -- the compare route ---------------------------------------------------------------------------


def test_compare_groups_excludes_and_crops(cases: Cases) -> None:
    frame = cases.frames[cases.of("p1/b1.dcm")[0]]
    data = dicom_bytes(frame, patient_id="PAT-1", study_uid="1.2.9")

    def compare(**form: Any) -> Any:
        fields = {k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in form.items()}
        return cases.client.post(
            "/v1/search/compare",
            files={"file": ("q.dcm", data, "application/dicom")},
            data={"collections": COLLECTION, **fields},
        )

    plain = compare(limit=3)
    assert plain.status_code == 200, plain.text
    assert plain.json()["results"][0]["hits"][0]["payload"]["patient_hash"] == h("PAT-1")
    grouped = compare(limit=2, group_by="study", exclude={"same_patient": True}, fuse="true")
    assert grouped.status_code == 200, grouped.text
    result = grouped.json()["results"][0]
    assert [g["key"] for g in result["groups"]] == [h("1.2.2"), h("1.2.3")]
    assert all(x["payload"]["patient_hash"] != h("PAT-1") for x in result["hits"])
    assert {x["id"] for x in grouped.json()["fused"]} <= {x["id"] for x in result["hits"]}
    assert "ZZCANARY" not in grouped.text
    roi = {"x": 0, "y": 0, "width": WIDTH // 2, "height": HEIGHT // 2}
    cropped = compare(limit=1, roi=roi)
    assert cropped.status_code == 200, cropped.text
    assert cropped.json()["results"][0]["hits"][0]["score"] < plain.json()["results"][0]["hits"][0]["score"]
    too_big = compare(roi={**roi, "width": WIDTH + 1})
    assert too_big.status_code == 400 and too_big.json()["error"]["field"] == "roi"
