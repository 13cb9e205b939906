"""One error model for every 4xx/5xx answer, and the mapping of radsearch's exception tree to it.

Every error body is `ErrorBody`: ``{"error": {"code", "message", "field"}, "detail": message}``
(``detail`` repeats the message for clients of the earlier ``{"detail": ...}`` body). ``code`` is a
stable snake_case id per error class; ``field`` names the offending field or parameter where
there is one. Core messages name the file or field at fault and never carry patient-identifying
values; validation errors name the field and the rule, never the rejected value.

Adding an error class to the HTTP mapping is one line in `STATUS_BY_ERROR`; its code is its class
name in snake_case unless `CODE_BY_ERROR` says otherwise.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from core.errors import (
    BadInput,
    CollectionExists,
    CollectionNotFound,
    ConfigError,
    DeletionRefused,
    EncoderNotFound,
    InvalidFilter,
    InvalidVector,
    NoTextTower,
    PointNotFound,
    RadsearchError,
    StoreFull,
    StoreOwned,
    StoreUnavailable,
    TooLarge,
    UnsupportedFormat,
    UpstreamUnreachable,
    WeightsUnavailable,
    rule_broken,
)
from core.payload import unknown_filter_fields
from core.suggest import did_you_mean

__all__ = [
    "CODE_BY_ERROR",
    "STATUS_BY_ERROR",
    "ApiError",
    "ErrorBody",
    "ErrorInfo",
    "NotInPacs",
    "ObjectGone",
    "ObjectQuarantined",
    "RepeatedField",
    "UnknownField",
    "UpstreamUnavailable",
    "code_for",
    "error_content",
    "error_responses",
    "install_exception_handlers",
    "send_error",
    "status_for",
]

logger = logging.getLogger(__name__)


class ErrorInfo(BaseModel):
    """What went wrong: a stable ``code``, a message for people, the field at fault if any."""

    code: str = Field(
        description="stable snake_case id of the error class", examples=["collection_not_found"]
    )
    message: str = Field(description="what went wrong; names fields and rules, never the values sent")
    field: str | None = Field(
        default=None, description="the request field or parameter at fault (dotted path), if any"
    )


class ErrorBody(BaseModel):
    """The body of every 4xx/5xx answer."""

    error: ErrorInfo
    detail: str = Field(description="the message again, for clients of the earlier {detail} body")


class UpstreamUnavailable(RadsearchError):
    """A point's source object cannot be fetched or decoded (thumbnails): the store, not the client."""


class ObjectGone(RadsearchError):
    """A point's source object no longer exists (deleted from the archive): no pixels to serve."""


class ObjectQuarantined(RadsearchError):
    """A point's source object is quarantined now (burned-in annotation) and its collection did not
    accept burned-in objects: its pixels are not served."""


class UnknownField(BadInput):
    """A request names a field, form part or query parameter the route does not take."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.args = (reason,)  # the message names the field itself
        self.field = field


class RepeatedField(BadInput):
    """A request gives a single-valued form part or query parameter more than once: which value
    counts is not guessed."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.args = (reason,)
        self.field = field


class NotInPacs(BadInput):
    """The configured PACS holds no study, series or instance with the UIDs given (``field``)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.args = (reason,)
        self.field = field


class ApiError(HTTPException):
    """An HTTP-level refusal (auth, queue, job ids) with its stable ``code`` and optional field."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=dict(headers or {}) or None)
        self.code = code
        self.field = field


# Most specific first: the first class in an error's MRO found here decides.
STATUS_BY_ERROR: dict[type[RadsearchError], int] = {
    CollectionNotFound: 404,
    PointNotFound: 404,
    CollectionExists: 409,
    DeletionRefused: 409,
    ObjectGone: 404,
    NotInPacs: 404,
    ObjectQuarantined: 410,
    TooLarge: 413,
    UnsupportedFormat: 415,
    BadInput: 400,
    InvalidFilter: 400,
    InvalidVector: 400,
    NoTextTower: 400,
    EncoderNotFound: 400,
    ConfigError: 400,
    # the weights the request names cannot be had here (a failed dependency, the caller's to provide)
    WeightsUnavailable: 424,
    UpstreamUnreachable: 502,
    StoreFull: 507,
    StoreOwned: 503,
    StoreUnavailable: 503,
    UpstreamUnavailable: 502,
}

