"""A full disk under the embedded store: writes are refused with `StoreFull` (CLI exit 4, HTTP 507,
a failed job with the reason) before the engine can run out of space under its memory maps (a
SIGBUS, exit 135); what is stored stays intact, and the same write works once space is freed.

The disk is a small tmpfs mounted by the test (`tests/core/disk.py`): mounting
failures fail the test, they do not skip it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from core.config import RuntimeSettings, SecuritySettings, Settings, StoreSettings
from core.errors import StoreFull
from core.index.edge import _disk_errors, _write_atomic
from core.index.factory import open_index
from ingest.inline import IngestOptions
from radsearch.commands.main import EXIT_STORE_FULL
from radsearch.services import ensure_collection, ingest_source, open_catalog
from search_api import create_app
from tests.core.disk import fill_disk
from tests.search_api.test_api import COLLECTION, populate

REPO = Path(__file__).parents[2]
RESERVE_MB = 64
N_IMAGES, FIRST = 600, 50


def _archive(root: Path, first: int, end: int) -> Path:
    """PNGs ``img_<i>.png`` for i in [first, end) in ``root`` (the same i, the same image)."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(first, end):
        pixels = np.random.default_rng(i).integers(0, 255, (24, 24), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(root / f"img_{i:04d}.png")
    return root


def _settings(data: Path, **store: Any) -> Settings:
    return Settings(
        data_dir=data,
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(hash_key=SecretStr("test-hash-key")),
        store=StoreSettings(**store),
    )


def _stored(settings: Settings) -> dict[str, str]:
    """id → ETag of every point in ``chest``."""
    with open_catalog(settings, owner="test") as catalog:
        return {p.id: str(p.payload["etag"]) for p in catalog.index.scroll("chest")}


def test_an_ingest_that_fills_the_disk_stops_with_exit_4_and_resumes_once_space_is_freed(
    tmp_path: Path, small_disk: Callable[[int], Path]
) -> None:
    disk = small_disk(256)
    data = disk / "data"
    settings = _settings(data, min_free_mb=RESERVE_MB)
    # A first part of the archive is indexed, and the store opened once more: the engine fills in
    # its files' sparse pages as it loads them (tens of MB), which the next load then finds done.
    archive = _archive(tmp_path / "archive", 0, FIRST)
    with open_catalog(settings, owner="test") as catalog:
        ensure_collection(catalog, "chest", "baseline")
        ingest_source(catalog, settings, str(archive), ["chest"], IngestOptions(), progress=False)
    assert len(_stored(settings)) == FIRST
    _archive(archive, FIRST, N_IMAGES)
    filler = fill_disk(disk, leave_mb=RESERVE_MB + 0.6)  # a few batches above the reserve, not all
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}
    env |= {
        "RADSEARCH_STORE__MIN_FREE_MB": str(RESERVE_MB),
        "RADSEARCH_SECURITY__HASH_KEY": "test-hash-key",
        "RADSEARCH_RUNTIME__DEVICE": "cpu",
        "RADSEARCH_INGEST__BATCH_SIZE": "16",
    }
    command = [sys.executable, "-m", "radsearch", "--data-dir", str(data), "ingest", str(archive)]
    command += ["--collection", "chest", "--json"]

    refused = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert refused.returncode == EXIT_STORE_FULL, (refused.returncode, refused.stderr[-2000:])
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert lines[0].startswith("radsearch: error: only ") and "MB free under the store" in lines[0]
    assert f"the reserve is {RESERVE_MB} MB (RADSEARCH_STORE__MIN_FREE_MB)" in lines[0]
    assert "writes are refused until space is freed; nothing stored was changed" in lines[0]
    # No summary (the run did not complete): the --json output's last line is the typed error.
    error = json.loads(refused.stdout.strip().splitlines()[-1])["error"]
    assert (error["type"], error["exit_code"], error["message"]) == ("StoreFull", 4, lines[0][18:])
    before = _stored(settings)
    assert FIRST < len(before) < N_IMAGES

    filler.unlink()
    resumed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    # What was stored before is there, unchanged (skipped at its ETag); the rest is added.
    assert summary["objects"] == N_IMAGES and summary["skipped"] == len(before)
    assert summary["frames_indexed"] == N_IMAGES - len(before) and summary["failed"] == 0
    after = _stored(settings)
    assert len(after) == N_IMAGES and all(after[pid] == etag for pid, etag in before.items())


