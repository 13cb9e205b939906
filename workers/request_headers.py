"""The request id travels with the Celery messages: a task published while a request id is set
(an API request, or a task that has one) carries it in a header, and the task runs with it set."""

from __future__ import annotations

from contextvars import Token
from typing import Any

from celery import signals

from core.request_context import REQUEST_ID

__all__ = ["install_request_id_propagation"]

_HEADER = "radsearch_request_id"
_tokens: dict[str, Token[str | None]] = {}


def _stamp(headers: dict[str, Any] | None = None, **_: Any) -> None:
    request_id = REQUEST_ID.get()
    if headers is not None and request_id:
        headers[_HEADER] = request_id


def _enter(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    request_id = getattr(task.request, _HEADER, None) if task is not None else None
    if task_id is not None:
        _tokens[task_id] = REQUEST_ID.set(request_id if isinstance(request_id, str) else None)


def _leave(task_id: str | None = None, **_: Any) -> None:
    token = _tokens.pop(task_id, None) if task_id is not None else None
    if token is not None:
        REQUEST_ID.reset(token)


def install_request_id_propagation() -> None:
    """Connect the publish and run signals (once per process, whatever the number of apps)."""
    signals.before_task_publish.connect(_stamp, weak=False, dispatch_uid="radsearch-request-id-stamp")
    signals.task_prerun.connect(_enter, weak=False, dispatch_uid="radsearch-request-id-enter")
    signals.task_postrun.connect(_leave, weak=False, dispatch_uid="radsearch-request-id-leave")
