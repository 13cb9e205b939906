"""The app's effective routes, for code that runs outside FastAPI's router (the body-limit and
access middlewares, the OpenAPI builder, the unknown-query check): routes flattened with their full
paths and the dependants that actually run, and a per-request route lookup.

This reads FastAPI internals (``Dependant`` trees, the route contexts of lazily composed routers),
which is why pyproject pins FastAPI to the range the suite has run against.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import params
from fastapi._compat import field_annotation_is_sequence
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute, Match
from starlette.types import Message, Scope, Send

__all__ = [
    "RouteInfo",
    "RouteTable",
    "StatusRecorder",
    "is_upload_route",
    "iter_routes",
    "single_valued",
    "walk_dependants",
]


def walk_dependants(dependant: Dependant) -> Iterator[Dependant]:
    """``dependant`` and all its sub-dependencies, depth first."""
    yield dependant
    for sub in dependant.dependencies:
        yield from walk_dependants(sub)


def single_valued(route: APIRoute, where: Literal["query", "body"]) -> frozenset[str]:
    """The names of ``route``'s query parameters (or form parts) that take one value, not a list
    (computed once per route)."""
    attribute = f"_radsearch_single_{where}"
    names: frozenset[str] | None = getattr(route, attribute, None)
    if names is None:
        names = frozenset(
            param.alias
            for dep in walk_dependants(route.dependant)
            for param in (dep.query_params if where == "query" else dep.body_params)
            if not field_annotation_is_sequence(param.field_info.annotation)
        )
        setattr(route, attribute, names)
    return names


@dataclass(frozen=True)
class RouteInfo:
    """One effective route of an app: what was declared (``route``), its full path and methods,
    the dependant that actually runs (router/include-level dependencies included), a matcher."""

    route: BaseRoute
    path: str
    methods: frozenset[str]
    dependant: Dependant | None
    matcher: Any

    def matches(self, scope: Scope) -> bool:
        match, _ = self.matcher.matches(scope)
        return bool(match == Match.FULL)


def iter_routes(routes: Sequence[BaseRoute]) -> list[RouteInfo]:
    """The app's routes flattened: FastAPI composes included routers lazily (``app.routes`` holds
    router placeholders), and its route contexts carry each route's effective path and dependant."""
    out: list[RouteInfo] = []
    for ctx in iter_route_contexts(routes):
        original: Any = getattr(ctx, "original_route", ctx)
        out.append(
            RouteInfo(
                route=original,
                path=str(getattr(ctx, "path", "")),
                methods=frozenset(getattr(ctx, "methods", None) or ()),
                dependant=getattr(ctx, "dependant", None),
                matcher=ctx,
            )
        )
    return out


def is_upload_route(info: RouteInfo) -> bool:
    """Whether the route takes a file upload (any ``File`` parameter, in any dependency)."""
    if info.dependant is None:
        return False
    return any(
        isinstance(field.field_info, params.File)
        for dep in walk_dependants(info.dependant)
        for field in dep.body_params
    )


class RouteTable:
    """The route that fully matches a request scope (path and method), or None; for middleware.
    The routes are flattened once, on the first request (by then the app's route list is
    complete), and each (method, path) is matched once: two middlewares match every request, and
    a linear scan of the route list costs ~0.1 ms each time."""

    _CACHE_MAX = 4096  # paths carry collection names and ids: bounded, cleared when full

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self._routes = routes
        self._infos: list[RouteInfo] | None = None
        self._matched: dict[tuple[str, str, str], RouteInfo | None] = {}

    def match(self, scope: Scope) -> RouteInfo | None:
        key = (scope.get("method", ""), scope.get("root_path", ""), scope.get("path", ""))
        try:
            return self._matched[key]
        except KeyError:
            pass
        if self._infos is None:
            self._infos = iter_routes(self._routes)
        found = next((info for info in self._infos if info.matches(scope)), None)
        if len(self._matched) >= self._CACHE_MAX:
            self._matched.clear()
        self._matched[key] = found
        return found


class StatusRecorder:
    """An ASGI ``send`` that passes messages on and keeps the response's status (500 until one is
    sent), for middleware that acts on it after the app ran."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 500

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        await self.send(message)
