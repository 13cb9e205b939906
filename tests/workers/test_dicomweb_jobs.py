"""A PACS source through Celery: real workers list a real Orthanc by QIDO-RS, fetch by WADO-RS
from the keys in their task arguments alone, and send the points to the store's owner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from core.config import DicomwebSettings, Settings
from core.jobs import JobKind, JobSpec
from core.jobs.redis_store import RedisJobStore
from radsearch.demo_data import generate_demo_archive
from tests.orthanc_server import Orthanc, orthanc  # noqa: F401 - the fixture
from tests.workers.conftest import Server, Worker, served_points, wait_job
from workers.app import create_celery
from workers.client import submit_job

pytestmark = pytest.mark.timeout(300)


def test_celery_workers_ingest_from_the_pacs(
    orthanc: Orthanc,  # noqa: F811
    worker_settings: Settings,
    job_store: RedisJobStore,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
    tmp_path: Path,
) -> None:
    archive = generate_demo_archive(tmp_path / "demo", per_class=1, seed=9)
    files = sorted(p for m in ("CT", "MR") for p in (archive.root / "dicom" / m).rglob("*.dcm"))
    for path in files:
        orthanc.upload(path.read_bytes())
    settings = worker_settings.model_copy(update={"dicomweb": DicomwebSettings(url=orthanc.dicomweb)})
    server = start_server(settings)
    assert (
        server.client().post("/v1/collections", json={"name": "pacs", "encoder": "baseline"}).status_code
        == 201
    )
    start_worker(settings)
    app = create_celery(settings)
    spec = JobSpec(source=f"{orthanc.dicomweb}?modality=MR", collections=("pacs",))
    record = wait_job(job_store, submit_job(job_store, app, JobKind.INGEST, spec), timeout_s=180)
    assert record.state.value == "done", record.error
    keys = {key for key, _frame, _id in served_points(server.url, "pacs")}
    n_mr = sum(1 for p in files if "/MR/" in p.as_posix())
    assert len(keys) == n_mr and all(key.startswith("dw1-") for key in keys)
