"""Start-up time of the light CLI commands, which must not import torch.

``python bench/cli_startup.py [--runs 5] [--quick]`` runs each command ``--runs`` times as a
subprocess, as a user would, and prints one JSON line per command:
``{"bench": "cli_startup", "command", "runs", "median_s", "max_s", "torch_imported",
"heavy_modules", "exit_codes", "target_s", "ok"}``. ``heavy_modules`` lists which of torch,
transformers, open_clip, pydicom, fastapi, uvicorn the command's process had imported when it
exited (an ``atexit`` hook of the runner reports ``sys.modules``; the timing includes it).

Commands: ``--help``; ``collections list`` on an empty and on a small data dir (one collection,
100 points); ``keys create``; ``jobs show`` against a private redis-server (skipped, and said so,
where none is installed); ``collections list`` through a running ``radsearch serve`` that owns the
data dir. Target (issue 13): median at most 1.0 s and no torch; exit status 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from common import REPO_ROOT, emit

TARGET_S = 1.0
HEAVY = ("torch", "transformers", "open_clip", "pydicom", "fastapi", "uvicorn")

# Runs the CLI as the console script does, then reports the heavy modules it imported.
_RUNNER = """
import atexit, json, os, sys
def _report():
    with open(os.environ["CLI_STARTUP_REPORT"], "w") as fh:
        json.dump(sorted(m for m in {heavy} if m in sys.modules), fh)
atexit.register(_report)
from radsearch.commands.main import main
sys.exit(main(sys.argv[1:]))
""".replace("{heavy}", repr(HEAVY))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADSEARCH_")}
    return {**env, "RADSEARCH_SECURITY__HASH_KEY": "bench", **extra}


def measure(name: str, argv: list[str], runs: int, env: dict[str, str]) -> dict[str, object]:
    """Run ``radsearch argv`` ``runs`` times; one JSON record."""
    walls: list[float] = []
    codes: list[int] = []
    heavy: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="cli-startup-") as tmp:
        report = Path(tmp) / "modules.json"
        for _ in range(runs):
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", _RUNNER, *argv],
                cwd=REPO_ROOT,
                env={**env, "CLI_STARTUP_REPORT": str(report)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            walls.append(time.perf_counter() - started)
            codes.append(done.returncode)
            if report.exists():
                heavy.update(json.loads(report.read_text()))
                report.unlink()
            if done.returncode != 0:
                print(f"{name}: exit {done.returncode}: {done.stderr.strip()[-500:]}", file=sys.stderr)
    median = statistics.median(walls)
    return {
        "bench": "cli_startup",
        "command": name,
        "runs": runs,
        "median_s": round(median, 3),
        "max_s": round(max(walls), 3),
        "torch_imported": "torch" in heavy,
        "heavy_modules": sorted(heavy),
        "exit_codes": sorted(set(codes)),
        "target_s": TARGET_S,
        "ok": median <= TARGET_S and "torch" not in heavy and set(codes) == {0},
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s} s")


def small_data_dir(data_dir: Path) -> None:
    """One ``baseline`` collection of 100 points, written in this process (it may import torch)."""
    from core.catalog import Catalog
    from core.config import Settings
    from core.encoders.registry import get_spec
    from core.index.factory import open_index

    settings = Settings(data_dir=data_dir, security={"hash_key": "bench"})
    index = open_index(settings, owner="bench")
    try:
        entry = Catalog(index, settings).create("small", get_spec("baseline"))
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(100, entry.dim)).astype(np.float32)
        ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(100)]
        payloads = [{"modality": "CT", "key": f"img_{i}.png", "frame": 0} for i in range(100)]
        index.upsert("small", ids, vectors, payloads)
    finally:
        index.close()


@contextmanager
def redis_with_a_job() -> Iterator[tuple[str, str] | None]:
    """A private redis-server holding one job record: (url, job id); None without redis-server."""
    exe = shutil.which("redis-server")
    if exe is None:
        yield None
        return
    from core.config import CelerySettings
    from core.jobs import JobKind, JobSpec
    from core.jobs.redis_store import open_job_store

    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 30
        while True:
            try:
                store = open_job_store(url, CelerySettings())
                job_id = store.create(
                    JobKind.INGEST, JobSpec(source="s3://bench/prefix", collections=("small",))
                )
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url, job_id
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def serving(data_dir: Path) -> Iterator[None]:
    """``radsearch serve`` owning ``data_dir``, until the block ends."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "radsearch", "--data-dir", str(data_dir), "serve", "--port", str(port)],
        cwd=REPO_ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, proc)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 runs per command")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    records: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="radsearch-cli-startup-") as tmp:
        empty, small = Path(tmp) / "empty", Path(tmp) / "small"
        small_data_dir(small)
        env = _env()
        cases = [
            ("--help", ["--help"]),
            ("collections list (empty data dir)", ["--data-dir", str(empty), "collections", "list"]),
            ("collections list (100 points)", ["--data-dir", str(small), "collections", "list"]),
            ("keys create", ["keys", "create", "--role", "reader", "--name", "x"]),
        ]
        for name, argv in cases:
            records.append(measure(name, argv, runs, env))
            emit(records[-1])
        with redis_with_a_job() as redis_job:
            if redis_job is None:
                emit(
                    {"bench": "cli_startup", "command": "jobs show", "skipped": "redis-server not installed"}
                )
            else:
                url, job_id = redis_job
                records.append(
                    measure("jobs show", ["jobs", "show", job_id], runs, _env(RADSEARCH_REDIS__URL=url))
                )
                emit(records[-1])
        with serving(small):
            argv = ["--data-dir", str(small), "collections", "list"]
            records.append(measure("collections list (through radsearch serve)", argv, runs, env))
            emit(records[-1])
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
