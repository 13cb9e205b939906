"""A second process on a data dir that an inline ingest owns: every command is refused with the
owner named (exit 3), nothing touches the shard, and the owner's writes all land."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import Settings, StoreSettings
from core.index.factory import open_index
from core.ownership import current_owner
from radsearch.commands.main import EXIT_STORE_OWNED, main

N_IMAGES = 1200
REPO = Path(__file__).parents[2]


def _archive(root: Path, n: int) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 255, (48, 48), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(root / f"img_{i:05d}.png")
    return root


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}
    # Small batches: the ingest writes many times while the other process knocks.
    return {**env, "RADSEARCH_INGEST__BATCH_SIZE": "4", "RADSEARCH_STORE__MIN_FREE_MB": "0"}


def _shard_files(directory: Path) -> set[str]:
    """The files of a collection's directory, less the temporary ones of an atomic write under way
    (``.collection.json.<random>.tmp``: the owner may be rewriting its metadata right then)."""
    return {p.name for p in directory.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))}


def test_every_command_is_refused_while_an_ingest_owns_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = _archive(tmp_path / "archive", N_IMAGES)
    data = tmp_path / "data"
    index_dir = data / "index"
    owner = subprocess.Popen(
        [sys.executable, "-m", "radsearch", "--data-dir", str(data), "ingest", str(archive)]
        + ["--collection", "chest", "--encoder", "baseline", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 60
        while not (index_dir / "chest" / "collection.json").exists():
            assert owner.poll() is None, owner.communicate()
            assert time.monotonic() < deadline, "the ingest never created its collection"
            time.sleep(0.05)
        record = current_owner(index_dir)
        assert record is not None and (record.pid, record.kind) == (owner.pid, "ingest")
        shard_files_before = _shard_files(index_dir / "chest")

        query = str(archive / "img_00000.png")
        base = ["--data-dir", str(data)]
        commands = [
            ["collections", "list"],
            ["collections", "list", "--json"],
            ["search", query, "--collection", "chest", "-k", "3"],
            ["ingest", str(archive), "--collection", "chest"],
            ["ingest", str(archive), "--collection", "other", "--encoder", "baseline"],
            ["collections", "create", "other", "--encoder", "baseline"],
            ["collections", "drop", "chest"],
            ["collections", "alias", "current", "chest"],
            ["collections", "unalias", "current"],
            ["collections", "aliases"],
            ["collections", "backfill", "copy", "--from", "chest"],
            ["eval", "--collection", "chest", "--json"],
        ]
        for command in commands:
            capsys.readouterr()
            code = main([*base, *command])
            err = capsys.readouterr().err
            assert code == EXIT_STORE_OWNED, (command, code, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1, (command, err)  # one line, no traceback
            assert f"radsearch ingest (pid {owner.pid})" in lines[0], (command, err)
            assert f"kill {owner.pid}" in lines[0]
        # The knocking happened while the owner was still writing: otherwise this proves nothing.
        assert owner.poll() is None, "the ingest ended before the second process was done"
        assert not (index_dir / "other").exists() and not (index_dir / "aliases.json").exists()
        assert shard_files_before <= _shard_files(index_dir / "chest")

        out, err = owner.communicate(timeout=300)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    assert owner.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["objects"], summary["frames_indexed"], summary["failed"]) == (N_IMAGES, N_IMAGES, 0)
    assert current_owner(index_dir) is None

    # The owner's writes all landed: the exact count, and the store opens and searches.
    settings = Settings(data_dir=data, store=StoreSettings(min_free_mb=0))
    index = open_index(settings, owner="test")
    try:
        assert index.count("chest") == N_IMAGES
        assert index.collection_info("chest")["points"] == N_IMAGES
    finally:
        index.close()
    assert main(["--data-dir", str(data), "collections", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(c["name"], c["points"]) for c in listed["collections"]] == [("chest", N_IMAGES)]


# Owns the data dir's store (argv[1]) as a server advertising argv[2] that never answers, then
# stops after argv[3] seconds: a `radsearch serve` caught while it shuts down.
_STOPPING_SERVER = """
import sys, time
from pathlib import Path
from core.ownership import acquire_store
with acquire_store(Path(sys.argv[1]), "serve") as lease:
    lease.advertise(sys.argv[2])
    print("owned", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def test_a_command_sent_to_a_server_that_stops_runs_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found in the walkthrough: a command run while `radsearch serve` shut down waited 15 s for it
    and failed with "cannot reach the radsearch server", although the store was free after 0.2 s."""
    from tests.conftest import free_port

    for name in [k for k in os.environ if k.startswith("RADSEARCH_")]:
        monkeypatch.delenv(name)
    settings = Settings(data_dir=tmp_path / "data")
    url = f"http://127.0.0.1:{free_port()}"
    argv = [sys.executable, "-c", _STOPPING_SERVER, str(settings.index_dir), url, "1.5"]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "owned"
        started = time.monotonic()
        code = main(["--data-dir", str(settings.data_dir), "collections", "list", "--json"])
        elapsed = time.monotonic() - started
    finally:
        server.kill()
        server.wait()
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out.strip().splitlines()[-1]) == {"collections": []}
    assert f"radsearch: the server at {url} has stopped; running here" in captured.err
    assert elapsed < 10, elapsed
