"""The JSON search's direct path: the plain searches answered without FastAPI's request machinery.

A plain search (``POST /v1/collections/{name}/search`` with a JSON body naming a point or a
vector, without groups, examples or text) is most of what a search API serves, and FastAPI's
routing, dependency solving and response validation took about a third of the API's CPU per
search (issue 18's profile). This middleware, the innermost of the app's own, answers those with
the route's own code (`search_api.routes.search.find_json` and `respond`): the same request model,
the same lookups, the same response model and JSON, the same exception handlers.

Everything else goes on to FastAPI untouched, with the body replayed where it was read: a query
string, another content type, a body that does not validate (FastAPI then answers its own 400 or
422), a search that is not plain, a request the access middleware left without a principal. The
errors of the searches it takes (no such collection or point, a bad filter, a limit over the
maximum) are answered by the app's own exception handlers, as FastAPI would.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import RadsearchError
from search_api.deps import check_limit, get_collection, stored_values_of
from search_api.routes.search import SEARCH_ROLE, find_json, is_plain, respond, search_mode
from search_api.schemas import SearchQuery, SearchResponse, parse_filter
from search_api.security import Principal, authorize

__all__ = ["DirectSearchMiddleware"]

_SEARCH_PATH = re.compile(r"/v1/collections/([^/]+)/search")
_ROLES = frozenset({SEARCH_ROLE})


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return False


async def _read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    """The whole body, and the messages it came in (to replay to FastAPI)."""
    messages = []
    chunks = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return b"", messages  # the client went away: FastAPI sees it as before
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), messages


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` that first gives back ``messages``, already read."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


class DirectSearchMiddleware:
    """Answer plain JSON searches directly; pass everything else on (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["query_string"]
            or not _is_json(scope)
            or (matched := _SEARCH_PATH.fullmatch(scope["path"])) is None
        ):
            await self.app(scope, receive, send)
            return
        body, messages = await _read_body(receive)
        replay = _replaying(messages, receive)
        principal: Principal | None = scope.get("state", {}).get("principal")
        name = matched.group(1)
        try:
            query = SearchQuery.model_validate(json.loads(body))
        except Exception:  # any body FastAPI refuses, it refuses in its own words (400 or 422)
            query = None
        # text searches wait for the encoder, where FastAPI's overhead does not count
        if principal is None or query is None or query.text is not None or not is_plain(query):
            await self.app(scope, replay, send)
            return
        scope["path_params"] = {"name": name}
        request = Request(scope, replay)
        try:
            authorize(principal, _ROLES)  # as the route's own dependency does
            await self._search(request, name, query, send)
        except (RadsearchError, RequestValidationError, HTTPException) as exc:
            await self._answer_error(request, exc, replay, send)

    async def _search(self, request: Request, name: str, query: SearchQuery, send: Send) -> None:
        state = request.app.state
        entry = await get_collection(name, state.catalog)
        check_limit(query.limit, state.settings, loc=("body", "limit"))
        search_filter = parse_filter(query.filter)
        started = time.perf_counter()
        found = await find_json(
            query=query,
            index=state.index,
            entry=entry,
            search_filter=search_filter,
            vector=query.vector,
            stored=stored_values_of(state),
        )
        response = await respond(request, entry, found, started, search_mode(query))
        # FastAPI's own serialisation of a response model (by alias), and its headers
        body = SearchResponse.__pydantic_serializer__.to_json(response, by_alias=True)
        headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer_error(self, request: Request, exc: Exception, receive: Receive, send: Send) -> None:
        """The app's own handler for ``exc`` (looked up by class, as Starlette does)."""
        handlers: dict[Any, Callable[[Request, Exception], Awaitable[Any]]] = request.app.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                response = await handlers[cls](request, exc)
                await response(request.scope, receive, send)
                return
        raise exc
