"""The job records every job store keeps: what a job is (`JobSpec`), where it stands (`JobRecord`:
one state machine, `JobState`), its counters (`JobCounts`, the one list of their names), what only
the store's owner knows of the jobs it runs itself (`JobMeta`), and a dead-lettered batch
(`DeadLetter`).

The state machine, the same in every store (`core.jobs.store.JobStore`)::

    queued --mark_planning--> planning --plan_done / complete_batch--> running --finish--> done
    (any state) --fail--> failed

``finish`` makes a job done only once it is planned and every planned batch is counted, and the
caller finishes it only once its collections are indexed: a ``done`` job's collections are
searchable at full speed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "COUNTERS",
    "DeadLetter",
    "FINAL_STATES",
    "JOB_STATE_LOST",
    "JobCounts",
    "JobKind",
    "JobMeta",
    "JobRecord",
    "JobSpec",
    "JobState",
    "OwnerJobKind",
    "check_counters",
    "zero_counts",
]

JOB_STATE_LOST = (
    "job state lost (the job store was reset: Redis restarted without persistence, or was flushed); "
    "run `radsearch reconcile SOURCE --collection NAME` to repair the collections it wrote"
)


class JobKind(StrEnum):
    INGEST = "ingest"
    RECONCILE = "reconcile"
    EVENTS = "events"
    REQUEUE = "requeue"
    #: Owner-run only: embed what another collection (or a source) knows into a collection.
    BACKFILL = "backfill"


class JobState(StrEnum):
    QUEUED = "queued"
    PLANNING = "planning"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


FINAL_STATES = frozenset({JobState.DONE, JobState.FAILED})

OwnerJobKind = Literal["ingest", "backfill"]


# A job's counters: their names here are the only list of them (`COUNTERS`), and the API's schema
# (no docstring: it would become the schema's description).
class JobCounts(BaseModel):
    listed: int
    queued: int
    objects_done: int
    indexed_frames: int
    skipped_unchanged: int
    relabelled: int = 0
    labels_kept: int = 0
    failed: int
    quarantined: int
    vanished: int
    deleted: int
    dead_lettered: int
    batches_total: int
    batches_done: int
    manifest_unmatched: int = 0
    template_unmatched: int = 0
    modality_conflicts: int = 0


COUNTERS: tuple[str, ...] = tuple(JobCounts.model_fields)


def zero_counts() -> dict[str, int]:
    """Every counter at zero, in `COUNTERS` order."""
    return dict.fromkeys(COUNTERS, 0)


def check_counters(names: Iterable[str]) -> None:
    """`ValueError` naming a counter that `JobCounts` does not have (a misspelt counter would
    otherwise be counted where nobody reads it)."""
    unknown = sorted(set(names) - set(COUNTERS))
    if unknown:
        raise ValueError(f"unknown job counter(s): {', '.join(unknown)}")


class JobSpec(BaseModel):
    """What a job ingests: a source, the collections it fills, and the label options.

    ``manifest`` is a reference (local path or ``s3://`` URI) that workers read themselves; tasks
    never carry its content. ``encoder`` creates missing collections with that encoder.
    ``accept_burned_in`` indexes objects with burned-in annotation instead of quarantining them.
    Reconcile (and an owner ingest with ``prune``): ``dry_run`` only reports the diff, deletions of
    more than ``max_delete_fraction`` of a collection's objects (or of an empty listing's) are
    refused unless ``force``.
    """

    model_config = ConfigDict(frozen=True)

    source: str
    collections: tuple[str, ...]
    manifest: str | None = None
    path_template: str | None = None
    skip_unchanged: bool = True
    encoder: str | None = None
    batch_size: int | None = None
    accept_burned_in: bool = False
    prune: bool = False
    dry_run: bool = False
    max_delete_fraction: float = 0.1
    force: bool = False
    #: The source's stable name (payload ``source``); None: the folder's name or bucket/prefix.
    source_name: str | None = None
    #: The store the job writes (`core.store_identity`): workers of another store, sharing this
    #: Redis database, leave it to its own. None (a job of an earlier version): any worker runs it.
    store: str | None = None

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        """The spec `to_json` wrote; keys it does not know (a newer writer's) are left out."""
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.model_fields})


