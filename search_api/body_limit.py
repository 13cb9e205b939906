"""Pure ASGI middleware: request body limits enforced while the body streams in.

Starlette and uvicorn put no cap on request bodies (multipart file parts spool to disk without a
total limit; ``request.body()`` is unbounded), so the limit is checked here, below every parser:

- a declared ``Content-Length`` above the route's limit is answered 413 before any body is read;
- otherwise bytes are counted as they arrive (chunked bodies have no length) and the 413 goes out
  the moment the count passes the limit; the rest of the body is never read.

Limits are per route: image-upload routes (a ``File`` parameter) get the large upload limit, every
other route the small JSON limit. A reverse proxy in front should enforce the same limits.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from search_api.errors import send_error

__all__ = ["BodyLimitMiddleware", "BodyTooLarge"]


class BodyTooLarge(Exception):
    """Raised into the app's ``receive`` once the 413 has been sent; the middleware swallows it."""


def _content_length(scope: Scope) -> int | None:
    """The declared length; -1 for a malformed or repeated header."""
    values = [value for name, value in scope.get("headers", []) if name == b"content-length"]
    if not values:
        return None
    if len(values) > 1 or not values[0].isdigit():
        return -1
    return int(values[0])


_CLOSE = {"connection": "close"}  # the rest of a refused body is never read


class BodyLimitMiddleware:
    """Answer 413 for request bodies larger than ``limit_for(scope)`` bytes, while streaming."""

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _content_length(scope)
        if declared == -1:
            await send_error(
                send, 400, "malformed_content_length", "malformed Content-Length", headers=_CLOSE
            )
            return
        if declared is not None and declared > limit:
            await send_error(
                send, 413, "body_too_large", f"request body larger than {limit} bytes", headers=_CLOSE
            )
            return

        received = 0
        rejected = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, rejected
            if rejected:
                raise BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    if not started:
                        await send_error(
                            send,
                            413,
                            "body_too_large",
                            f"request body larger than {limit} bytes",
                            headers=_CLOSE,
                        )
                        rejected = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if rejected:
                # The 413 is already out; whatever the app makes of the aborted body is dropped.
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            # After the 413 the request is over: frameworks report the aborted body in their own
            # ways (BodyTooLarge, a wrapped parse error, an exception group); none of it matters.
            if not rejected:
                raise
