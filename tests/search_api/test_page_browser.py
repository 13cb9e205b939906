"""The page at ``/`` used as a radiologist would, in Debian's chromium (Playwright, headless).

A served app over a collection ingested through the real pipeline from DICOMs of several patients
(one multi-frame object), API keys on. One flow, a screenshot per step under the test's folder:
enter the key → upload a DICOM with the keyboard → its rendering appears → grouped results (the
multi-frame object is one card; the query's own patient is left out) → add and remove a filter →
enlarge a hit beside the query → a window preset changes its pixels → 👎 a hit and it is gone → draw
a region → the region's source ranks first. Then the layout at 1920×1080 and a comparison of two
collections. Every request stays on 127.0.0.1.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from numpy.typing import NDArray
from pydantic import SecretStr

from core.api_keys import hash_api_key
from core.catalog import Catalog
from core.config import ApiKeyEntry, RuntimeSettings, SecuritySettings, Settings
from core.encoders import get_spec
from core.index.factory import open_index
from ingest.inline import IngestOptions
from radsearch.services import ingest_source
from search_api import create_app
from tests.search_api.browser import OFFLINE_ARGS, TIMEOUT_MS, Served, chromium

KEY = "rs_page-test-reader-key-0123456789abcdef"
SIZE = 128
QUERY_PATIENT = "PAT-QUERY"


def _frame(kind: str, seed: int) -> NDArray[np.uint8]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    if kind == "checker":  # only the crop's source has it
        image = np.where(((yy // 16) + (xx // 16)) % 2 == 0, 240.0, 20.0)
    elif kind == "circles":
        cy, cx, r = rng.uniform(40, 88), rng.uniform(40, 88), rng.uniform(14, 30)
        image = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r**2, 220.0, 40.0)
    elif kind == "stripes":
        image = 127 + 110 * np.sin(2 * np.pi * xx / rng.uniform(6, 12) + rng.uniform(0, 6))
    elif kind == "gradient":
        image = 255 * (yy + xx * rng.uniform(0, 0.5)) / (SIZE * 1.5)
    else:
        image = rng.uniform(0, 255, size=(SIZE, SIZE))
    return np.clip(image, 0, 255).astype(np.uint8)


def _dicom(frames: list[NDArray[np.uint8]], *, patient: str, modality: str, body_part: str) -> bytes:
    """A CT or MR object: stored values 0-255, rescaled to -1024..1016 HU, so windows differ."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    ds.PatientID = patient
    ds.PatientName = "ZZCANARY^PAGE"
    ds.BurnedInAnnotation = "NO"
    ds.Rows, ds.Columns = frames[0].shape
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 8
    ds.RescaleIntercept = -1024
    ds.PixelData = np.stack(frames).astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass
class Archive:
    folder: Path
    query: Path  # a 2x2 mosaic DICOM of the query's patient; its top-right quadrant is the checker
    crop_source: str  # key of the checker object
    multi_frame: str  # key of the 3-frame object
    own_patient: str  # key of the query patient's stored object (left out by default)


def _archive(root: Path) -> Archive:
    folder = root / "archive"
    folder.mkdir(parents=True)
    objects: dict[str, tuple[list[NDArray[np.uint8]], str, str, str]] = {
        "p1/checker.dcm": ([_frame("checker", 1)], "PAT-1", "CT", "CHEST"),
        "p1/circles.dcm": ([_frame("circles", 2)], "PAT-1", "CT", "CHEST"),
        "p2/cine.dcm": ([_frame("stripes", s) for s in (3, 4, 5)], "PAT-2", "CT", "CHEST"),
        "p2/gradient.dcm": ([_frame("gradient", 6)], "PAT-2", "CT", "CHEST"),
        "p3/head-noise.dcm": ([_frame("noise", 7)], "PAT-3", "MR", "HEAD"),
        "p3/head-circles.dcm": ([_frame("circles", 8)], "PAT-3", "MR", "HEAD"),
        "p4/stripes.dcm": ([_frame("stripes", 9)], "PAT-4", "CT", "CHEST"),
        "p4/noise.dcm": ([_frame("noise", 10)], "PAT-4", "CT", "CHEST"),
        "q/own.dcm": ([_frame("gradient", 11)], QUERY_PATIENT, "CT", "CHEST"),
    }
    for key, (frames, patient, modality, part) in objects.items():
        path = folder / key
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(_dicom(frames, patient=patient, modality=modality, body_part=part))
    mosaic = np.zeros((SIZE * 2, SIZE * 2), dtype=np.uint8)
    mosaic[:SIZE, :SIZE] = _frame("gradient", 20)
    mosaic[:SIZE, SIZE:] = _frame("checker", 1)
    mosaic[SIZE:, :SIZE] = _frame("noise", 21)
    mosaic[SIZE:, SIZE:] = _frame("circles", 22)
    query = root / "query.dcm"
    query.write_bytes(_dicom([mosaic], patient=QUERY_PATIENT, modality="CT", body_part="CHEST"))
    return Archive(folder, query, "p1/checker.dcm", "p2/cine.dcm", "q/own.dcm")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Archive]]:
    root = tmp_path_factory.mktemp("page")
    archive = _archive(root)
    settings = Settings(
        data_dir=root / "data",
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(
            hash_key=SecretStr("page-hash-key"),
            api_keys=[ApiKeyEntry(name="radiologist", role="reader", sha256=hash_api_key(KEY))],
        ),
    )
    index = open_index(settings)
    try:
        catalog = Catalog(index, settings)
        for name in ("chest", "chest-copy"):
            catalog.create(name, get_spec("baseline"))
        report = ingest_source(
            catalog, settings, str(archive.folder), ["chest", "chest-copy"], IngestOptions(), progress=False
        )
        assert report.frames_indexed == 2 * 11 and not report.failed, report.to_dict()
    finally:
        index.close()
    with Served(create_app(settings)) as server:
        yield server, archive


