"""`radsearch serve` as users run it: a real uvicorn process over HTTP on an indexed demo archive."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from radsearch.commands.main import main
from tests.conftest import free_port, wait_ready
from tests.workers.conftest import store_process_ids


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from radsearch.demo_data import generate_demo_archive

    root = tmp_path_factory.mktemp("serve")
    archive = generate_demo_archive(root / "archive", per_class=3)
    data = str(root / "data")
    args = [
        "--data-dir",
        data,
        "ingest",
        str(archive.root),
        "--collection",
        "demo",
        "--manifest",
        str(archive.manifest),
    ]
    assert main([*args, "--json"]) == 0
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "radsearch",
            "--data-dir",
            data,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_filtered_search_over_http_returns_only_that_modality(served: str) -> None:
    collections = httpx.get(f"{served}/v1/collections").json()["collections"]
    assert collections[0]["name"] == "demo" and collections[0]["points"] > 0
    facets = httpx.get(f"{served}/v1/collections/demo/facets/modality").json()
    assert {"CT", "MR", "US"} <= set(facets["counts"])
    for modality in ("MR", "US"):
        query = httpx.post(
            f"{served}/v1/collections/demo/search", json={"vector": [1.0] * 512, "limit": 1}
        ).json()["hits"][0]["id"]
        response = httpx.post(
            f"{served}/v1/collections/demo/search",
            json={"point_id": query, "filter": {"modality": [modality]}, "limit": 20},
        )
        assert response.status_code == 200
        hits = response.json()["hits"]
        assert hits and {h["payload"]["modality"] for h in hits} == {modality}


def test_image_upload_over_http(served: str, tmp_path: Path) -> None:
    from radsearch.demo_data import generate_demo_archive

    archive = generate_demo_archive(tmp_path / "q", per_class=1, seed=5)
    query = next(archive.root.glob("dicom/MR/brain/*/*.dcm"))
    with query.open("rb") as fh:
        response = httpx.post(
            f"{served}/v1/collections/demo/search/image",
            files={"file": (query.name, fh, "application/dicom")},
            data={"limit": "5", "filter": '{"anatomy": ["brain", "knee"]}'},
            timeout=60,  # the first upload loads the encoder: over httpx's 5 s on a loaded 2-core host
        )
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert hits[0]["payload"]["anatomy"] == "brain"
    assert all(h["payload"]["modality"] == "MR" for h in hits)
    assert httpx.get(f"{served}/").status_code == 200


def _request_lines(env: dict[str, str], data: Path, request_id: str = "probe-1") -> str:
    """What ``radsearch serve`` printed while it answered one ``GET /healthz`` (with the client's
    ``request_id``)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "radsearch", "--data-dir", str(data), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}")
        response = httpx.get(
            f"http://127.0.0.1:{port}/healthz", headers={"X-Request-ID": request_id}, timeout=5
        )
        assert response.status_code == 200
        assert response.headers["X-Request-ID"] == request_id
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    return output.decode(errors="replace")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_access_log_is_on_by_default_and_can_be_turned_off(log_format: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}
    env["RADSEARCH_LOG_FORMAT"] = log_format
    (access,) = [line for line in _request_lines(env, tmp_path / "on").splitlines() if "GET /healthz" in line]
    # the server's own format, time and request id included (for text as for JSON)
    assert "probe-1" in access
    assert ("uvicorn.access" in access) and (access.startswith("{") == (log_format == "json"))
    logged = _request_lines({**env, "RADSEARCH_API__ACCESS_LOG": "false"}, tmp_path / "off")
    assert "GET /healthz" not in logged
    assert "Application startup complete" in logged  # the rest of the log is still there


def _serve_argv(data: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "radsearch", "--data-dir", str(data), "serve", "--port", str(port)]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}


def test_a_taken_port_is_refused_before_the_store_is_advertised(tmp_path: Path) -> None:
    """Found in the walkthrough: `radsearch serve` on a port another program listened on took the
    store, advertised that program's URL as the owner's, then uvicorn exited 3 (the code of "the
    store is owned")."""
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        taken = subprocess.run(
            _serve_argv(tmp_path / "data", port), env=_clean_env(), capture_output=True, text=True, timeout=60
        )
    assert taken.returncode == 2, taken.stderr
    assert f"radsearch: error: cannot listen on 127.0.0.1:{port}: Address already in use" in taken.stderr
    assert not (tmp_path / "data" / "index" / "owner.json").exists()
    # and the store was let go: a command opens it itself
    assert main(["--data-dir", str(tmp_path / "data"), "collections", "list"]) == 0


@pytest.mark.parametrize(
    ("damage", "code", "says"),
    [
        ("a job store that is not a database", 2, "is damaged (file is not a database); move it aside"),
        ("a file where the job store's folder goes", 2, "cannot create the store's folder"),
    ],
)
def test_a_start_that_fails_ends_with_the_code_of_what_failed(
    damage: str, code: int, says: str, tmp_path: Path
) -> None:
    """Found in the walkthrough: when something failed as the server started (its job store
    here), `serve` logged "Application startup failed. Exiting." and then hung: the store's
    process, never closed, kept it alive. It now stops what was started, in order, and exits
    with the code of what failed (uvicorn's own was 3, the code of "the store is owned"), and
    without the traceback uvicorn logged before that line."""
    data = tmp_path / "data"
    assert main(["--data-dir", str(data), "collections", "create", "c", "--encoder", "baseline"]) == 0
    if damage.startswith("a job store"):
        (data / "jobs").mkdir()
        (data / "jobs" / "owner-jobs.sqlite3").write_bytes(b"not a database " * 100)
    else:
        (data / "jobs").write_text("a file")
    failed = subprocess.run(
        _serve_argv(data, free_port()), env=_clean_env(), capture_output=True, text=True, timeout=90
    )
    assert failed.returncode == code, failed.stderr
    assert says in failed.stderr.splitlines()[-1], failed.stderr
    assert failed.stderr.splitlines()[-1].startswith("radsearch: error: ")
    # An expected failure is said in one line: uvicorn's traceback of it is left out.
    assert "Traceback" not in failed.stderr, failed.stderr
    assert not (data / "index" / "owner.json").exists()  # the lease ended with the process
    assert main(["--data-dir", str(data), "collections", "list"]) == 0  # the store was let go


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_to_the_whole_process_group_stops_the_server_cleanly(sig: int, tmp_path: Path) -> None:
    """Found in the walkthrough: Ctrl-C (or `timeout`, or a service manager) signals the whole
    process group; the store's process ended first, and the server logged an error and started a
    new one as it shut down (with SIGTERM, a traceback too). The store's process now ignores those
    signals and ends when the server lets it go."""
    port = free_port()
    proc = subprocess.Popen(
        _serve_argv(tmp_path / "data", port),
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc=proc)
        (store,) = store_process_ids(proc.pid)
        os.killpg(proc.pid, sig)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = output.decode(errors="replace")
    assert proc.returncode in (0, -sig), log  # uvicorn ends by the signal it shut down on (-15)
    assert "Finished server process" in log
    assert "starting a new one" not in log and "Traceback" not in log and "ERROR" not in log, log
    assert not Path(f"/proc/{store}").exists() or "zombie" in Path(f"/proc/{store}/status").read_text()
