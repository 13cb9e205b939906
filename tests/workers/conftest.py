"""Real parts for the worker tests: a private redis-server per test, `radsearch worker` subprocesses,
moto's S3 server (from tests/conftest.py), and `radsearch serve` as the embedded store's owner (the
workers send it what they embed); the store is read through its API, or opened once no one owns it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from minio import Minio
from PIL import Image
from pydantic import BaseModel, SecretStr

from core.config import CelerySettings, EventSettings, IngestSettings, RedisSettings, Settings
from core.jobs import JobRecord
from core.jobs.redis_store import RedisJobStore, open_job_store
from tests.conftest import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
WEBHOOK_TOKEN = "test-webhook-token"


class RedisServer:
    """A private redis-server without persistence, restartable on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if not _has_redis_server():
        # On a developer's machine the worker tests may be skipped; in CI a missing redis-server
        # must not turn the whole worker suite green by skipping it.
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed, and CI is set: the worker tests cannot be skipped")
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.kill()


def _has_redis_server() -> bool:
    from shutil import which

    return which("redis-server") is not None


@pytest.fixture
def worker_settings(settings: Settings, redis_server: RedisServer) -> Settings:
    """Short visibility timeout and backoff, small batches; the webhook token set."""
    return settings.model_copy(
        update={
            "redis": RedisSettings(url=redis_server.url),
            "celery": CelerySettings(
                visibility_timeout_s=10,
                restore_interval_s=1,
                task_batch_size=10,
                max_retries=2,
                retry_backoff_s=0.2,
                retry_backoff_max_s=1.0,
                publish_timeout_s=3.0,
            ),
            "ingest": IngestSettings(batch_size=16, decode_workers=2),
            "events": EventSettings(webhook_token=SecretStr(WEBHOOK_TOKEN)),
        }
    )


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return {name: _plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a subprocess build exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}
    for name in type(settings).model_fields:
        value = _plain(getattr(settings, name))
        if value is None:
            continue
        env[f"RADSEARCH_{name.upper()}"] = json.dumps(value) if isinstance(value, dict | list) else str(value)
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def use_settings_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """Make ``radsearch`` run in this process (``main(argv)``) build exactly these settings."""
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)


def cli(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the ``radsearch`` command line in a subprocess with these settings."""
    return subprocess.run(
        [sys.executable, "-m", "radsearch", *args],
        env=settings_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out += [int(p) for p in text]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def store_process_ids(server_pid: int) -> list[int]:
    """The store process of the `radsearch serve` ``server_pid`` (and one being started): its
    children named ``radsearch-index``."""
    pids = []
    for pid in child_pids(server_pid):
        with contextlib.suppress(OSError):  # ended meanwhile
            if Path(f"/proc/{pid}/comm").read_text().strip() == "radsearch-index":
                pids.append(pid)
    return pids


class Worker:
    """``radsearch -v worker ...`` as a subprocess; log in ``log_path``."""

    def __init__(self, settings: Settings, log_path: Path, *args: str) -> None:
        self.settings = settings
        self.log_path = log_path
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, *, wait: bool = True) -> Worker:
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n===== start {self.starts} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "radsearch", "-v", "worker", *self.args],
            env=settings_env(self.settings),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        marker = f"===== start {self.starts} ====="
        while time.monotonic() < deadline:
            text = self.log_path.read_text(errors="replace")
            if " ready." in text[text.rfind(marker) :]:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{text[-4000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout_s} s:\n{self.log_path.read_text()[-4000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def children(self) -> list[int]:
        return child_pids(self.pid)

    def kill_child(self) -> bool:
        """SIGKILL the pool child process(es); the parent starts a new one."""
        kids = self.children()
        for kid in kids:
            os.kill(kid, signal.SIGKILL)
        return bool(kids)

    def kill_all(self) -> None:
        """SIGKILL the worker and its children (a crashed host)."""
        assert self.proc is not None
        pids = [self.pid, *self.children()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        _wait_gone(pids)

    def stop(self, timeout_s: float = 30) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it takes too long."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pids = [self.pid, *self.children()]
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill_all()
        _wait_gone(pids)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _wait_gone(pids: list[int], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            # a zombie child of ours: reaped by its parent or by init
            stat = Path(f"/proc/{pid}/stat")
            if stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z":
                break
            time.sleep(0.05)


class Server:
    """``radsearch serve`` as a subprocess: the owner of the settings' embedded store, advertising
    its URL in the owner record (the workers find it there); log in ``log_path``."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, *, wait: bool = True) -> Server:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "radsearch",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                env=settings_env(self.settings),
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 90) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"radsearch serve exited with {self.proc.returncode}:\n{self.log()[-4000:]}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"radsearch serve not ready after {timeout_s} s:\n{self.log()[-4000:]}")

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM (uvicorn shuts down, the store is closed and the owner lock given up)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def create_collection(self, name: str, encoder: str | dict[str, Any] = "baseline") -> None:
        """Create a collection on the owner (workers cannot: a job submitted straight to the
        queue finds it there)."""
        with self.client() as client:
            response = client.post("/v1/collections", json={"name": name, "encoder": encoder})
        assert response.status_code == 201, response.text

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start ``radsearch serve`` owners (``wait=False``: `Server.wait_ready` later); every one is
    stopped at the end of the test."""
    started: list[Server] = []

    def start(settings: Settings, *, wait: bool = True) -> Server:
        server = Server(settings, tmp_path / f"serve-{len(started)}.log")
        started.append(server)
        return server.start(wait=wait)

    yield start
    for server in started:
        try:
            server.stop()
        except Exception:  # noqa: BLE001 - clean-up must reach every server
            pass


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start workers; every one is stopped at the end of the test."""
    started: list[Worker] = []

    def start(settings: Settings, *args: str, name: str = "worker", wait: bool = True) -> Worker:
        worker = Worker(settings, tmp_path / f"{name}.log", *args)
        started.append(worker)
        return worker.start(wait=wait)

    yield start
    for worker in started:
        try:
            worker.stop(timeout_s=10)
        except Exception:  # noqa: BLE001 - clean-up must reach every worker
            pass