def test_write_routes_answer_507_and_jobs_fail_with_the_reason_until_space_is_freed(
    tmp_path: Path, small_disk: Callable[[int], Path]
) -> None:
    # in-RAM collections load their payload page files (32 MB each on tmpfs)
    disk = small_disk(256)
    settings = _settings(disk / "data", min_free_mb=16, auto_index=False)
    index = open_index(settings, owner="serve")
    try:
        corpus = populate(index, settings, tmp_path / "images")
        with TestClient(create_app(settings, index=index)) as client:
            created = client.post("/v1/collections", json={"name": "copy", "encoder": "baseline"})
            assert created.status_code == 201, created.text
            filler = fill_disk(disk, leave_mb=16.2)  # above the reserve, short of what any write asks

            full = client.post("/v1/collections", json={"name": "other", "encoder": "baseline"})
            assert full.status_code == 507, full.text
            detail = full.json()["detail"]
            assert "MB free under the store" in detail and "RADSEARCH_STORE__MIN_FREE_MB" in detail
            assert "writes are refused until space is freed" in detail
            job = _finished(client, client.post("/v1/collections/copy/backfill", json={"from": COLLECTION}))
            assert job["state"] == "failed" and "RADSEARCH_STORE__MIN_FREE_MB" in job["error"], job
            # Reading goes on: the stored collection answers searches.
            point = next(iter(corpus.class_of))
            hits = client.post(f"/v1/collections/{COLLECTION}/search", json={"point_id": point, "limit": 3})
            assert hits.status_code == 200 and len(hits.json()["hits"]) == 3
            assert client.get("/v1/collections/copy").json()["points"] == 0

            filler.unlink()
            again = client.post("/v1/collections", json={"name": "other", "encoder": "baseline"})
            assert again.status_code == 201, again.text
            job = _finished(client, client.post("/v1/collections/copy/backfill", json={"from": COLLECTION}))
            assert job["state"] == "done", job
            assert client.get("/v1/collections/copy").json()["points"] == len(corpus.class_of)
    finally:
        index.close()


def _finished(client: TestClient, started: Any) -> dict[str, Any]:
    assert started.status_code == 202, started.text
    job: dict[str, Any] = started.json()
    deadline = time.monotonic() + 60
    while job["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
        job = client.get(f"/v1/backfill-jobs/{job['id']}").json()
    return job


_ONE_BIG_BATCH = """
import sys, uuid
from pathlib import Path
import numpy as np
from core.config import StoreSettings
from core.errors import StoreFull
from core.index.base import CollectionConfig
from core.index.edge import EdgeIndex

index = EdgeIndex(Path(sys.argv[1]), StoreSettings(min_free_mb=1))
if sys.argv[2] == "create":
    index.create_collection(CollectionConfig(name="c", dim=512))
    index.close()
    sys.exit(0)
n = int(sys.argv[2])
vectors = np.random.default_rng(0).normal(size=(n, 512)).astype(np.float32)
try:
    index.upsert("c", [str(uuid.uuid4()) for _ in range(n)], vectors, [{}] * n)
except StoreFull as exc:
    print("refused:", exc)
print("points:", index.count("c"))
index.close()
"""


def test_a_batch_larger_than_the_space_left_is_refused_before_it_is_written(
    small_disk: Callable[[int], Path],
) -> None:
    """The reserve is met before the batch, not after it: the batch's own footprint is counted, so
    the engine never writes into a disk it would fill (in a child process: a SIGBUS would end it)."""
    disk = small_disk(160)
    root = disk / "index"

    def child(step: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", _ONE_BIG_BATCH, str(root), step],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )

    assert child("create").returncode == 0
    assert child("0").returncode == 0  # the first load fills in 40 MB of the engine's files
    # Enough to open the collection again (up to ~50 MB), not for the batch: 20,000 x 512-d
    # vectors with their WAL entries take ~100 MB.
    fill_disk(disk, leave_mb=60)
    done = child("20000")
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # 135 would be SIGBUS
    assert "refused: only" in done.stdout and "this write may take" in done.stdout
    assert "points: 0" in done.stdout


def test_out_of_space_errors_of_file_writes_and_the_engine_are_store_full(
    small_disk: Callable[[int], Path],
) -> None:
    disk = small_disk(4)
    target = disk / "aliases.json"
    _write_atomic(target, '{"a": "b"}')
    fill_disk(disk, leave_mb=0)
    with pytest.raises(StoreFull, match="is full"):
        _write_atomic(target, json.dumps({f"alias{i}": "c" * 100 for i in range(1000)}))
    assert json.loads(target.read_text()) == {"a": "b"}  # the old file, whole
    assert sorted(p.name for p in disk.iterdir()) == ["aliases.json", "filler"]  # no temp left
    # The engine reports I/O errors as Rust's io::Error text.
    with pytest.raises(StoreFull), _disk_errors(disk):
        raise RuntimeError("Service internal error: No space left on device (os error 28)")
    with pytest.raises(RuntimeError, match="other"), _disk_errors(disk):
        raise RuntimeError("some other engine error")
