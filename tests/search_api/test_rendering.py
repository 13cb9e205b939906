"""Images for the viewer: a stored point's frame and an uploaded DICOM's, in window presets or
C,W, from pixels only; quarantined objects refused."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from numpy.typing import NDArray
from PIL import Image
from pydantic import SecretStr

from core.catalog import Catalog
from core.config import RuntimeSettings, SecuritySettings, Settings
from core.encoders import get_spec
from core.index.factory import open_index
from core.payload import build_payload, image_point_id
from ingest.readers.windowing import WINDOW_PRESETS
from search_api import create_app

COLLECTION = "viewer"
# Hounsfield units of the four quadrants: air, lung, soft tissue, bone
QUADRANTS = (-1000, -500, 40, 1000)
SIZE = 64


def hu_image() -> NDArray[np.int16]:
    image = np.zeros((SIZE, SIZE), dtype=np.int16)
    half = SIZE // 2
    image[:half, :half], image[:half, half:], image[half:, :half], image[half:, half:] = QUADRANTS
    return image


def ct_dicom(*, frames: int = 1, burned_in: bool = False) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("ct.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "CT"
    ds.PatientID = "ZZCANARY-RENDER"
    ds.Rows = ds.Columns = SIZE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    if burned_in:
        ds.BurnedInAnnotation = "YES"
    stack = [hu_image() + 1024 + 10 * i for i in range(frames)]  # frame i: every pixel 10 HU higher
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.stack(stack).astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def windowed(hu: float, center: float, width: float) -> int:
    lo = center - width / 2
    return int(np.clip(np.rint((hu - lo) * 255 / width), 0, 255))


def pixels(png: bytes) -> NDArray[np.uint8]:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"))


def quadrant_values(image: NDArray[np.uint8]) -> list[int]:
    q = image.shape[0] // 4
    return [int(image[q, q]), int(image[q, 3 * q]), int(image[3 * q, q]), int(image[3 * q, 3 * q])]


@dataclass
class Viewer:
    client: TestClient
    ct: str
    cine: str
    quarantined: str
    png: str


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewer]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(hash_key=SecretStr("render-key")),
    )
    folder = tmp_path_factory.mktemp("files")
    (folder / "ct.dcm").write_bytes(ct_dicom())
    (folder / "cine.dcm").write_bytes(ct_dicom(frames=4))
    (folder / "marked.dcm").write_bytes(ct_dicom(burned_in=True))
    grey = np.tile(np.arange(SIZE, dtype=np.uint8) * 4, (SIZE, 1))
    Image.fromarray(grey).save(folder / "ramp.png")
    index = open_index(settings)
    catalog = Catalog(index, settings)
    catalog.create(COLLECTION, get_spec("baseline"))
    points = {"ct.dcm": 0, "cine.dcm": 2, "marked.dcm": 0, "ramp.png": 0}
    ids = [
        image_point_id(frame, instance_hash=None, source_name="files", key=key)
        for key, frame in points.items()
    ]
    payloads = [
        build_payload({"source": "files", "key": key, "frame": frame}) for key, frame in points.items()
    ]
    vectors = np.eye(len(ids), catalog.get(COLLECTION).dim, dtype=np.float32)
    index.upsert(COLLECTION, ids, vectors, payloads)
    index.register_source(COLLECTION, "files", str(Path(folder).resolve()))
    with TestClient(create_app(settings, index=index)) as client:
        yield Viewer(client, *ids)
    index.close()


def image(viewer: Viewer, point: str, **params: object) -> NDArray[np.uint8]:
    response = viewer.client.get(f"/v1/collections/{COLLECTION}/points/{point}/image", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return pixels(response.content)


def test_window_presets_change_the_pixels_as_the_window_says(viewer: Viewer) -> None:
    for name, (center, width) in WINDOW_PRESETS.items():
        got = quadrant_values(image(viewer, viewer.ct, window=name))
        assert got == [windowed(hu, center, width) for hu in QUADRANTS], name
    assert quadrant_values(image(viewer, viewer.ct, window="-100,300")) == [
        windowed(hu, -100, 300) for hu in QUADRANTS
    ]
    # auto: the file's own window (40/400), as ingest renders it
    assert quadrant_values(image(viewer, viewer.ct)) == [0, 0, windowed(40, 40, 400), 255]
    assert image(viewer, viewer.ct, window="lung", size=32).shape == (32, 32)
    assert image(viewer, viewer.ct).shape == (SIZE, SIZE)  # native size by default


def test_a_cine_point_renders_its_own_frame(viewer: Viewer) -> None:
    response = viewer.client.get(f"/v1/collections/{COLLECTION}/points/{viewer.cine}/image?window=brain")
    assert response.headers["x-radsearch-frame"] == "2"
    assert quadrant_values(pixels(response.content))[2] == windowed(40 + 20, 40, 80)


def test_png_points_window_their_display_values(viewer: Viewer) -> None:
    ramp = image(viewer, viewer.png, window="128,128")
    assert int(ramp[0, 0]) == 0 and int(ramp[0, -1]) == 255
    assert int(ramp[0, 32]) == windowed(128, 128, 128)


def test_quarantined_objects_and_bad_windows_are_refused(viewer: Viewer) -> None:
    url = f"/v1/collections/{COLLECTION}/points/{viewer.quarantined}/image"
    assert viewer.client.get(url).status_code == 410
    for bad in ("wide", "1,0", "nan,3", "1,2,3", "5"):
        response = viewer.client.get(
            f"/v1/collections/{COLLECTION}/points/{viewer.ct}/image", params={"window": bad}
        )
        assert response.status_code == 400, bad
        assert response.json()["error"]["field"] == "window"
    misspelt = viewer.client.get(f"/v1/collections/{COLLECTION}/points/{viewer.ct}/image?window=lungg")
    assert misspelt.json()["error"]["message"].endswith("with width 1 to 1e6 (did you mean 'lung'?)")
    assert (
        viewer.client.get(f"/v1/collections/{COLLECTION}/points/{viewer.ct}/image?size=8").status_code == 422
    )


def render(viewer: Viewer, data: bytes, name: str = "case.dcm", **form: object) -> Any:
    return viewer.client.post(
        "/v1/render",
        files={"file": (name, data, "application/dicom")},
        data={k: str(v) for k, v in form.items()},
    )


def test_render_an_uploaded_dicom(viewer: Viewer) -> None:
    response = render(viewer, ct_dicom(frames=4), window="bone")
    assert response.status_code == 200, response.text
    assert response.headers["x-radsearch-frames"] == "4"
    assert response.headers["x-radsearch-frame"] == "2"  # the middle: the searched frame
    center, width = WINDOW_PRESETS["bone"]
    got = quadrant_values(pixels(response.content))
    assert got == [windowed(hu + 20, center, width) for hu in QUADRANTS]
    first = render(viewer, ct_dicom(frames=4), window="bone", frame=0, size=128)
    assert first.status_code == 200
    assert pixels(first.content).shape == (128, 128)
    assert "ZZCANARY" not in str(first.headers)

    assert render(viewer, ct_dicom(burned_in=True)).status_code == 410
    no_frame = render(viewer, ct_dicom(), frame=3)
    assert no_frame.status_code == 400 and no_frame.json()["error"]["field"] == "frame"
    unknown = render(viewer, ct_dicom(), roi="{}")
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_field"
    broken = render(viewer, b"not an image at all")
    assert 400 <= broken.status_code < 500
