"""Request dependencies: settings, index, catalog and the inference limiter from ``app.state``."""

from __future__ import annotations

import inspect
import re
import uuid
from typing import Annotated

from anyio import CapacityLimiter
from fastapi import Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.datastructures import State

from core.catalog import Catalog, CollectionEntry
from core.config import Settings
from core.errors import CollectionNotFound, ConfigError
from core.filter_warnings import StoredValues
from core.index.base import VectorIndex, check_collection_name
from core.payload import FILTER_FIELDS, SearchFilter
from core.suggest import named_with_suggestions
from search_api.errors import ApiError, RepeatedField, UnknownField
from search_api.offload import on_index
from search_api.routing import single_valued, walk_dependants
from search_api.schemas import parse_filter
from workers.client import WorkerGateway

__all__ = [
    "CatalogDep",
    "CollectionDep",
    "FacetFilterDep",
    "IndexDep",
    "InferenceLimiterDep",
    "SettingsDep",
    "StoredValuesDep",
    "check_job_id",
    "check_limit",
    "check_name",
    "get_collection",
    "reject_unknown_query",
    "stored_values_of",
    "worker_gateway",
]


# The getters are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a worker
# thread, one hop (~0.1 ms of CPU) per dependency per request, for what is an attribute read.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_index(request: Request) -> VectorIndex:
    index: VectorIndex = request.app.state.index
    return index


async def get_catalog(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.catalog
    return catalog


async def get_inference_limiter(request: Request) -> CapacityLimiter:
    limiter: CapacityLimiter = request.app.state.inference_limiter
    return limiter


def worker_gateway(request: Request) -> WorkerGateway:
    """The app's Celery/Redis gateway, made on first use (apps without workers never connect)."""
    gateway: WorkerGateway | None = getattr(request.app.state, "workers", None)
    if gateway is None:
        gateway = WorkerGateway(request.app.state.settings)
        request.app.state.workers = gateway
    return gateway


def stored_values_of(state: State) -> StoredValues:
    """The app's cache of stored filter values (for search warnings), made on first use."""
    stored: StoredValues | None = getattr(state, "stored_values", None)
    if stored is None:
        stored = state.stored_values = StoredValues()
    return stored


async def get_stored_values(request: Request) -> StoredValues:
    return stored_values_of(request.app.state)


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoredValuesDep = Annotated[StoredValues, Depends(get_stored_values)]
IndexDep = Annotated[VectorIndex, Depends(get_index)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
InferenceLimiterDep = Annotated[CapacityLimiter, Depends(get_inference_limiter)]


def check_name(name: str) -> None:
    """404 (`CollectionNotFound`) for a collection name the catalog could never hold: it cannot
    exist, and never reaches the store."""
    try:
        check_collection_name(name, "a collection name")
    except ConfigError as exc:
        # not echoed: a name the catalog could never hold is whatever the caller sent
        raise CollectionNotFound(f"no such collection ({exc})") from None


def check_job_id(job_id: str) -> None:
    """404 for a job id that is not a UUID (no job can have it)."""
    try:
        uuid.UUID(job_id)
    except ValueError:
        raise ApiError(404, "job_not_found", "job not found", field="job_id") from None


_SAFE_NAME = re.compile(r"[^\w.\-\[\]]")


def _query_names(route: APIRoute) -> frozenset[str]:
    """The query parameters ``route`` takes, worked out once and kept on the route itself."""
    names: frozenset[str] | None = getattr(route, "_radsearch_query_names", None)
    if names is None:
        names = frozenset(
            param.alias for dep in walk_dependants(route.dependant) for param in dep.query_params
        )
        route._radsearch_query_names = names  # type: ignore[attr-defined]
    return names


async def reject_unknown_query(request: Request) -> None:
    """400 (`UnknownField`) for a query parameter the route does not take, and (`RepeatedField`)
    for one that takes one value given several times: nothing a caller sends is silently ignored
    (``?modalty=CT`` would otherwise list everything, ``?limit=3&limit=50`` would count one of
    them). Names are echoed made safe and short, never values. An app-wide dependency."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    unknown = sorted(set(request.query_params) - _query_names(route))
    if unknown:
        names = [_SAFE_NAME.sub("_", name)[:40] for name in unknown[:5]]
        taken = sorted(_query_names(route))
        takes = ", ".join(taken) or "no query parameters"
        named = named_with_suggestions(names, taken)
        raise UnknownField(names[0], f"unknown query parameter {named}; this operation takes {takes}")
    for name in sorted(set(request.query_params) & single_valued(route, "query")):
        if (times := len(request.query_params.getlist(name))) > 1:
            raise RepeatedField(name, f"query parameter {name!r} given {times} times; give it once")


async def get_collection(name: str, catalog: CatalogDep) -> CollectionEntry:
    """The catalog entry of the ``{name}`` path parameter; 404 for unknown collections."""
    check_name(name)
    entry = catalog.known(name)
    return entry if entry is not None else await on_index(catalog.index, catalog.get, name)


CollectionDep = Annotated[CollectionEntry, Depends(get_collection)]


async def get_facet_filter(**values: list[str] | None) -> SearchFilter | None:
    """A filter from repeated query parameters (``?modality=CT&modality=MR&anatomy=chest``), one
    parameter per filter field (`core.payload.FILTER_FIELDS`: the signature below)."""
    return parse_filter(values)


# FastAPI reads a dependency's query parameters from its signature: one per filter field.
_FilterValues = Annotated[list[str] | None, Query()]
get_facet_filter.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=_FilterValues)
        for name in FILTER_FIELDS
    ],
    return_annotation=SearchFilter | None,
)


FacetFilterDep = Annotated[SearchFilter | None, Depends(get_facet_filter)]


def check_limit(limit: int, settings: Settings, *, loc: tuple[str, ...]) -> None:
    """Refuse a ``limit`` above ``settings.api.max_limit`` with FastAPI's own 422 shape."""
    max_limit = settings.api.max_limit
    if limit > max_limit:
        raise RequestValidationError(
            [
                {
                    "type": "less_than_equal",
                    "loc": loc,
                    "msg": f"Input should be less than or equal to {max_limit}",
                    "input": limit,
                    "ctx": {"le": max_limit},
                }
            ]
        )
