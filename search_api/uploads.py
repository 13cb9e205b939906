"""The form parts shared by the image-upload routes: the file's safe name and bytes, the filter."""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath

from fastapi import UploadFile

from core.errors import DecodeError, InvalidFilter, TooLarge
from core.payload import SearchFilter
from search_api.schemas import parse_filter

__all__ = ["filter_from_form", "read_upload", "upload_name"]

_UNSAFE_NAME_CHARS = re.compile(r"[^\w.\- ]")


def upload_name(filename: str | None) -> str:
    """The upload's base name, made safe to echo in messages (never any header value)."""
    base = PurePosixPath((filename or "").replace("\\", "/")).name
    return _UNSAFE_NAME_CHARS.sub("_", base)[:128] or "upload"


def filter_from_form(filter_json: str | None) -> SearchFilter | None:
    """The ``filter`` form field: a JSON object, or nothing (absent or blank)."""
    if filter_json is None or not filter_json.strip():
        return None
    try:
        raw_filter = json.loads(filter_json)
    except json.JSONDecodeError as exc:
        raise InvalidFilter(f"filter is not valid JSON: {exc.msg} at position {exc.pos}") from None
    return parse_filter(raw_filter)


async def read_upload(file: UploadFile, max_bytes: int, name: str) -> bytes:
    """The upload's bytes; `TooLarge` past ``max_bytes`` (never reads more), `DecodeError` if empty."""
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge(name, f"upload is larger than {max_bytes} bytes")
    if not data:
        raise DecodeError(name, "empty upload")
    return data
