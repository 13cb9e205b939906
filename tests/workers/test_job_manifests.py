"""A manifest kept among the objects it labels, through Celery jobs (``radsearch reconcile`` and
``ingest --executor celery``), with the real parts: ``radsearch serve`` owning the store, a worker,
Redis and an S3 bucket. The manifest is not an image to index, and a relative manifest path is read
by workers started elsewhere."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from core.config import Settings
from radsearch.commands.main import main
from tests.workers.conftest import Server, Worker, png_bytes, stored_points, upload_images, use_settings_env

pytestmark = pytest.mark.slow


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "--json"])
    job: dict[str, Any] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    return code, job


def test_a_manifest_among_the_images_is_read_not_indexed(
    worker_settings: Settings,
    minio_client: Minio,
    bucket: str,
    start_server: Callable[..., Server],
    start_worker: Callable[..., Worker],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    use_settings_env(monkeypatch, worker_settings)
    server = start_server(worker_settings, wait=False)
    keys = [f"raw/{i:02d}.png" for i in range(4)]
    upload_images(minio_client, bucket, keys)
    labels = b"key,pathology\nraw/00.png,nodule\n"
    minio_client.put_object(bucket, "raw/labels.csv", io.BytesIO(labels), len(labels))
    archive = tmp_path / "archive"
    archive.mkdir()
    for i in range(3):
        (archive / f"img_{i}.png").write_bytes(png_bytes(100 + i))
    (archive / "manifest.csv").write_text("key,pathology\nimg_0.png,effusion\n")
    server.wait_ready()
    start_worker(worker_settings, "--pool", "threads", "--concurrency", "2")

    code, job = _run(
        capsys, "reconcile", f"s3://{bucket}/raw/", "--collection", "s3m", "--encoder", "baseline",
        "--manifest", f"s3://{bucket}/raw/labels.csv",
    )  # fmt: skip
    assert code == 0, job
    assert job["drift"]["s3m"]["missing"] == 4 and not job["failed_items"], job
    assert sorted(key for key, _, _ in stored_points(worker_settings, "s3m")) == keys
    # an s3:// manifest given to `ingest` stays a URI, for the workers and for the server's own job
    for executor in ("celery", "owner"):
        executor_args = ["--executor", "celery"] if executor == "celery" else []
        code, job = _run(
            capsys, "ingest", f"s3://{bucket}/raw/", "--collection", f"s3{executor}", "--encoder", "baseline",
            "--manifest", f"s3://{bucket}/raw/labels.csv", *executor_args,
        )  # fmt: skip
        assert code == 0 and not job.get("failed_items") and not job.get("failed"), job
        with server.client() as client:
            facets = client.get(f"/v1/collections/s3{executor}/facets/pathology").json()["counts"]
        assert facets == {"nodule": 1}, executor

    monkeypatch.chdir(tmp_path)  # a relative path, which the worker (started elsewhere) must find
    code, job = _run(
        capsys, "reconcile", "archive", "--collection", "local", "--encoder", "baseline",
        "--manifest", "archive/manifest.csv",
    )  # fmt: skip
    assert code == 0, job
    assert job["drift"]["local"]["missing"] == 3 and not job["failed_items"], job
    code, job = _run(
        capsys, "ingest", "archive", "--collection", "local", "--executor", "celery",
        "--manifest", "archive/manifest.csv", "--no-skip-unchanged",
    )  # fmt: skip
    assert code == 0 and not job["failed_items"], job
    assert (job["counts"]["listed"], job["counts"]["indexed_frames"]) == (3, 3), job
    with server.client() as client:
        page = client.post("/v1/collections/local/points/scroll", json={"limit": 10}).json()["points"]
        facets = client.get("/v1/collections/local/facets/pathology").json()["counts"]
    assert sorted(p["key"] for p in page) == ["img_0.png", "img_1.png", "img_2.png"]
    assert facets.get("effusion") == 1  # the manifest's label
    # a worker's run without the manifest keeps the label it gave, and counts it
    code, job = _run(capsys, "ingest", "archive", "--collection", "local", "--executor", "celery")
    assert [item["key"] for item in job["failed_items"]] == ["manifest.csv"], job
    assert (job["counts"]["skipped_unchanged"], job["counts"]["labels_kept"]) == (3, 1), job
    with server.client() as client:
        assert client.get("/v1/collections/local/facets/pathology").json()["counts"] == facets
    # and so does one that embeds everything again: the owner carries the labels over (a worker
    # never reads them)
    code, job = _run(
        capsys, "ingest", "archive", "--collection", "local", "--executor", "celery", "--no-skip-unchanged"
    )
    assert (job["counts"]["indexed_frames"], job["counts"]["labels_kept"]) == (3, 1), job
    with server.client() as client:
        assert client.get("/v1/collections/local/facets/pathology").json()["counts"] == facets
    # Rows that name no object (one with the folder's own name in front) are counted by the
    # workers' jobs too, as an inline run counts them (noticed in session 23: they were not).
    (tmp_path / "extra.csv").write_text(
        "key,pathology\nimg_0.png,effusion\nimg_9.png,nodule\narchive/img_1.png,nodule\n"
    )
    # and keys without the path template's layout (no folder here), which take no label from it
    for command in ("ingest", "reconcile"):
        executor_args = ["--executor", "celery"] if command == "ingest" else []
        code, job = _run(
            capsys, command, "archive", "--collection", "local", "--manifest", "extra.csv",
            "--path-template", "{anatomy}/{file}", *executor_args,
        )  # fmt: skip
        assert code == 0 and job["counts"]["manifest_unmatched"] == 2, job
        assert job["counts"]["template_unmatched"] == 4, job  # the three images and manifest.csv
    assert (
        main(
            ["ingest", "archive", "--collection", "local", "--executor", "celery", "--manifest", "extra.csv"]
        )
        == 0
    )
    assert "2 manifest rows name no object of the source" in capsys.readouterr().out
    # A folder that is not here is said before the job is queued (the workers may still see it
    # on a mount of their own; these do not, and the job fails naming it). A scheme's typo is
    # refused before anything is queued (noticed in session 23: both were queued without a word).
    assert main(["ingest", "archve", "--collection", "local", "--executor", "celery"]) == 1
    out, err = capsys.readouterr()
    assert f"the source folder {tmp_path / 'archve'} is not a folder here; the workers must find it" in err
    assert "does not exist" in out
    for command in ("ingest", "reconcile"):
        executor_args = ["--executor", "celery"] if command == "ingest" else []
        assert main([command, "s3:/bucket/raw", "--collection", "local", *executor_args]) == 2
        assert "did you mean s3://bucket/raw?" in capsys.readouterr().err
    # A manifest that cannot be read fails the job once, before any batch, naming the manifest.
    for command in ("ingest", "reconcile"):
        executor_args = ["--executor", "celery"] if command == "ingest" else []
        code, job = _run(
            capsys, command, f"s3://{bucket}/raw/", "--collection", "s3m", "--encoder", "baseline",
            "--manifest", f"s3://{bucket}/raw/gone.csv", *executor_args,
        )  # fmt: skip
        assert (code, job["state"]) == (1, "failed"), job
        assert "gone.csv" in job["error"] and not job.get("failed_items"), job
    assert sorted(key for key, _, _ in stored_points(worker_settings, "s3m")) == keys  # nothing lost
