"""The form parts shared by the image-upload routes: the file's safe name and bytes, the filter."""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath

from fastapi import UploadFile
from starlette.datastructures import FormData
from starlette.datastructures import UploadFile as StarletteUploadFile

from core.errors import BadInput, DecodeError, InvalidFilter, TooLarge
from core.payload import SearchFilter
from search_api.errors import UnknownField
from search_api.schemas import parse_filter

__all__ = ["check_form_fields", "filter_from_form", "read_upload", "upload_name"]

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


def check_form_fields(form: FormData, allowed: tuple[str, ...]) -> None:
    """`BadInput` (400) for a form part the route does not take, and for anything but exactly one
    file: nothing a caller sends is silently ignored (``-F modality=MR`` would otherwise search
    unfiltered). Unknown names are echoed made safe and short, never their values."""
    unknown = sorted({name for name in form if name not in allowed})
    if unknown:
        safe = [_UNSAFE_NAME_CHARS.sub("_", name)[:40] for name in unknown[:5]]
        names = ", ".join(map(repr, safe))
        hint = ' (filters go in the JSON "filter" field)' if "filter" in allowed else ""
        raise UnknownField(
            safe[0], f"unknown form field {names}; this route takes {', '.join(allowed)}{hint}"
        )
    if sum(1 for _, value in form.multi_items() if isinstance(value, StarletteUploadFile)) != 1:
        raise BadInput("upload", "exactly one file per search request")
