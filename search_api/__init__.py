"""The FastAPI search service: routes, dependencies, schemas and the web page."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search_api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # The app (FastAPI, every route, the readers) loads on first use, not with the package:
    # `radsearch keys` imports search_api.security alone and should start quickly.
    if name == "create_app":
        from search_api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
