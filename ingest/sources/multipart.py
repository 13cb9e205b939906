"""``multipart/related`` bodies (PS3.18 8.6): what WADO-RS answers and STOW-RS receives."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator

from core.errors import ConfigError

__all__ = ["boundary_of", "encode_multipart", "split_multipart"]

_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)


def boundary_of(content_type: str) -> str:
    """The boundary parameter of a ``multipart/related`` Content-Type; `ConfigError` naming the
    header when there is none."""
    if not content_type.lower().startswith("multipart/related"):
        raise ConfigError('Content-Type must be multipart/related; type="application/dicom"')
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise ConfigError("Content-Type multipart/related has no boundary parameter")
    return match.group(1) or match.group(2)


def split_multipart(body: bytes, boundary: str) -> Iterator[tuple[dict[str, str], bytes]]:
    """Each part's headers (lower-case names) and content, in order."""
    delimiter = b"--" + boundary.encode("latin-1")
    chunks = body.split(delimiter)
    # chunks[0] is the preamble; the chunk after the closing delimiter starts with "--".
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk.removeprefix(b"\r\n")
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        yield headers, content.removesuffix(b"\r\n")


def encode_multipart(parts: Iterable[bytes], content_type: str = "application/dicom") -> tuple[bytes, str]:
    """A ``multipart/related`` body of ``parts`` and its Content-Type header value."""
    boundary = uuid.uuid4().hex
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
        out += part
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f'multipart/related; type="{content_type}"; boundary={boundary}'