def _card_keys(page: object) -> list[str]:
    return page.locator("#columns .card").evaluate_all("cards => cards.map(c => c.dataset.key)")  # type: ignore[attr-defined]


def _searches(page: object) -> int:
    """How many searches the page has finished (its status line counts them)."""
    return int(page.locator("#status").get_attribute("data-searches") or 0)  # type: ignore[attr-defined]


def _wait_results(page: object, previous: int = 0) -> None:
    """Until the page finished a search after the ``previous``-th."""
    page.wait_for_function(  # type: ignore[attr-defined]
        "n => Number(document.getElementById('status').dataset.searches || 0) > n",
        arg=previous,
        timeout=TIMEOUT_MS,
    )


def test_a_radiologist_searches_refines_and_compares(served: tuple[Served, Archive], tmp_path: Path) -> None:
    from playwright.sync_api import Page, Route, sync_playwright

    server, archive = served
    outside: list[str] = []
    shots = tmp_path / "screenshots"
    shots.mkdir()

    def guard(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    def shot(page: Page, name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=False)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), headless=True, args=OFFLINE_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(TIMEOUT_MS)
            page.route("**/*", guard)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            # 1. Keys are on: the page asks for one and keeps it for the session.
            page.goto(server.url + "/", wait_until="load")
            page.wait_for_selector("#key-form:not([hidden])")
            assert "needs an API key" in page.locator("#status").inner_text()
            # a mistyped key is said to be refused, not to be missing
            page.fill("#api-key", KEY + "x")
            page.get_by_role("button", name="Use key").click()
            page.wait_for_function(
                "document.getElementById('status').textContent.includes('refused this API key')"
            )
            page.fill("#api-key", KEY)
            page.get_by_role("button", name="Use key").click()
            page.wait_for_function("document.getElementById('collection').options.length === 2")
            assert page.evaluate("sessionStorage.getItem('radsearch-api-key')") == KEY
            shot(page, "01-key")

            # 2. Upload the DICOM with the keyboard: its rendering appears in the query panel.
            page.select_option("#collection", "chest")
            page.wait_for_function("document.getElementById('f-modality').options.length > 1")
            with page.expect_file_chooser() as chooser:
                page.focus("#drop")
                page.keyboard.press("Enter")
            chooser.value.set_files(str(archive.query))
            page.wait_for_function(
                "() => { const i = document.getElementById('query-image');"
                " return i.complete && i.naturalWidth === 256; }"
            )
            _wait_results(page)
            shot(page, "02-preview-and-results")

            # 3. Grouped by object: the 3-frame cine is one card saying so; the query's own
            # patient is left out by default.
            keys = _card_keys(page)
            assert keys.count(archive.multi_frame) == 1, keys
            cine = page.locator(f'#columns .card[data-key="{archive.multi_frame}"]')
            assert "3 frames" in cine.inner_text()
            assert archive.own_patient not in keys
            assert page.locator("#exclude-patient").is_checked()
            before = _searches(page)
            page.uncheck("#exclude-patient")
            _wait_results(page, before)
            assert archive.own_patient in _card_keys(page)
            before = _searches(page)
            page.check("#exclude-patient")
            _wait_results(page, before)
            assert archive.own_patient not in _card_keys(page)
            shot(page, "03-grouped")

            # 4. A filter is added and shows in the bar; one click removes it.
            all_keys = sorted(_card_keys(page))
            before = _searches(page)
            page.select_option("#f-modality", "MR")
            _wait_results(page, before)
            chip = page.locator("#filter-chips .chip")
            assert chip.count() == 1 and "modality: MR" in chip.inner_text()
            assert sorted(_card_keys(page)) == ["p3/head-circles.dcm", "p3/head-noise.dcm"]
            shot(page, "04-filtered")
            before = _searches(page)
            page.get_by_role("button", name="remove filter modality MR").click()
            _wait_results(page, before)
            assert page.locator("#filter-chips .chip").count() == 0
            assert sorted(_card_keys(page)) == all_keys

            # 4b. A "Results" count out of range is corrected in the field and said, not replaced
            # silently.
            for typed, used, said in (("500", "200", "at most 200 results"), ("0", "12", "from 1 to 200")):
                before = _searches(page)
                page.fill("#limit", typed)
                page.click("#search")
                _wait_results(page, before)
                assert page.input_value("#limit") == used
                assert said in page.locator("#warnings").inner_text()
            before = _searches(page)
            page.click("#search")  # 12 is in range: no word
            _wait_results(page, before)
            assert page.locator("#warnings").inner_text() == ""

            # 5. Enlarge a hit beside the query; a window preset changes its pixels.
            first = page.locator("#columns .card").first
            first.locator("button.thumb").click()
            page.wait_for_selector("#viewer:not([hidden])")
            page.wait_for_function(
                "() => ['viewer-query', 'viewer-hit'].every(id => {"
                " const i = document.getElementById(id); return i.complete && i.naturalWidth > 0; })"
            )
            lung = page.locator("#viewer-hit").screenshot()
            old_src = page.locator("#viewer-hit").get_attribute("src")
            page.locator('#viewer .presets button[data-window="bone"]').click()
            page.wait_for_function(
                "src => { const i = document.getElementById('viewer-hit');"
                " return i.src !== src && i.complete && i.naturalWidth > 0; }",
                arg=old_src,
            )
            bone = page.locator("#viewer-hit").screenshot()
            assert bone != lung
            shot(page, "05-enlarged-comparison")
            page.keyboard.press("Escape")
            page.wait_for_selector("#viewer", state="hidden")

            # 6. 👎 on a hit: the search runs again with it as a negative example; it is gone.
            target = next(k for k in _card_keys(page) if k != archive.crop_source)
            before = _searches(page)
            page.get_by_role("button", name=f"less like {target}").click()
            _wait_results(page, before)
            assert target not in _card_keys(page)
            assert "1 👎" in page.locator("#feedback-bar").inner_text()
            shot(page, "06-disliked")
            before = _searches(page)
            page.get_by_role("button", name="clear feedback").click()
            _wait_results(page, before)

            # 7. Draw a region over the mosaic's top-right quadrant: its source ranks first.
            page.get_by_role("button", name="Draw region").click()
            page.locator("#query-image").scroll_into_view_if_needed()
            box = page.locator("#query-image").bounding_box()
            assert box is not None
            x0, y0 = box["x"] + box["width"] * 0.52, box["y"] + box["height"] * 0.02
            x1, y1 = box["x"] + box["width"] * 0.98, box["y"] + box["height"] * 0.48
            before = _searches(page)
            page.mouse.move(x0, y0)
            page.mouse.down()
            page.mouse.move(x1, y1, steps=5)
            page.mouse.up()
            _wait_results(page, before)
            assert "region" in page.locator("#roi-info").inner_text()
            assert _card_keys(page)[0] == archive.crop_source
            shot(page, "07-region")

            # 8. Full HD: nothing scrolls sideways; the filter bar and the first card are in view.
            for width, height in ((1280, 800), (1920, 1080)):
                page.set_viewport_size({"width": width, "height": height})
                assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
                assert page.locator("#filter-bar").is_visible()
                assert page.locator("#columns .card").first.is_visible()
            shot(page, "08-full-hd")

            # 9. Two collections side by side (the compare route).
            before = _searches(page)
            page.select_option("#compare-with", "chest-copy")
            _wait_results(page, before)
            assert page.locator("#columns .column").count() == 2
            shot(page, "09-compare")

            # 10. The server does not answer (stopped, or the network is down): the status says so
            # in words, not the browser's "Failed to fetch".
            page.route("**/v1/search/compare", lambda route: route.abort("connectionrefused"))
            before = _searches(page)
            page.click("#search")
            _wait_results(page, before)
            assert "no answer from the server at 127.0.0.1:" in page.locator("#status").inner_text()
            assert "is radsearch serve running?" in page.locator("#status").inner_text()
        finally:
            browser.close()

    assert not outside, f"requests to hosts other than 127.0.0.1: {outside}"
    assert not errors, errors
    assert len(list(shots.glob("*.png"))) == 9