# Codes that differ from the class name in snake_case.
CODE_BY_ERROR: dict[type[Exception], str] = {
    ConfigError: "invalid_request",
    BadInput: "bad_input",
}

# HTTP-level errors without a class of their own (404 of an unknown path, 405...).
_CODE_BY_STATUS: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    502: "bad_gateway",
    503: "unavailable",
}

# Errors that name their field when the exception does not.
_FIELD_BY_ERROR: dict[type[Exception], str] = {InvalidFilter: "filter", NoTextTower: "text"}

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def status_for(exc: RadsearchError | type[RadsearchError]) -> int:
    """The HTTP status of an error (or error class): its nearest class in `STATUS_BY_ERROR`."""
    cls = exc if isinstance(exc, type) else type(exc)
    for base in cls.__mro__:
        if base in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[base]
    return 500


def code_for(cls: type[Exception]) -> str:
    """The stable code of an error class: `CODE_BY_ERROR`, else its name in snake_case."""
    return CODE_BY_ERROR.get(cls) or _CAMEL.sub("_", cls.__name__).lower()


def _field_for(exc: Exception) -> str | None:
    field = getattr(exc, "field", None)
    if isinstance(field, str):
        return field
    return next((f for cls, f in _FIELD_BY_ERROR.items() if isinstance(exc, cls)), None)


def error_content(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """The JSON of an `ErrorBody`."""
    return {"error": {"code": code, "message": message, "field": field}, "detail": message}


async def send_error(
    send: Send, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
) -> None:
    """Answer with an `ErrorBody` straight through ASGI ``send``, for middleware that answers
    before the app; ``headers`` are added to the JSON content type and length."""
    body = json.dumps(error_content(code, message)).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def _response(
    status: int, code: str, message: str, field: str | None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        status_code=status, content=error_content(code, message, field), headers=dict(headers or {}) or None
    )


async def _radsearch_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RadsearchError)
    status = status_for(exc)
    if isinstance(exc, StoreUnavailable):
        _log_store_unavailable(request)
    elif status >= 500:
        logger.error("%s on %s %s: %s", type(exc).__name__, request.method, request.url.path, exc)
    field = _field_for(exc)
    if field is None and isinstance(exc, BadInput) and _is_multipart(request):
        field = "file"  # an upload that cannot be used: the file part is at fault
    # a new store process opens in seconds (under one on the demo, ~5 s at 1 M points)
    headers = {"Retry-After": "2"} if isinstance(exc, StoreUnavailable) else None
    return _response(status, code_for(type(exc)), str(exc), field, headers)


