"""Shared fixtures: settings on a temp data dir, a real S3 endpoint (moto's server over HTTP)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from minio import Minio

from core.config import RuntimeSettings, S3Settings, SecuritySettings, Settings

S3_ACCESS_KEY = "testing-access"
S3_SECRET_KEY = "testing-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


def wait_ready(url: str, *, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 60.0) -> None:
    """Wait until ``radsearch serve`` at ``url`` answers ``/readyz`` with 200 (503 while it opens its
    collections); fail the test after ``timeout_s``, or as soon as ``proc``, the server, exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"radsearch serve exited ({proc.returncode}) before it was ready")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"radsearch serve at {url} did not become ready within {timeout_s:.0f} s")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server in a subprocess, for the whole session: ``127.0.0.1:<port>``."""
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_for_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_settings(s3_endpoint: str) -> S3Settings:
    return S3Settings(endpoint=s3_endpoint, access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY)  # type: ignore[arg-type]


@pytest.fixture
def minio_client(s3_settings: S3Settings) -> Minio:
    assert s3_settings.secret_key is not None
    return Minio(
        s3_settings.endpoint,
        access_key=s3_settings.access_key,
        secret_key=s3_settings.secret_key.get_secret_value(),
        secure=False,
    )


@pytest.fixture
def bucket(minio_client: Minio) -> str:
    """A fresh, uniquely named bucket."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    minio_client.make_bucket(name)
    return name


@pytest.fixture
def settings(tmp_path: Path, s3_settings: S3Settings) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        runtime=RuntimeSettings(device="cpu", dtype="float32"),
        security=SecuritySettings(hash_key="test-hash-key"),  # type: ignore[arg-type]
        s3=s3_settings,
    )
