"""The FastAPI search service: routes, dependencies, schemas and the web page."""

from search_api.app import create_app

__all__ = ["create_app"]
