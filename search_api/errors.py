"""Map radsearch's exception tree to HTTP at the API edge; bodies are ``{"detail": "<message>"}``.

Core messages name the file or field at fault and never carry patient-identifying values, so they
are passed through as the detail.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

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
    TooLarge,
    UnsupportedFormat,
    UpstreamUnreachable,
    WeightsUnavailable,
)

__all__ = [
    "STATUS_BY_ERROR",
    "ObjectGone",
    "ObjectQuarantined",
    "UpstreamUnavailable",
    "install_exception_handlers",
    "status_for",
]

logger = logging.getLogger(__name__)


class UpstreamUnavailable(RadsearchError):
    """A point's source object cannot be fetched or decoded (thumbnails): the store, not the client."""


class ObjectGone(RadsearchError):
    """A point's source object no longer exists (deleted from the archive): no pixels to serve."""


class ObjectQuarantined(RadsearchError):
    """A point's source object is quarantined now (burned-in annotation) and its collection did not
    accept burned-in objects: its pixels are not served."""


# Most specific first: the first class in an error's MRO found here decides.
STATUS_BY_ERROR: dict[type[RadsearchError], int] = {
    CollectionNotFound: 404,
    PointNotFound: 404,
    CollectionExists: 409,
    DeletionRefused: 409,
    ObjectGone: 404,
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
    UpstreamUnavailable: 502,
}


def status_for(exc: RadsearchError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


async def _radsearch_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RadsearchError)
    status = status_for(exc)
    if status >= 500:
        logger.error("%s on %s %s: %s", type(exc).__name__, request.method, request.url.path, exc)
    return JSONResponse(status_code=status, content={"detail": str(exc)})


async def _validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 without the rejected values: its default body carries each one as ``input``
    (a DICOM sent as a text field would come back whole, patient name included), so the body
    names the field (``loc``) and the rule (``type``, ``msg``) only."""
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"type": error.get("type"), "loc": list(error.get("loc", ())), "msg": error.get("msg")}
        for error in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": detail})


def install_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RadsearchError, _radsearch_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
