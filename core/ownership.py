"""One owner per data dir: an OS file lock taken before any engine call, and an owner record.

Qdrant Edge lets one process open a shard, and a second process's attempt to open it disturbs
the owner's later writes. So radsearch decides ownership itself, before the engine is touched:

    <index dir>/owner.lock   flock(LOCK_EX), held by the owner for its whole life; the kernel
                             drops it when the process ends, ``kill -9`` included
    <index dir>/owner.json   {"pid", "kind", "url", "started_at"}, written by the owner after it
                             took the lock; ``url`` is set while it serves the HTTP API

A process that cannot take the lock never opens the shard files: it reads the owner record and
either becomes the owner's HTTP client (the owner serves) or stops with `StoreOwned`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from core.errors import ConfigError, StoreOwned

__all__ = ["OwnerRecord", "StoreLease", "acquire_store", "current_owner", "pid_alive"]

_LOCK_FILE = "owner.lock"
_RECORD_FILE = "owner.json"
# A prober holds a shared lock for microseconds; an owner starting meanwhile tries again.
_ACQUIRE_RETRY_S = 1.0
_RETRY_SLEEP_S = 0.02


@dataclass(frozen=True)
class OwnerRecord:
    """Who owns a data dir: its pid, what it is (``serve``, ``ingest``, ``demo``, ...), and the
    URL of its HTTP API while it serves one."""

    pid: int
    kind: str
    url: str | None = None
    started_at: str = ""

    @property
    def serves(self) -> bool:
        return self.url is not None

    def describe(self) -> str:
        served = f", serving {self.url}" if self.url else ""
        return f"radsearch {self.kind} (pid {self.pid}{served})"


class _Held:
    """This process's hold on one data dir (shared by every lease the process takes on it)."""

    def __init__(self, directory: Path, fd: int, record: OwnerRecord) -> None:
        self.directory = directory
        self.fd = fd
        self.record = record
        self.pid = os.getpid()
        self.leases = 0


_held: dict[Path, _Held] = {}
_held_lock = threading.Lock()


class StoreLease:
    """Ownership of a data dir by this process. Leases taken again in the same process share the
    lock (an in-process server and command are one owner); the lock goes with the last `close`."""

    def __init__(self, held: _Held) -> None:
        self._held: _Held | None = held

    @property
    def record(self) -> OwnerRecord:
        if self._held is None:
            raise RuntimeError("the store lease was released")
        return self._held.record

    def advertise(self, url: str | None, *, kind: str | None = None) -> None:
        """Publish (or, with None, withdraw) the URL of the HTTP API this owner serves."""
        with _held_lock:
            held = self._held
            if held is None:
                raise RuntimeError("the store lease was released")
            held.record = OwnerRecord(
                pid=held.record.pid,
                kind=kind or held.record.kind,
                url=url,
                started_at=held.record.started_at,
            )
            _write_record(held.directory, held.record)

    def close(self) -> None:
        with _held_lock:
            held, self._held = self._held, None
            if held is None:
                return
            held.leases -= 1
            if held.leases > 0:
                return
            _held.pop(held.directory, None)
            with contextlib.suppress(OSError):
                (held.directory / _RECORD_FILE).unlink()
            os.close(held.fd)  # closing the descriptor drops the flock

    def __enter__(self) -> StoreLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _key(directory: Path) -> Path:
    return directory.resolve()


def _write_record(directory: Path, record: OwnerRecord) -> None:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{_RECORD_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(asdict(record), handle)
        os.replace(tmp, directory / _RECORD_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_record(directory: Path) -> OwnerRecord | None:
    try:
        data = json.loads((directory / _RECORD_FILE).read_text(encoding="utf-8"))
        return OwnerRecord(
            pid=int(data["pid"]),
            kind=str(data["kind"]),
            url=str(data["url"]) if data.get("url") else None,
            started_at=str(data.get("started_at", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_is_held(directory: Path) -> bool:
    """Whether another process holds the owner lock (probed with a shared lock, let go at once)."""
    path = directory / _LOCK_FILE
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock if it was taken
    return False


def current_owner(index_dir: Path) -> OwnerRecord | None:
    """The live owner of ``index_dir`` (this process included), or None when nobody owns it."""
    directory = Path(index_dir)
    with _held_lock:
        held = _held.get(_key(directory)) if directory.exists() else None
        if held is not None and held.pid == os.getpid():
            return held.record
    if not _lock_is_held(directory):
        return None
    # The owner writes its record just after taking the lock: give a starting owner a moment.
    deadline = time.monotonic() + _ACQUIRE_RETRY_S
    while True:
        record = _read_record(directory)
        if record is not None and pid_alive(record.pid):
            return record
        if time.monotonic() > deadline:
            return OwnerRecord(pid=record.pid if record else 0, kind="unknown")
        time.sleep(_RETRY_SLEEP_S)


def acquire_store(index_dir: Path, kind: str) -> StoreLease:
    """Own ``index_dir`` as ``kind``; `StoreOwned` (naming the owner) if another process does.

    Call before any engine call on the store: open, create, drop, alias or catalog write."""
    directory = Path(index_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the store's folder {directory}: {exc.strerror or exc} "
            "(the data dir is --data-dir or RADSEARCH_DATA_DIR, default ./data)"
        ) from None
    key = _key(directory)
    with _held_lock:
        held = _held.get(key)
        if held is not None and held.pid == os.getpid():
            held.leases += 1
            return StoreLease(held)
        fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + _ACQUIRE_RETRY_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    os.close(fd)
                    raise
                record = _read_record(directory)
                if (record is not None and pid_alive(record.pid)) or time.monotonic() > deadline:
                    os.close(fd)
                    raise StoreOwned(directory, record or OwnerRecord(pid=0, kind="unknown")) from None
                time.sleep(_RETRY_SLEEP_S)
        record = OwnerRecord(
            pid=os.getpid(), kind=kind, started_at=datetime.now(UTC).isoformat(timespec="seconds")
        )
        try:
            _write_record(directory, record)
        except BaseException:
            os.close(fd)
            raise
        held = _Held(key, fd, record)
        held.leases = 1
        _held[key] = held
        return StoreLease(held)
