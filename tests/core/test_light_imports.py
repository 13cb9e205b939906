"""Torch (~2 s to import) only where a model runs: the readers, the API's non-model routes and the
CLI's light commands leave torch, transformers and open_clip out of ``sys.modules``.

Each check runs in a fresh interpreter. The CLI part imports every module of the ``radsearch``
package and runs ``--help``, ``encoders``, ``collections list`` (on an empty store and on one
holding a collection), ``collections aliases``/``trash``, ``snapshot list`` and ``keys create``.
Timings are measured by ``bench/cli_startup.py``; this checks the cause, which cannot be flaky."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr

from core.catalog import Catalog
from core.config import SecuritySettings, Settings
from core.encoders import get_spec
from core.index.factory import open_index
from tests.search_api.test_api import dicom_bytes

REPO = Path(__file__).parents[2]
HEAVY = ("torch", "transformers", "open_clip")
POINT = "00000000-0000-4000-8000-000000000001"

# Imports every module of the packages named, so a module added or moved later is checked too.
_IMPORT_ALL = """
import importlib, pkgutil
def import_all(package_name):
    package = importlib.import_module(package_name)
    names = [package_name]
    for info in pkgutil.walk_packages(package.__path__, package_name + "."):
        importlib.import_module(info.name)
        names.append(info.name)
    return names
"""

_CLI_CHECK = (
    _IMPORT_ALL
    + """
import contextlib, io, json, sys
heavy = {heavy}
seen = {{}}
import radsearch.commands.main
seen["import radsearch.commands.main"] = [m for m in heavy if m in sys.modules]
modules = import_all("radsearch")
seen["import every radsearch module"] = [m for m in heavy if m in sys.modules]
for name, argv in {commands}:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = radsearch.commands.main.main(argv)
        except SystemExit as exc:
            code = exc.code
    assert code == 0, (name, code)
    seen[name] = [m for m in heavy if m in sys.modules]
print(json.dumps(seen))
"""
)

_READERS_CHECK = (
    _IMPORT_ALL
    + """
import json, sys
from pathlib import Path
heavy = {heavy}
modules = import_all("ingest.readers")
from ingest.readers.base import DecodeLimits
from ingest.readers.dispatch import decode_object
frames = [
    len(decode_object(Path(path).read_bytes(), Path(path).name, limits=DecodeLimits(), hash_key=b"k").frames)
    for path in {paths}
]
print(json.dumps({{"modules": modules, "frames": frames, "heavy": [m for m in heavy if m in sys.modules]}}))
"""
)

_API_CHECK = """
import json, sys, time
from pathlib import Path
from fastapi.testclient import TestClient
from pydantic import SecretStr
from core.config import SecuritySettings, Settings
from core.index.factory import open_index
from search_api.app import create_app
heavy = {heavy}
settings = Settings(data_dir=Path({data_dir!r}), security=SecuritySettings(hash_key=SecretStr("k")))
index = open_index(settings)
seen = {{}}
try:
    with TestClient(create_app(settings, index=index)) as client:
        seen["create_app"] = [m for m in heavy if m in sys.modules]
        deadline = time.monotonic() + 60  # collections open in the background (slower under load)
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        for method, path, body in {requests}:
            answer = client.request(method, path, json=body)
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
            seen[method + " " + path] = [m for m in heavy if m in sys.modules]
finally:
    index.close()
print(json.dumps(seen))
"""


def _run(code: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.fixture
def store(tmp_path: Path) -> Settings:
    """A data dir holding one baseline collection ``chest`` with one point (built here, in the test
    process: creating a collection loads its encoder)."""
    settings = Settings(data_dir=tmp_path / "data", security=SecuritySettings(hash_key=SecretStr("k")))
    index = open_index(settings)
    try:
        entry = Catalog(index, settings).create("chest", get_spec("baseline"))
        index.upsert("chest", [POINT], np.ones((1, entry.dim), np.float32), [{}])
    finally:
        index.close()
    return settings


def test_light_commands_import_no_torch(store: Settings, tmp_path: Path) -> None:
    data_dir = ["--data-dir", str(store.data_dir)]
    commands = [
        ("--help", ["--help"]),
        ("encoders", ["encoders"]),
        ("collections list (empty)", ["--data-dir", str(tmp_path / "empty"), "collections", "list"]),
        ("collections list", [*data_dir, "collections", "list", "--json"]),
        ("collections aliases", [*data_dir, "collections", "aliases"]),
        ("collections trash", [*data_dir, "collections", "trash"]),
        ("snapshot list", [*data_dir, "snapshot", "list"]),
        ("keys create", ["keys", "create", "--role", "reader", "--name", "x"]),
    ]
    seen = _run(_CLI_CHECK.format(heavy=repr(HEAVY), commands=repr(commands)))
    names = [
        "import radsearch.commands.main",
        "import every radsearch module",
        *(name for name, _ in commands),
    ]
    assert seen == {name: [] for name in names}


def test_readers_import_and_decode_without_torch(tmp_path: Path) -> None:
    image = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    dicom = tmp_path / "frame.dcm"
    dicom.write_bytes(dicom_bytes(image, patient_name="Doe^Jane"))
    png = tmp_path / "frame.png"
    Image.fromarray(image).save(png)
    seen = _run(_READERS_CHECK.format(heavy=repr(HEAVY), paths=repr([str(dicom), str(png)])))
    assert {"ingest.readers.dicom", "ingest.readers.raster", "ingest.readers.dispatch"} <= set(
        seen["modules"]
    )
    assert seen["frames"] == [1, 1]
    assert seen["heavy"] == []


def test_api_non_model_routes_import_no_torch(store: Settings) -> None:
    collection = "/v1/collections/chest"
    requests = [
        ("GET", "/healthz", None),
        ("GET", "/readyz", None),
        ("GET", "/v1/collections", None),
        ("GET", collection, None),
        ("GET", f"{collection}/points/{POINT}", None),
        ("POST", f"{collection}/points/scroll", {}),
        ("POST", f"{collection}/search", {"point_id": POINT}),
        ("POST", f"{collection}/search", {"vector": [1.0] * get_spec("baseline").dim}),
    ]
    seen = _run(_API_CHECK.format(heavy=repr(HEAVY), data_dir=str(store.data_dir), requests=repr(requests)))
    assert seen == {"create_app": [], **{f"{method} {path}": [] for method, path, _ in requests}}
