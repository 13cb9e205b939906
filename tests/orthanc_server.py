"""A real Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``) started by a test: a generated
configuration, a temporary storage folder, a free HTTP port, stopped after."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.served import Served

PLUGIN_PATHS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)


def orthanc_binary() -> str:
    """The Orthanc executable; a test that needs it fails (never skips) without it."""
    found = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
    if found is None:
        raise RuntimeError("Orthanc is not installed (.ci/run installs orthanc and orthanc-dicomweb)")
    return found


def dicomweb_plugin() -> str:
    for path in PLUGIN_PATHS:
        if os.path.exists(path):
            return path
    raise RuntimeError("Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)")


@dataclass
class Orthanc:
    """A running Orthanc: ``url`` its REST API, ``dicomweb`` the radsearch source URI of its
    DICOMweb root."""

    url: str
    process: subprocess.Popen[bytes]
    root: Path

    @property
    def dicomweb(self) -> str:
        return f"dicomweb+{self.url}/dicom-web"

    def upload(self, data: bytes) -> dict[str, Any]:
        """Store one DICOM file through the REST API (``POST /instances``)."""
        response = httpx.post(f"{self.url}/instances", content=data, timeout=30)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_orthanc(root: Path, *, dicomweb_servers: dict[str, Any] | None = None) -> Orthanc:
    """Start Orthanc with its storage under ``root`` on a free port; wait until it answers."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "radsearch-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "DicomPort": free_port(),
        "RemoteAccessAllowed": True,
        "AuthenticationEnabled": False,
        "HttpTimeout": 60,
        "Plugins": [dicomweb_plugin()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": dicomweb_servers or {}},
    }
    path = root / "orthanc.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    log = (root / "orthanc.log").open("wb")
    process = subprocess.Popen([orthanc_binary(), str(path)], stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(f"http://127.0.0.1:{port}", process, root)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}: see {root / 'orthanc.log'}")
        try:
            if httpx.get(f"{server.url}/system", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise TimeoutError("Orthanc did not answer within 30 s")
        time.sleep(0.1)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A fresh, empty Orthanc with DICOMweb, for one test."""
    server = start_orthanc(tmp_path / "orthanc")
    try:
        yield server
    finally:
        server.stop()


class ServedApp(Served):
    """radsearch's API served by a real uvicorn on a free port (in a thread), so that Orthanc can
    call it over HTTP."""

    def __init__(self, settings: Any, *, port: int | None = None) -> None:
        from search_api import create_app

        super().__init__(create_app(settings), port=port)