class _Throttle:
    """Lets one event through per ``every_s`` seconds, and counts the ones held back."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last = -every_s
        self._held = 0
        self._lock = threading.Lock()

    def due(self) -> int | None:
        """None to stay quiet; else how many events were held back since the last one let through."""
        now = time.monotonic()
        with self._lock:
            if now - self._last < self.every_s:
                self._held += 1
                return None
            held, self._last, self._held = self._held, now, 0
            return held


_STORE_UNAVAILABLE_LOG = _Throttle(every_s=5.0)


def _log_store_unavailable(request: Request) -> None:
    # While the store's process is replaced (its end is logged once as an error) every request
    # gets a 503: a line each would bury the log under hundreds a second.
    held = _STORE_UNAVAILABLE_LOG.due()
    if held is not None:
        logger.warning(
            "503 store_unavailable on %s %s: the store's process is being replaced (%d more such "
            "answers since the last line like this)",
            request.method,
            request.url.path,
            held,
        )


def _is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = getattr(exc, "code", None) or _CODE_BY_STATUS.get(exc.status_code, "http_error")
    field = getattr(exc, "field", None)
    message = str(exc.detail)
    allowed = (exc.headers or {}).get("Allow")
    if exc.status_code == 405 and allowed:  # the method, not the path, was wrong: say which ones work
        message = f"method not allowed: this path takes {allowed}"
    return _response(exc.status_code, code, message, field, exc.headers)


_LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})


def _field_path(loc: Sequence[Any]) -> str | None:
    parts = [str(part) for part in loc]
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:]
    return ".".join(parts) or None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model ``annotation`` names, itself or inside ``X | None``, ``list[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for m in map(_model_in, typing.get_args(annotation)) if m is not None), None)


def _unknown_field(request: Request, loc: Sequence[Any]) -> str:
    """An unknown body field, named, with the field of its model it is closest to where there is
    one (``'limt' (did you mean 'limit'?)``): the model is the route's body model, walked along
    ``loc``."""
    named = repr(_field_path(loc) or "?")
    body_field = getattr(request.scope.get("route"), "body_field", None)
    model = _model_in(getattr(getattr(body_field, "field_info", None), "annotation", None))
    if not loc or loc[0] != "body" or model is None:
        return named
    for part in loc[1:-1]:
        if isinstance(part, int):  # an item of a list: the list's model still applies
            continue
        fields = {field.alias or name: field for name, field in model.model_fields.items()}
        if (model := _model_in(getattr(fields.get(str(part)), "annotation", None))) is None:
            return named
    return named + did_you_mean(
        str(loc[-1]), [field.alias or name for name, field in model.model_fields.items()]
    )


def _describe(errors: Iterable[Mapping[str, Any]]) -> str:
    described = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        if error.get("type") == "json_invalid":
            described.append(
                f"body: {error.get('msg', 'invalid JSON')} at position {loc[-1] if loc else '?'}"
            )
            continue
        where = ".".join(loc[1:]) if loc and loc[0] in _LOCATIONS else ".".join(loc)
        prefix = f"{where} ({loc[0]})" if where else (loc[0] if loc else "request")
        described.append(f"{prefix}: {rule_broken(error)}")
    return "; ".join(described[:10]) + (f" (and {len(described) - 10} more)" if len(described) > 10 else "")


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Request validation without the rejected values (FastAPI's default body carries each one as
    ``input``: a DICOM sent as a text field would come back whole, patient name included).

    A malformed ``filter`` is 400 ``invalid_filter``; a field the model does not take is 400
    ``unknown_field`` (nothing a caller sends is ignored); anything else 422 ``validation_error``.
    """
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    in_filter = [e for e in errors if "filter" in [str(p) for p in e.get("loc", ())[1:2]]]
    unknown = [e for e in errors if e.get("type") == "extra_forbidden"]
    if in_filter:
        unknown_in_filter = [str(e["loc"][2]) for e in in_filter if e.get("type") == "extra_forbidden"]
        message = (
            str(unknown_filter_fields(unknown_in_filter))
            if unknown_in_filter
            else "invalid filter: " + _describe(in_filter)
        )
        return _response(400, code_for(InvalidFilter), message, "filter")
    if unknown:
        names = ", ".join(_unknown_field(request, e.get("loc", ())) for e in unknown[:10])
        message = f"unknown field {names}: the request schema does not take it"
        return _response(400, "unknown_field", message, _field_path(unknown[0].get("loc", ())))
    field = None
    if errors and errors[0].get("type") != "json_invalid":
        field = _field_path(errors[0].get("loc", ()))
    return _response(422, "validation_error", _describe(errors), field)


def install_exception_handlers(app: FastAPI) -> None:
    """Every error the app answers, in the `ErrorBody` shape."""
    app.add_exception_handler(RadsearchError, _radsearch_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)


_STATUS_TEXT: dict[int, str] = {
    400: "The request is malformed (a field, form part or query parameter it does not take, a bad filter)",
    401: "Missing or invalid credentials",
    403: "The credentials lack the role this operation needs",
    404: "Not found",
    409: "Conflict with the current state",
    410: "Gone: the resource is withheld for good",
    413: "The request body or upload is too large",
    415: "The upload's format is not supported",
    422: "A field breaks its rule (type, bounds, pattern); the value is never echoed",
    424: "A dependency the operation needs (e.g. encoder weights) cannot be had",
    429: "Too many requests",
    502: "An upstream service (S3 endpoint, source object) failed",
    503: "Temporarily unavailable",
    507: "The store's disk is below its free-space reserve",
}


def error_responses(*errors: type[Exception] | int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that can raise ``errors`` (error classes, or bare statuses):
    one entry per status, `ErrorBody` as its model, the codes it carries in its description."""
    codes: dict[int, list[str]] = {}
    for error in errors:
        if isinstance(error, int):
            codes.setdefault(error, [])
            continue
        status = status_for(error) if issubclass(error, RadsearchError) else 400
        codes.setdefault(status, []).append(code_for(error))
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted(codes):
        text = _STATUS_TEXT.get(status, "Error")
        listed = sorted(set(codes[status]))
        out[status] = {
            "model": ErrorBody,
            "description": text + (f" (codes: {', '.join(listed)})" if listed else ""),
        }
    return out
