"""A small disk for tests of a full store: a tmpfs mounted by the test (the tests run as root,
here and in CI; a mount that fails fails the test, it does not skip it)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """Mounts a tmpfs of the given size (MB) under ``tmp_path``; unmounted at teardown."""
    mounted: list[Path] = []

    def mount(size_mb: int) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.fail(f"cannot mount a {size_mb} MB tmpfs (this test needs root): {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        # Lazy: a process the test left behind cannot keep the mount (its memory goes with it).
        subprocess.run(["umount", "--lazy", str(point)], check=True)


def free_mb(path: Path) -> float:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize / 2**20


def fill_disk(disk: Path, *, leave_mb: float) -> Path:
    """A filler file leaving about ``leave_mb`` MB free on ``disk``."""
    filler = disk / "filler"
    size = int((free_mb(disk) - leave_mb) * 2**20)
    chunk = b"\xff" * 2**20
    with filler.open("wb") as handle:
        for _ in range(size // len(chunk)):
            handle.write(chunk)
        handle.write(chunk[: size % len(chunk)])
    return filler
