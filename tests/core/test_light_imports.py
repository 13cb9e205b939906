"""The light commands of the CLI start without torch (~2 s to import): importing `radsearch.commands.main`,
``--help``, ``collections list`` (on an empty store and on one holding a collection) and ``keys
create`` leave torch, transformers and open_clip out of ``sys.modules``. Timings are measured by
``bench/cli_startup.py``; this checks the cause, which cannot be flaky."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from pydantic import SecretStr

from core.catalog import Catalog
from core.config import SecuritySettings, Settings
from core.encoders import get_spec
from core.index.factory import open_index

REPO = Path(__file__).parents[2]
HEAVY = ("torch", "transformers", "open_clip")

_CHECK = """
import contextlib, io, json, sys
heavy = {heavy}
seen = {{}}
import radsearch.commands.main
seen["import radsearch.commands.main"] = [m for m in heavy if m in sys.modules]
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


def test_light_commands_import_no_torch(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", security=SecuritySettings(hash_key=SecretStr("k")))
    index = open_index(settings)
    try:
        entry = Catalog(index, settings).create("chest", get_spec("baseline"))
        index.upsert(
            "chest", ["00000000-0000-4000-8000-000000000001"], np.ones((1, entry.dim), np.float32), [{}]
        )
    finally:
        index.close()
    commands = [
        ("--help", ["--help"]),
        ("collections list (empty)", ["--data-dir", str(tmp_path / "empty"), "collections", "list"]),
        ("collections list", ["--data-dir", str(settings.data_dir), "collections", "list", "--json"]),
        ("keys create", ["keys", "create", "--role", "reader", "--name", "x"]),
    ]
    done = subprocess.run(
        [sys.executable, "-c", _CHECK.format(heavy=repr(HEAVY), commands=repr(commands))],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {name: [] for name in ["import radsearch.commands.main", *(name for name, _ in commands)]}
