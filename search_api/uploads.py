"""The form parts shared by the image-upload routes: the file's safe name and bytes, the filter."""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from typing import TypeVar

from fastapi import Request, UploadFile
from fastapi.routing import APIRoute
from pydantic import BaseModel, BeforeValidator, ValidationError
from starlette.datastructures import UploadFile as StarletteUploadFile

from core.errors import BadInput, DecodeError, InvalidFilter, TooLarge
from core.payload import SearchFilter
from core.suggest import named_with_suggestions
from search_api.errors import RepeatedField, UnknownField
from search_api.routing import single_valued
from search_api.schemas import canonical_point_id, parse_filter

__all__ = [
    "FORM_NULL",
    "FormFieldError",
    "check_form_fields",
    "filter_from_form",
    "model_from_form",
    "point_ids_from_form",
    "read_upload",
    "upload_name",
]

M = TypeVar("M", bound=BaseModel)


def _form_null(value: object) -> object:
    return None if value in ("null", "") else value


#: For an optional non-string form field: ``null`` (as generated clients send None) and an empty
#: value mean absent, as they do for the JSON fields (``filter``).
FORM_NULL = BeforeValidator(_form_null)

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


async def check_form_fields(request: Request, allowed: tuple[str, ...], *, max_files: int = 1) -> None:
    """`BadInput` (400) for a form part the route does not take, for one that takes one value
    given several times, and for no file or more than ``max_files``: nothing a caller sends is
    silently ignored (``-F modality=MR`` would otherwise search unfiltered, and of two ``filter``
    parts one would count). Unknown names are echoed made safe and short, never their values."""
    form = await request.form()  # parsed once per request: the route's own parameters read it too
    unknown = sorted({name for name in form if name not in allowed})
    if unknown:
        safe = [_UNSAFE_NAME_CHARS.sub("_", name)[:40] for name in unknown[:5]]
        names = named_with_suggestions(safe, allowed)
        hint = ' (filters go in the JSON "filter" field)' if "filter" in allowed else ""
        raise UnknownField(
            safe[0], f"unknown form field {names}; this route takes {', '.join(allowed)}{hint}"
        )
    route = request.scope.get("route")
    single = single_valued(route, "body") if isinstance(route, APIRoute) else frozenset()
    for name in sorted((set(form) & single) - {"file"}):  # files are counted below
        if (times := len(form.getlist(name))) > 1:
            raise RepeatedField(name, f"form field {name!r} given {times} times; give it once")
    files = sum(1 for _, value in form.multi_items() if isinstance(value, StarletteUploadFile))
    if files < 1 or files > max_files:
        wanted = "exactly one file" if max_files == 1 else f"one to {max_files} files"
        raise BadInput("upload", f"{wanted} per search request")


def model_from_form(model: type[M], raw: str | None, field: str) -> M | None:
    """A JSON form field (``exclude``, ``roi``) as ``model``, or None when absent or blank;
    `InvalidQuery`-like `UnknownField`/`BadInput` (400) naming the field and the rule, never the
    value sent."""
    if raw is None or not raw.strip():
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in (field, *first.get("loc", ())))
        if first.get("type") == "extra_forbidden":
            raise UnknownField(
                where, f"unknown field {where!r}: the request schema does not take it"
            ) from None
        raise FormFieldError(where, f"{where}: {first.get('msg', 'invalid')}") from None


def point_ids_from_form(raw: list[str] | None, field: str) -> list[str]:
    """Point ids given as repeated form fields or comma-separated, in order, without repeats, each
    in its canonical form; `FormFieldError` naming ``field`` (and the position) for one that is no
    UUID."""
    ids = [item.strip() for value in raw or [] for item in value.split(",") if item.strip()]
    canonical = []
    for position, point_id in enumerate(ids):
        try:
            canonical.append(canonical_point_id(point_id))
        except ValueError as exc:
            raise FormFieldError(field, f"{field}[{position}]: {exc}") from None
    return list(dict.fromkeys(canonical))


class FormFieldError(BadInput):
    """A form field's value does not follow its rule (400, naming the field)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.args = (reason,)
        self.field = field
