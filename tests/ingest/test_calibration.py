"""The "no close match" threshold follows each load: an ingest ends by calibrating its collections,
and ``radsearch collections calibrate`` recomputes it; DICOM payloads carry the keyed hashes that
grouping and exclusion use."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.calibration import CALIBRATION_KEY, QUANTILE, threshold_of
from core.catalog import Catalog
from core.config import RuntimeSettings, SecuritySettings, Settings
from core.encoders.registry import get_spec
from core.index import open_index
from ingest.inline import IngestOptions, build_context, ingest_inline
from ingest.sources import open_source
from radsearch.commands.main import main
from radsearch.demo_data import generate_demo_archive


def test_an_ingest_ends_calibrated_and_the_cli_recalibrates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(hash_key="test-hash-key"),  # type: ignore[arg-type]
    )
    archive = generate_demo_archive(tmp_path / "archive", per_class=2, seed=3)
    index = open_index(settings)
    try:
        catalog = Catalog(index, settings)
        catalog.create("c", get_spec("baseline"))
        assert threshold_of(index.collection_config("c").metadata) is None
        source = open_source(str(archive.root), settings)
        ctx = build_context(source, catalog, ["c"], IngestOptions(manifest=archive.manifest), settings)
        report = ingest_inline(ctx, settings, progress=False, exclude_keys=frozenset({"manifest.csv"}))
        assert report.frames_indexed > 0
        record = index.collection_config("c").metadata[CALIBRATION_KEY]
        assert record["quantile"] == QUANTILE and record["points"] == index.count("c")
        assert 0 < record["threshold"] <= 1
        dicoms = [p.payload for p in index.scroll("c") if p.payload["key"].endswith(".dcm")]
        assert dicoms
        for payload in dicoms:
            for name in ("patient_hash", "study_hash", "series_hash"):
                assert len(payload[name]) == 32, name
    finally:
        index.close()

    assert main(["--data-dir", str(settings.data_dir), "collections", "calibrate", "c"]) == 0
    assert f"c: weak below {record['threshold']:.4f}" in capsys.readouterr().out
