"""Request body limits: 413 before the body is read (declared length) or as soon as the streamed
count passes the limit (chunked), per route; one file per search; small server memory growth."""

from __future__ import annotations

import io
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from search_api import create_app
from search_api.app import _BODY_OVERHEAD_BYTES
from search_api.routes.search import MAX_UPLOADS
from search_api.security import hash_api_key
from tests.conftest import free_port, wait_for_port
from tests.security.conftest import KEYS, SecuredApp, key_headers, secured_settings

UPLOAD_LIMIT = 256 * 1024
JSON_LIMIT = 16 * 1024


def _png(size: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (size, size), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    return buffer.getvalue()


@pytest.fixture(scope="module")
def small_limits(secured: SecuredApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = secured_settings(
        tmp_path_factory.mktemp("limits"), max_upload_bytes=UPLOAD_LIMIT, max_json_bytes=JSON_LIMIT
    )
    with TestClient(create_app(settings, index=secured.index), headers=key_headers("reader")) as client:
        yield client


def _temp_entries() -> set[str]:
    return set(os.listdir(tempfile.gettempdir()))


def test_limits_in_process(
    small_limits: TestClient, secured: SecuredApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = small_limits
    url = "/v1/collections/demo/search/image"
    # Spooled uploads go to a folder of this test's own: other processes' temp files in the shared
    # temp dir would count as leftovers.
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    temp_before = _temp_entries()

    # an upload that fits
    assert client.post(url, files={"file": ("q.png", _png(), "image/png")}).status_code == 200
    # declared length one byte over the upload route's limit
    over = UPLOAD_LIMIT + _BODY_OVERHEAD_BYTES + 1
    response = client.post(
        url, content=b"\0" * over, headers={"content-type": "multipart/form-data; boundary=x"}
    )
    over_limit_status = response.status_code

    # chunked: no Content-Length, streamed
    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"\0" * 16384

    response = client.post(url, content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    chunked_status = response.status_code

    # the JSON route has the small limit, even far below the upload limit
    point = next(iter(secured.corpus.class_of))
    padded = json.dumps({"point_id": point, "filter": {"modality": ["CT"] * 4000}})
    assert len(padded) > JSON_LIMIT
    json_status = client.post(
        "/v1/collections/demo/search", content=padded, headers={"content-type": "application/json"}
    ).status_code

    # several files are several examples, up to MAX_UPLOADS: one more is refused
    two = client.post(
        url, files=[("file", (f"{i}.png", _png(), "image/png")) for i in range(MAX_UPLOADS + 1)]
    )
    many_files = [("file", (f"{i}.png", b"x", "image/png")) for i in range(1001)]
    too_many = client.post(url, files=many_files)
    wrong_content = client.post(
        url, files={"file": ("notes.dcm", b"hello, not an image" * 10, "application/dicom")}
    )
    temp_left = len(_temp_entries() - temp_before)

    print(
        f"upload_limits_inprocess: over_limit_status={over_limit_status} chunked_status={chunked_status} "
        f"json_over_limit_status={json_status} too_many_examples_status={two.status_code} "
        f"too_many_files_status={too_many.status_code} wrong_content_status={wrong_content.status_code} "
        f"temp_files_left={temp_left}"
    )
    assert over_limit_status == 413
    assert chunked_status == 413
    assert json_status == 413
    assert two.status_code == 400 and f"one to {MAX_UPLOADS} files" in two.json()["detail"]
    assert too_many.status_code in (400, 413)
    assert wrong_content.status_code == 415
    assert temp_left == 0


def test_big_text_field_with_default_limits(secured: SecuredApp) -> None:
    response = secured.client.post(
        "/v1/collections/demo/search/image",
        files={"file": ("q.png", _png(), "image/png")},
        data={"filter": "x" * (2 * 1024 * 1024)},
        headers=key_headers("reader"),
    )
    print(f"upload_limits_text_field: two_mib_text_field_status={response.status_code}")
    assert response.status_code in (400, 413)


# -- a real server: raw sockets, so nothing buffers the body on the client side ----------------------


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _status_line(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else -1


def _headers(port: int, extra: str) -> bytes:
    return (
        f"POST /v1/collections/demo/search/image HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"X-API-Key: {KEYS['reader']}\r\nContent-Type: multipart/form-data; boundary=xyz\r\n{extra}\r\n"
    ).encode()


def _declared_over_limit(port: int, declared: int) -> int:
    """Send only the headers of a request declaring ``declared`` bytes; the answer must not wait."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_headers(port, f"Content-Length: {declared}\r\n"))
        return _status_line(sock)


def _chunked_over_limit(port: int, total: int) -> tuple[int, int]:
    """Stream a chunked body of up to ``total`` bytes; (status, bytes sent before the answer)."""
    sent = 0
    chunk = b"\0" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_headers(port, "Transfer-Encoding: chunked\r\n"))
        # A well-formed multipart prefix, so the parser keeps reading file data until the limit.
        prefix = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
        sock.sendall(f"{len(prefix):x}\r\n".encode() + prefix + b"\r\n")
        while sent < total:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        return _status_line(sock), sent


def test_limits_over_http_and_memory(tmp_path: Path) -> None:
    limit = 8 * 1024 * 1024
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}
    env["RADSEARCH_SECURITY__API_KEYS"] = json.dumps(
        [{"name": "limits", "role": "reader", "sha256": hash_api_key(KEYS["reader"])}]
    )
    env["RADSEARCH_API__MAX_UPLOAD_BYTES"] = str(limit)
    env["RADSEARCH_SECURITY__HASH_KEY"] = "limits-hash-key"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "radsearch",
            "--data-dir",
            str(tmp_path / "data"),
            "serve",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, timeout_s=60)
        time.sleep(0.5)
        rss_before = _rss_mb(proc.pid)
        started = time.perf_counter()
        declared_status = _declared_over_limit(port, limit + _BODY_OVERHEAD_BYTES + 1)
        declared_s = time.perf_counter() - started
        statuses = []
        sent_max = 0
        for _ in range(5):
            status, sent = _chunked_over_limit(port, 256 * 1024 * 1024)
            statuses.append(status)
            sent_max = max(sent_max, sent)
        time.sleep(0.5)
        rss_after = _rss_mb(proc.pid)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=20)
    growth = rss_after - rss_before
    print(
        f"upload_limits_http: over_limit_status={declared_status} over_limit_answer_s={declared_s:.3f} "
        f"chunked_status={statuses[0]} chunked_attempts={len(statuses)} "
        f"chunked_sent_max_mb={sent_max / 2**20:.1f} (limit {limit / 2**20:.0f} MiB, offered 256 MiB each) "
        f"rss_before_mb={rss_before:.1f} rss_after_mb={rss_after:.1f} rss_growth_mb={growth:.1f}"
    )
    assert declared_status == 413 and declared_s < 5
    assert set(statuses) == {413}
    assert sent_max < 64 * 1024 * 1024  # the server stopped reading long before 256 MiB
    assert growth < 50
    assert b"Traceback" not in stderr
