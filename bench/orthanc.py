"""A throwaway Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) holding the benchmark's
DICOMs, for ``bench/ingest.py --source dicomweb``."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

PLUGINS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def orthanc_with(files: list[Path]) -> Iterator[str]:
    """Start Orthanc on a free port, store ``files`` over its REST API; yields the radsearch
    source URI of its DICOMweb root (``dicomweb+http://127.0.0.1:PORT/dicom-web``)."""
    binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
    plugin = next((p for p in PLUGINS if Path(p).exists()), None)
    if binary is None or plugin is None:
        raise SystemExit("--source dicomweb needs Debian's orthanc and orthanc-dicomweb")
    with tempfile.TemporaryDirectory(prefix="radsearch-orthanc-") as tmp:
        port = _free_port()
        config = {
            "Name": "bench",
            "StorageDirectory": f"{tmp}/storage",
            "IndexDirectory": f"{tmp}/storage",
            "HttpPort": port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": False,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (Path(tmp) / "orthanc.json").write_text(json.dumps(config))
        proc = subprocess.Popen(
            [binary, f"{tmp}/orthanc.json"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{url}/system", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("Orthanc did not start")
                time.sleep(0.1)
            with httpx.Client(base_url=url, timeout=60) as client:
                for path in files:
                    client.post("/instances", content=path.read_bytes()).raise_for_status()
            yield f"dicomweb+{url}/dicom-web"
        finally:
            proc.terminate()
            proc.wait(timeout=15)
