"""The re-identification table: keyed instance hash → Study/Series/SOP Instance UIDs, encrypted.

Payloads only ever hold keyed hashes of UIDs. To open a hit in a viewer, a clinician needs the
UIDs back: this table keeps them, each row a Fernet token (AES-128-CBC + HMAC-SHA256) under the key
of `DicomwebSettings.reid_key`, in ``<data_dir>/reid/uids.sqlite`` beside the collections. The
table is written by ingest only when that key is set (opt-in), and read only for the ``clinician``
role (``search_api``), which audits every read.
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from cryptography.fernet import Fernet, InvalidToken
from pydicom.errors import InvalidDicomError

from core.config import Settings
from core.errors import ConfigError

__all__ = ["InstanceUids", "ReidTable", "open_reid_table", "read_uids"]


@dataclass(frozen=True)
class InstanceUids:
    study_uid: str
    series_uid: str
    instance_uid: str


def read_uids(data: bytes) -> InstanceUids | None:
    """The Study/Series/SOP Instance UIDs of a Part 10 file (its header only), None if absent."""
    try:
        ds = pydicom.dcmread(
            io.BytesIO(data),
            stop_before_pixels=True,
            specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
        )
    except (InvalidDicomError, ValueError, TypeError, EOFError, OSError, AttributeError, KeyError):
        return None
    values = [
        str(ds.get(k, "") or "").strip() for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    ]
    if not all(values):
        return None
    return InstanceUids(*values)


class ReidTable:
    """Encrypted rows keyed by instance hash; safe to share between threads."""

    def __init__(self, path: Path, key: bytes) -> None:
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                "dicomweb.reid_key must be a Fernet key (urlsafe base64 of 32 bytes); "
                "make one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'"
            ) from exc
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS uids (instance_hash TEXT PRIMARY KEY, token BLOB)")
        path.chmod(0o600)

    def record(self, instance_hash: str, uids: InstanceUids) -> None:
        """Store (or replace) the UIDs of one instance."""
        token = self._fernet.encrypt(
            json.dumps([uids.study_uid, uids.series_uid, uids.instance_uid]).encode()
        )
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO uids VALUES (?, ?)", (instance_hash, token))

    def look_up(self, instance_hashes: Iterable[str]) -> dict[str, InstanceUids]:
        """The UIDs of those of ``instance_hashes`` the table holds (rows that do not decrypt
        under the current key are left out)."""
        wanted = list(dict.fromkeys(instance_hashes))
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        with self._lock:
            rows = self._db.execute(
                f"SELECT instance_hash, token FROM uids WHERE instance_hash IN ({marks})",  # noqa: S608
                wanted,
            ).fetchall()
        out: dict[str, InstanceUids] = {}
        for instance_hash, token in rows:
            try:
                study, series, instance = json.loads(self._fernet.decrypt(token))
            except (InvalidToken, ValueError):
                continue
            out[instance_hash] = InstanceUids(study, series, instance)
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()


_OPEN: dict[tuple[Path, bytes], ReidTable] = {}
_OPEN_LOCK = threading.Lock()


def open_reid_table(settings: Settings) -> ReidTable | None:
    """The data dir's re-identification table (one per process and data dir), or None when no
    ``dicomweb.reid_key`` is set."""
    if settings.dicomweb.reid_key is None:
        return None
    key = settings.dicomweb.reid_key.get_secret_value().encode()
    path = (settings.data_dir / "reid" / "uids.sqlite").resolve()
    with _OPEN_LOCK:
        table = _OPEN.get((path, key))
        if table is None:
            table = _OPEN[(path, key)] = ReidTable(path, key)
        return table
