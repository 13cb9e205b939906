"""The hostile-file corpus through the real decode path, the ingest pipeline and the upload route:
every file is rejected with a typed `BadInput` (4xx at the API), quickly and in little memory."""

from __future__ import annotations

import resource
import time
import tracemalloc
from pathlib import Path

import pytest

from core.catalog import Catalog
from core.errors import BadInput, DecodeTimeout
from ingest.inline import IngestOptions
from ingest.readers import DecodeLimits, decode_object
from radsearch.services import ingest_source
from tests.security.conftest import SecuredApp, key_headers
from tests.security.hostile import hostile_corpus, pillow_bomb, valid_dicom, valid_png

HASH_KEY = b"hostile-test-key"


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_hostile_corpus_through_the_decoders() -> None:
    corpus = hostile_corpus()
    # Pillow's own bomb guard, reached with our tighter pixel cap lifted.
    cases = [(name, data, DecodeLimits()) for name, data in corpus.items()]
    cases.append(("pillow_bomb_20000x10000.png", pillow_bomb(), DecodeLimits(max_pixels_per_frame=10**10)))
    rejected, unexpected, accepted = 0, [], []
    worst_s, worst_name, peak_mb = 0.0, "", 0.0
    rss_before = _max_rss_mb()
    for name, data, limits in cases:
        tracemalloc.start()
        started = time.perf_counter()
        try:
            decode_object(data, name, limits=limits, hash_key=HASH_KEY)
            accepted.append(name)
        except BadInput as exc:
            rejected += 1
            assert exc.key == name
            assert "ZZHOSTILE" not in str(exc)
        except Exception as exc:  # the figure this test exists for
            unexpected.append(f"{name}: {type(exc).__name__}")
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peak_mb = max(peak_mb, peak / 2**20)
        if elapsed > worst_s:
            worst_s, worst_name = elapsed, name
    rss_growth = _max_rss_mb() - rss_before
    print(
        f"hostile_corpus_decode: files={len(cases)} rejected_typed={rejected} "
        f"unexpected_exceptions={len(unexpected)} accepted={len(accepted)} "
        f"peak_traced_mb={peak_mb:.1f} max_rss_growth_mb={rss_growth:.1f} "
        f"max_s={worst_s:.3f} ({worst_name})"
    )
    assert not unexpected, unexpected
    assert not accepted, accepted
    assert rejected == len(cases)
    assert peak_mb < 256 and worst_s < 10


def test_hostile_corpus_through_the_ingest_pipeline(secured: SecuredApp, tmp_path: Path) -> None:
    corpus = hostile_corpus()
    folder = tmp_path / "hostile"
    folder.mkdir()
    for name, data in corpus.items():
        (folder / name).write_bytes(data)
    (folder / "good_ct.dcm").write_bytes(valid_dicom(32, 32))
    (folder / "good.png").write_bytes(valid_png(32))
    catalog = Catalog(secured.index, secured.settings)
    catalog.create("hostile", catalog.encoder_for("demo").spec)
    started = time.perf_counter()
    report = ingest_source(
        catalog, secured.settings, str(folder), ["hostile"], IngestOptions(), progress=False
    )
    elapsed = time.perf_counter() - started
    failed = {item.key for item in report.failed}
    print(
        f"hostile_corpus_pipeline: files={len(corpus)} rejected_typed={len(failed & set(corpus))} "
        f"unexpected_exceptions=0 indexed_frames={report.frames_indexed} "
        f"quarantined={len(report.quarantined)} seconds={elapsed:.2f}"
    )
    assert failed == set(corpus)
    assert report.frames_indexed == 2
    assert secured.index.count("hostile") == 2
    assert all("ZZHOSTILE" not in item.reason for item in report.failed)


def test_hostile_corpus_through_the_upload_route(secured: SecuredApp) -> None:
    statuses: dict[int, int] = {}
    server_errors = []
    for name, data in hostile_corpus().items():
        response = secured.client.post(
            "/v1/collections/demo/search/image",
            files={"file": (name, data, "application/octet-stream")},
            headers=key_headers("reader"),
        )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code >= 500 or response.status_code < 400:
            server_errors.append(f"{name}: {response.status_code}")
        assert "ZZHOSTILE" not in response.text
    print(
        f"hostile_corpus_api: files={sum(statuses.values())} statuses={dict(sorted(statuses.items()))} "
        f"non_4xx={len(server_errors)}"
    )
    assert not server_errors, server_errors


def test_decode_time_limit_is_a_typed_failure(
    monkeypatch: pytest.MonkeyPatch, secured: SecuredApp, tmp_path: Path
) -> None:
    import ingest.readers.dispatch as dispatch

    real = dispatch.decode_raster  # type: ignore[attr-defined]

    def slow(data: bytes, key: str, *, limits: DecodeLimits):  # type: ignore[no-untyped-def]
        time.sleep(2.0)  # a decoder stuck in C code: the caller must not wait for it
        return real(data, key, limits=limits)

    monkeypatch.setattr(dispatch, "decode_raster", slow)
    abandoned = dispatch.abandoned_decodes()
    started = time.perf_counter()
    with pytest.raises(DecodeTimeout):
        decode_object(valid_png(16), "slow.png", limits=DecodeLimits(timeout_s=0.2), hash_key=HASH_KEY)
    waited = time.perf_counter() - started
    assert waited < 1.0
    assert dispatch.abandoned_decodes() == abandoned + 1

    # in the pipeline: recorded as a failed item, the batch goes on
    folder = tmp_path / "slow"
    folder.mkdir()
    (folder / "slow.png").write_bytes(valid_png(16))
    (folder / "fine.dcm").write_bytes(valid_dicom(16, 16))
    settings = secured.settings.model_copy(
        update={"ingest": secured.settings.ingest.model_copy(update={"decode_timeout_s": 0.2})}
    )
    catalog = Catalog(secured.index, settings)
    catalog.create("slow", catalog.encoder_for("demo").spec)
    report = ingest_source(catalog, settings, str(folder), ["slow"], IngestOptions(), progress=False)
    reasons = {item.key: item.reason for item in report.failed}
    figures = f"waited_s={waited:.2f} pipeline_failed={reasons} indexed_frames={report.frames_indexed}"
    print(f"decode_timeout: {figures}")
    assert "longer than 0.2 s" in reasons["slow.png"]
    assert report.frames_indexed == 1