@pytest.fixture
def job_store(worker_settings: Settings) -> Iterator[RedisJobStore]:
    store = open_job_store(worker_settings.redis.url, worker_settings.celery)
    yield store
    store.client.close()


def png_bytes(i: int, size: int = 64) -> bytes:
    """A small deterministic grey PNG, different for each ``i``."""
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:size, 0:size]
    base = (np.sin(xx / (3 + i % 7)) + np.cos(yy / (2 + i % 5))) * 60 + 128
    pixels = np.clip(base + rng.normal(0, 10, (size, size)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def upload_images(client: Minio, bucket: str, keys: list[str], *, offset: int = 0) -> None:
    def put(item: tuple[int, str]) -> None:
        i, key = item
        data = png_bytes(i + offset)
        client.put_object(bucket, key, io.BytesIO(data), len(data), content_type="image/png")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, enumerate(keys)))


def wait_job(store: RedisJobStore, job_id: str, timeout_s: float = 120) -> JobRecord:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = store.get(job_id)
        if record is not None and record.finished:
            return record
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} not finished after {timeout_s} s: {store.get(job_id)}")


def served_points(url: str, collection: str) -> list[tuple[str, int, str]]:
    """(key, frame, id) of every point, listed by the server that owns the store."""
    out: list[tuple[str, int, str]] = []
    offset = None
    with httpx.Client(base_url=url, timeout=60) as client:
        while True:
            response = client.post(
                f"/v1/collections/{collection}/points/scroll", json={"limit": 1000, "offset": offset}
            )
            response.raise_for_status()
            page = response.json()
            out += [(str(p["key"]), int(p.get("frame") or 0), str(p["id"])) for p in page["points"]]
            offset = page["next_offset"]
            if offset is None:
                return out


def stored_points(settings: Settings, collection: str) -> list[tuple[str, int, str]]:
    """(key, frame, id) of every point: through the store's owner while one serves, else read from
    the edge store itself."""
    from core.index.edge import EdgeIndex
    from core.ownership import current_owner

    owner = current_owner(settings.index_dir)
    if owner is not None and owner.url:
        return served_points(owner.url, collection)
    index = EdgeIndex(settings.index_dir, settings.store)
    try:
        return [
            (str(p.payload["key"]), int(p.payload.get("frame", 0)), p.id) for p in index.scroll(collection)
        ]
    finally:
        index.close()


def stored_etags(settings: Settings, collection: str) -> dict[str, set[str]]:
    """key → the ETags its points were embedded from (one, unless a stale point survived)."""
    from core.index.edge import EdgeIndex
    from core.ownership import current_owner

    out: dict[str, set[str]] = {}
    owner = current_owner(settings.index_dir)
    if owner is not None and owner.url:
        offset = None
        with httpx.Client(base_url=owner.url, timeout=60) as client:
            while True:
                response = client.post(
                    f"/v1/collections/{collection}/points/scroll", json={"limit": 1000, "offset": offset}
                )
                response.raise_for_status()
                page = response.json()
                for p in page["points"]:
                    out.setdefault(str(p["key"]), set()).add(str(p.get("etag")))
                offset = page["next_offset"]
                if offset is None:
                    return out
    index = EdgeIndex(settings.index_dir, settings.store)
    try:
        for point in index.scroll(collection):
            out.setdefault(str(point.payload["key"]), set()).add(str(point.payload.get("etag")))
        return out
    finally:
        index.close()


def coverage(expected: list[str], points: list[tuple[str, int, str]]) -> dict[str, int]:
    """stored / missing / duplicates / unexpected for a set of single-frame objects."""
    per_key: dict[str, int] = {}
    for key, _frame, _id in points:
        per_key[key] = per_key.get(key, 0) + 1
    expected_set = set(expected)
    return {
        "expected": len(expected),
        "stored": len(points),
        "missing": sum(1 for k in expected if k not in per_key),
        "duplicates": sum(n - 1 for n in per_key.values() if n > 1),
        "unexpected": sum(1 for k in per_key if k not in expected_set),
    }


def wait_api_job(api: httpx.Client, job_id: str, timeout_s: float = 90) -> dict[str, object]:
    """The job as `GET /v1/ingest-jobs/{id}` answers once it is done or failed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, object] = api.get(f"/v1/ingest-jobs/{job_id}").json()
        if body["state"] in ("done", "failed"):
            return body
        time.sleep(0.2)
    raise TimeoutError(job_id)
