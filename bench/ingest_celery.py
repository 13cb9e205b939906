"""Ingest throughput with the Celery executor: real `radsearch worker` processes, a private Redis,
moto's S3 server, uncompressed CT DICOMs.

``python bench/ingest_celery.py --n 400 --worker-processes 2 --worker-threads 1`` (or
``python bench/ingest.py --executor celery ...``) prints one JSON line.

The embedded store is owned by a `radsearch serve` process, as in production: the workers fetch,
decode and embed, and send each batch to it (``PUT /v1/collections/{name}/points``), so every
worker process fills the one collection. The timed job ends once the owner has indexed it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from common import REPO_ROOT, emit, moto_server, write_ct_dicoms

from core.config import CelerySettings, IngestSettings, RuntimeSettings, S3Settings, Settings
from core.jobs import JobKind, JobSpec
from core.jobs.redis_store import RedisJobStore, open_job_store
from workers.app import create_celery
from workers.client import submit_job


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}
    dumped = settings.model_dump(mode="python")
    for name, value in dumped.items():
        if value is None:
            continue
        if name == "s3":
            assert settings.s3.secret_key is not None
            value = {**value, "secret_key": settings.s3.secret_key.get_secret_value()}
        if name == "security":
            value = {"hash_key": "bench"}
        env[f"RADSEARCH_{name.upper()}"] = (
            json.dumps(value, default=str) if isinstance(value, dict) else str(value)
        )
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def _wait(store: RedisJobStore, job_id: str, timeout_s: float = 1800) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = store.get(job_id, with_items=False)
        if record is not None and record.finished:
            return record
        time.sleep(0.1)
    raise TimeoutError(job_id)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"radsearch serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"radsearch serve not ready at {url}")


def run(args: argparse.Namespace) -> dict[str, object]:
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is required")
    with tempfile.TemporaryDirectory(prefix="radsearch-bench-celery-") as tmp, moto_server() as s3_info:
        root = Path(tmp)
        port = _free_port()
        redis_proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        workers: list[subprocess.Popen[bytes]] = []
        owner: subprocess.Popen[bytes] | None = None
        try:
            from minio import Minio

            endpoint, access, secret = s3_info
            client = Minio(endpoint, access_key=access, secret_key=secret, secure=False)
            client.make_bucket("bench")
            files = write_ct_dicoms(root / "images", args.n + args.warmup, size=args.size)
            for i, path in enumerate(files):
                data = path.read_bytes()
                prefix = "warm" if i < args.warmup else "ct"
                client.put_object("bench", f"{prefix}/{path.name}", io.BytesIO(data), len(data))
            base = Settings(
                data_dir=root / "data",
                runtime=RuntimeSettings(device=args.device, dtype=args.dtype),
                s3=S3Settings(endpoint=endpoint, access_key=access, secret_key=secret),
                redis={"url": f"redis://127.0.0.1:{port}/0"},
                celery=CelerySettings(task_batch_size=args.batch_size, visibility_timeout_s=600),
                ingest=IngestSettings(batch_size=args.batch_size, decode_workers=args.workers),
                security={"hash_key": "bench"},
            )
            # The store's owner; the workers send it their batches.
            owner_url = f"http://127.0.0.1:{_free_port()}"
            owner = subprocess.Popen(
                [sys.executable, "-m", "radsearch", "serve", "--host", "127.0.0.1"]
                + ["--port", owner_url.rsplit(":", 1)[1]],
                env=_env(base),
                cwd=REPO_ROOT,
                stdout=(root / "serve.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
            _wait_ready(owner_url, owner)
            created = httpx.post(
                f"{owner_url}/v1/collections", json={"name": "bench", "encoder": args.encoder}, timeout=600
            )
            created.raise_for_status()
            for p in range(args.worker_processes):
                queues = "plan,embed" if p == 0 else "embed"
                log = (root / f"worker-{p}.log").open("wb")
                workers.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "radsearch", "worker", "--queues", queues]
                        + ["--pool", "threads", "--concurrency", str(args.worker_threads)],
                        env=_env(base),
                        cwd=REPO_ROOT,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            store = open_job_store(base.redis.url, base.celery)
            app = create_celery(base)
            # Warm-up: the model load in every process is not billed.
            warm = submit_job(
                store,
                app,
                JobKind.INGEST,
                JobSpec(source="s3://bench/warm/", collections=("bench",), encoder=args.encoder),
            )
            _wait(store, warm)
            spec = JobSpec(
                source="s3://bench/ct/", collections=("bench",), skip_unchanged=False, encoder=args.encoder
            )
            started = time.perf_counter()
            job_id = submit_job(store, app, JobKind.INGEST, spec)
            record = _wait(store, job_id)
            wall = time.perf_counter() - started
            return {
                "bench": "ingest",
                "executor": "celery",
                "encoder": args.encoder,
                "source": "s3",
                "images": record.counts["indexed_frames"],
                "failed": record.counts["failed"],
                "image_size": args.size,
                "batch_size": args.batch_size,
                "worker_processes": args.worker_processes,
                "worker_threads": args.worker_threads,
                "store": "edge, written by its owner (radsearch serve)",
                "images_per_s": round(record.counts["indexed_frames"] / wall, 2),
                "seconds": round(wall, 2),
                "cpus": os.cpu_count(),
            }
        finally:
            for proc in workers:
                proc.terminate()
            for proc in workers:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if owner is not None:
                owner.terminate()
                owner.wait(timeout=60)
            redis_proc.terminate()
            redis_proc.wait(timeout=10)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The celery-specific options (shared with ``bench/ingest.py --executor celery``)."""
    parser.add_argument("--worker-processes", type=int, default=1)
    parser.add_argument("--worker-threads", type=int, default=1, help="threads pool size per process")
    parser.add_argument("--warmup", type=int, default=64, help="warm-up images (not timed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--encoder", default="baseline")
    parser.add_argument("--size", type=int, default=512, help="DICOM rows/columns")
    parser.add_argument("--batch-size", type=int, default=32, help="objects per task and per encoder batch")
    parser.add_argument("--workers", type=int, default=2, help="decode threads per process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    add_arguments(parser)
    args = parser.parse_args()
    emit(run(args))


if __name__ == "__main__":
    main()
