"""A local folder as a source. Keys are POSIX paths relative to the folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from core.errors import BadInput, ConfigError, ObjectNotFound, TooLarge
from ingest.sources.base import ObjectRef, Source, check_source_name

__all__ = ["LocalSource"]


class LocalSource(Source):
    """Files under ``root``, listed in sorted order, hidden files skipped."""

    def __init__(self, root: Path, *, max_object_bytes: int, name: str | None = None) -> None:
        resolved = root.expanduser().resolve()
        if not resolved.is_dir():
            raise ConfigError(f"source folder {str(root)!r} does not exist or is not a folder")
        self.root = resolved
        self.uri = str(resolved)
        self.name = (
            check_source_name(name)
            if name is not None
            else check_source_name(
                resolved.name or "root", field="the source folder's name (give --source-name)"
            )
        )
        self.max_object_bytes = max_object_bytes

    def list(self) -> Iterator[ObjectRef]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if filename.startswith("."):
                    continue
                path = Path(dirpath) / filename
                if path.is_symlink() or not path.is_file():
                    continue
                yield self._ref(path)

    def stat(self, key: str) -> ObjectRef:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return self._ref(path)

    def fetch(self, key: str) -> bytes:
        path = self._path(key)
        try:
            size = path.stat().st_size
            if size > self.max_object_bytes:
                raise TooLarge(key, f"object of {size} bytes exceeds the {self.max_object_bytes}-byte limit")
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        except IsADirectoryError as exc:
            raise BadInput(key, "not a file") from exc

    def _path(self, key: str) -> Path:
        # Keys come from listings, manifests and HTTP callers: never let one escape the root.
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise BadInput(key, "key points outside the source folder")
        return path

    def _ref(self, path: Path) -> ObjectRef:
        st = path.stat()
        key = path.relative_to(self.root).as_posix()
        return ObjectRef(key=key, etag=f"{st.st_size:x}-{st.st_mtime_ns:x}", size=st.st_size)
