"""Retrieval quality of a collection by the reference paper's protocol, computed by the process
that owns the store (what ``radsearch eval --collection`` sends here while a server owns it)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from core.errors import ConfigError
from evaluation.protocol import EvalOptions
from evaluation.report import json_safe
from evaluation.run import evaluate_collection
from search_api.deps import CollectionDep, IndexDep
from search_api.errors import error_responses
from search_api.offload import in_thread
from search_api.security import Role, require_role

router = APIRouter(prefix="/v1/collections", tags=["evaluation"], dependencies=[require_role(Role.READER)])

_Split = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class EvaluationCreate(BaseModel):
    """The options of ``radsearch eval --collection``; defaults as there."""

    model_config = ConfigDict(extra="forbid")

    ks: list[Annotated[int, Field(ge=1, le=1000)]] = Field(default=[1, 3, 5, 10], min_length=1, max_length=16)
    index_split: list[_Split] = Field(default=["train"], min_length=1, max_length=8)
    query_split: list[_Split] = Field(default=["test"], min_length=1, max_length=8)
    search: Literal["ann", "exact"] = "ann"
    compare_exact: bool = False
    hnsw_ef: int | None = Field(default=None, ge=1, le=100_000)
    exclude_same: Literal["patient", "study"] | None = None
    group_by: Literal["study", "series", "object"] | None = Field(
        default=None, description="also report the metrics over distinct groups (``grouped``)"
    )
    index_fractions: list[Annotated[float, Field(gt=0, le=1)]] = Field(default=[], max_length=16)
    seed: int = 0
    max_queries: int | None = Field(default=None, ge=1)


@router.post("/{name}/evaluate", responses=error_responses(ConfigError))
async def create_evaluation(entry: CollectionDep, body: EvaluationCreate, index: IndexDep) -> dict[str, Any]:
    """Micro/macro P@k (and mAP, majority vote, chance, per modality) with index = ``index_split``
    and queries = ``query_split``, through the collection's own search; the same JSON object as
    ``radsearch eval --json``. Takes as long as the queries do: seconds to minutes."""
    options = EvalOptions(
        ks=tuple(body.ks), fractions=tuple(body.index_fractions), seed=body.seed, max_queries=body.max_queries
    )
    evaluated = await in_thread(
        evaluate_collection,
        index,
        entry.name,
        options,
        index_splits=tuple(body.index_split),
        query_splits=tuple(body.query_split),
        search=body.search,
        compare_exact=body.compare_exact,
        hnsw_ef=body.hnsw_ef,
        exclude_same=body.exclude_same,
        group_by=body.group_by,
    )
    result: dict[str, Any] = json_safe(evaluated)
    return result