class JobRecord(BaseModel):
    """A job as the API and the command line show it, whichever store keeps it.

    ``executor`` owner: a job the store's owner runs itself (`core.jobs.records.JobMeta`), with
    its ``summary`` once done, the HTTP status of its error (``error_status``) once failed, and how
    often a restart ran it again (``resumed``)."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: JobKind
    state: JobState
    spec: JobSpec
    created_at: float
    started_at: float | None
    finished_at: float | None
    counts: dict[str, int]
    planned: bool
    error: str | None = None
    drift: dict[str, Any] | None = None
    failed_items: list[dict[str, str]] = Field(default_factory=list)
    executor: Literal["celery", "owner"] = "celery"
    summary: dict[str, Any] | None = None
    error_status: int | None = None
    resumed: int = 0

    @field_validator("counts", mode="before")
    @classmethod
    def _every_counter(cls, value: Mapping[str, Any]) -> dict[str, int]:
        return {name: int(value.get(name) or 0) for name in COUNTERS}

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def seconds(self) -> float | None:
        """Wall-clock seconds from the first work on the job to its end (or now)."""
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else time.time()
        return max(end - self.started_at, 0.0)

    def throughput(self) -> dict[str, float | None]:
        seconds = self.seconds
        if not seconds:
            return {"objects_per_s": None, "frames_per_s": None}
        return {
            "objects_per_s": round(self.counts["objects_done"] / seconds, 3),
            "frames_per_s": round(self.counts["indexed_frames"] / seconds, 3),
        }

    def to_dict(self, *, with_items: bool = True) -> dict[str, Any]:
        """The record's public shape (``radsearch jobs show --json``); an owner-run job's adds
        ``executor``, ``summary``, ``error_status`` and ``resumed``."""

        def iso(ts: float | None) -> str | None:
            return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")

        spec = self.spec
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind.value,
            "state": self.state.value,
            "source": spec.source,
            "collections": list(spec.collections),
            "options": {
                "manifest": spec.manifest,
                "path_template": spec.path_template,
                "skip_unchanged": spec.skip_unchanged,
                "encoder": spec.encoder,
                "batch_size": spec.batch_size,
                "accept_burned_in": spec.accept_burned_in,
                "prune": spec.prune,
                "dry_run": spec.dry_run,
                "max_delete_fraction": spec.max_delete_fraction,
                "force": spec.force,
                "source_name": spec.source_name,
            },
            "counts": dict(self.counts),
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "throughput": self.throughput(),
            "error": self.error,
            "drift": self.drift,
        }
        if with_items:
            out["failed_items"] = list(self.failed_items)
        if self.executor == "owner":
            out.update(
                executor="owner", summary=self.summary, error_status=self.error_status, resumed=self.resumed
            )
        return out


class JobMeta(BaseModel):
    """What only the owner knows of a job it runs: what it is, the collections it writes, how to
    run it again (``resume``), its summary or error status, and how often a restart resumed it."""

    kind: OwnerJobKind
    targets: tuple[str, ...]
    summary: dict[str, Any] | None = None
    error_status: int | None = None
    resume: dict[str, Any] = Field(default_factory=dict)
    resumed: int = 0

    def to_json(self) -> str:
        # not sorted: the summary keeps its keys in the order the job wrote them
        return json.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_json(cls, text: str) -> JobMeta:
        data = json.loads(text)
        data["targets"] = tuple(data.get("targets") or ())
        return cls(**{k: v for k, v in data.items() if k in cls.model_fields})

    def apply(self, record: JobRecord) -> JobRecord:
        """``record`` as an owner-run job: its kind, summary, error status and resumptions."""
        return record.model_copy(
            update={
                "kind": JobKind(self.kind),
                "executor": "owner",
                "summary": self.summary,
                "error_status": self.error_status,
                "resumed": self.resumed,
            }
        )


@dataclass(frozen=True)
class DeadLetter:
    """A batch that ran out of retries (or deliveries): enough to replay it, no pixels."""

    job_id: str
    batch_id: str
    spec: JobSpec
    keys: list[str]
    error: str
    attempts: int
    at: float
    task: str = "embed"  # or "delete"

    def to_json(self) -> str:
        data = asdict(self)
        data["spec"] = json.loads(self.spec.to_json())
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DeadLetter:
        data = json.loads(text)
        data["spec"] = JobSpec.from_json(json.dumps(data["spec"]))
        return cls(**data)
