"""One owner per data dir: the lock and the owner record, across real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.config import Settings, StoreSettings
from core.errors import StoreOwned
from core.index.factory import open_index
from core.ownership import acquire_store, current_owner

# A child that owns the directory given as argv[1] as kind argv[2], says so, then waits.
_HOLDER = """
import sys, time
from pathlib import Path
from core.ownership import acquire_store
lease = acquire_store(Path(sys.argv[1]), sys.argv[2])
if len(sys.argv) > 3:
    lease.advertise(sys.argv[3])
print("owned", flush=True)
time.sleep(600)
"""


def _hold(directory: Path, kind: str, url: str | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", _HOLDER, str(directory), kind, *([url] if url else [])]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "owned"
    proc.stdout.close()  # the holder says nothing more; an open pipe would outlive the test
    return proc


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return tmp_path / "index"


def test_no_owner_then_this_process(index_dir: Path) -> None:
    assert current_owner(index_dir) is None
    with acquire_store(index_dir, "ingest") as lease:
        owner = current_owner(index_dir)
        assert owner == lease.record
        assert (owner.pid, owner.kind, owner.url) == (os.getpid(), "ingest", None)
    assert current_owner(index_dir) is None
    assert not (index_dir / "owner.json").exists()


def test_leases_in_one_process_share_the_lock(index_dir: Path) -> None:
    first = acquire_store(index_dir, "serve")
    second = acquire_store(index_dir, "cli")  # e.g. a command run inside the serving process
    assert second.record.kind == "serve"
    first.close()
    assert current_owner(index_dir) is not None  # the second lease still holds it
    second.close()
    assert current_owner(index_dir) is None


def test_another_process_is_refused_and_named(index_dir: Path) -> None:
    holder = _hold(index_dir, "ingest")
    try:
        owner = current_owner(index_dir)
        assert owner is not None and (owner.pid, owner.kind) == (holder.pid, "ingest")
        with pytest.raises(StoreOwned) as refused:
            acquire_store(index_dir, "cli")
        message = str(refused.value)
        assert f"pid {holder.pid}" in message and "ingest" in message
        assert f"kill {holder.pid}" in message
        assert refused.value.owner.pid == holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_a_serving_owner_advertises_its_url(index_dir: Path) -> None:
    holder = _hold(index_dir, "serve", "http://127.0.0.1:8123")
    try:
        owner = current_owner(index_dir)
        assert owner is not None and owner.url == "http://127.0.0.1:8123" and owner.serves
        with pytest.raises(StoreOwned, match="--url http://127.0.0.1:8123"):
            acquire_store(index_dir, "cli")
    finally:
        holder.terminate()
        holder.wait()


def test_an_owner_killed_with_sigkill_leaves_the_store_free(index_dir: Path) -> None:
    holder = _hold(index_dir, "ingest")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    # The kernel dropped the lock; the stale record left behind does not count.
    assert json.loads((index_dir / "owner.json").read_text())["pid"] == holder.pid
    assert current_owner(index_dir) is None
    with acquire_store(index_dir, "ingest") as lease:
        assert lease.record.pid == os.getpid()


def test_open_index_takes_the_lock_before_any_engine_call(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", store=StoreSettings(min_free_mb=0))
    holder = _hold(settings.index_dir, "ingest")
    try:
        started = time.monotonic()
        with pytest.raises(StoreOwned):
            open_index(settings, owner="cli")
        assert time.monotonic() - started < 5
        # Nothing was created beside the lock and the record: no shard was opened.
        assert sorted(p.name for p in settings.index_dir.iterdir()) == ["owner.json", "owner.lock"]
    finally:
        holder.kill()
        holder.wait()
    index = open_index(settings, owner="cli")
    try:
        assert current_owner(settings.index_dir) is not None
    finally:
        index.close()
    assert current_owner(settings.index_dir) is None
