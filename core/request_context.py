"""The request id that ties a log line to the HTTP request, the job and the worker task it came from.

The API takes a client's ``X-Request-ID`` (or makes one), the Celery messages a task publishes carry
it in a header, and every log record gets it as ``request_id`` (`RequestIdFilter`).
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

__all__ = ["REQUEST_ID", "RequestIdFilter", "accept_request_id"]

REQUEST_ID: ContextVar[str | None] = ContextVar("radsearch_request_id", default=None)

# A client's id is kept only if it is short and plain: it goes into every log line.
_PLAIN_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def accept_request_id(offered: str | None) -> str:
    """``offered`` if it is a plain id of at most 64 characters, else a new random one."""
    if offered and _PLAIN_ID.match(offered):
        return offered
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current ``request_id`` ("-" outside a request or task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or "-"
        return True
