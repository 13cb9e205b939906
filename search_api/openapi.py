"""The app's OpenAPI document, made exact: every operation declares its real error statuses with
`ErrorBody`, uploads are ``format: binary``, bounds set in the settings appear in the schema.

FastAPI derives most of the document from the routes; what it cannot know is added here, once,
when the document is first built:

- errors every route of a kind can answer (from its access policy and parameters): 400 (an unknown
  query parameter or field, a malformed ``Content-Length``), 401/403 (routes with a role), 404
  (routes on ``{name}``), 413 (routes with a body), 422 (routes with parameters);
- ``format: binary`` on file parts (FastAPI writes ``contentMediaType``, which generated clients
  read as text);
- ``limit`` maxima and the upload size limit from the settings.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

from core.config import Settings
from search_api.deps import get_collection
from search_api.errors import ErrorBody, error_responses
from search_api.routing import RouteInfo, iter_routes, walk_dependants
from search_api.schemas import JobSummary
from search_api.security import RoleRequirement, route_policy

__all__ = ["install_openapi", "route_errors"]

_REF = "#/components/schemas/{model}"
_METHODS = ("get", "put", "post", "delete", "patch")


def route_errors(info: RouteInfo) -> list[int]:
    """The error statuses any route like ``info`` can answer, whatever its handler does."""
    statuses = {400}  # unknown query parameters; a malformed Content-Length
    if isinstance(route_policy(info), RoleRequirement):
        statuses |= {401, 403}
    if info.dependant is not None:
        deps = list(walk_dependants(info.dependant))
        if any(d.call is get_collection for d in deps):
            statuses.add(404)
        if any(d.body_params for d in deps):
            statuses |= {413, 422}
        if any(d.path_params or d.query_params or d.header_params or d.cookie_params for d in deps):
            statuses.add(422)
    return sorted(statuses)


def _add_components(components: dict[str, Any], *models: type[BaseModel]) -> None:
    """Models the document refers to without FastAPI seeing them (the error body, job summaries)."""
    for model in models:
        schema = model.model_json_schema(ref_template=_REF, mode="serialization")
        for name, definition in schema.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components.setdefault(model.__name__, schema)


def _declare_errors(document: dict[str, Any], infos: list[RouteInfo]) -> None:
    for info in infos:
        if not isinstance(info.route, APIRoute) or not info.route.include_in_schema:
            continue
        for method in info.methods:
            operation = document["paths"].get(info.path, {}).get(method.lower())
            if operation is None:
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for status, declared in error_responses(*route_errors(info)).items():
                existing = responses.get(str(status))
                if existing is not None and "HTTPValidationError" not in str(existing):
                    continue
                responses[str(status)] = {
                    "description": declared["description"],
                    "content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorBody")}}},
                }


def _binary_uploads(schema: Any) -> None:
    """``format: binary`` wherever FastAPI wrote a file part as ``contentMediaType``."""
    if isinstance(schema, dict):
        if schema.get("type") == "string" and schema.get("contentMediaType") == "application/octet-stream":
            del schema["contentMediaType"]
            schema["format"] = "binary"
        for value in schema.values():
            _binary_uploads(value)
    elif isinstance(schema, list):
        for value in schema:
            _binary_uploads(value)


def _apply_settings(document: dict[str, Any], settings: Settings) -> None:
    """Bounds the settings decide: ``limit`` ≤ ``max_limit`` wherever a search takes one, the
    upload limit in each file part's description."""
    max_limit = settings.api.max_limit
    megabytes = settings.api.max_upload_bytes / (1024 * 1024)
    for name, component in document.get("components", {}).get("schemas", {}).items():
        properties = component.get("properties", {})
        searches = name == "SearchQuery" or name.startswith("Body_")
        if searches and "limit" in properties and "maximum" not in properties["limit"]:
            properties["limit"]["maximum"] = max_limit
        for prop in properties.values():
            # a file part, or a repeatable one (an array of them)
            if prop.get("format") == "binary" or (
                prop.get("type") == "array" and prop.get("items", {}).get("format") == "binary"
            ):
                prop["description"] = (
                    f"{prop.get('description', 'The file')} (at most {settings.api.max_upload_bytes} bytes, "
                    f"{megabytes:g} MiB)"
                )


def _drop_unused(document: dict[str, Any]) -> None:
    schemas = document.get("components", {}).get("schemas", {})
    text = str(document["paths"])
    if "HTTPValidationError" not in text:
        schemas.pop("HTTPValidationError", None)
        if "#/components/schemas/ValidationError" not in str(schemas):
            schemas.pop("ValidationError", None)


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Build the app's OpenAPI document with FastAPI, then complete it (see the module doc)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        components = document.setdefault("components", {}).setdefault("schemas", {})
        _add_components(components, ErrorBody, JobSummary)
        _declare_errors(document, iter_routes(app.routes))
        _binary_uploads(document)
        _apply_settings(document, settings)
        _drop_unused(document)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
