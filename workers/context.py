"""What a worker process keeps between tasks: the store, the encoders, sources and label rules.

Built lazily on the first task in each worker *child* process, never in the parent: CUDA must not
be initialised before a fork. Threads of one process (``--pool threads``) share one
`WorkerResources`.

The store: with a Qdrant server (``store.backend`` qdrant) every worker writes to it directly. The
embedded store (edge) belongs to one process, ``radsearch serve``: workers never open it, they
reach it through its owner's API (`core.index.remote.OwnerIndex`), so any number of worker
processes fill one collection. They cannot create collections there (that loads the encoder on
the owner, an administrator's call): the API creates a job's missing collections when the job is
submitted with an encoder.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from celery import Celery

from core.catalog import Catalog
from core.config import Settings
from core.encoders.registry import resolve_spec
from core.errors import CollectionExists, CollectionNotFound
from core.index.base import VectorIndex
from core.index.factory import open_index
from core.index.remote import OwnerIndex
from core.jobs import JobSpec
from core.jobs.redis_store import RedisJobStore, job_store_for
from core.s3 import S3Location
from core.store_identity import served_store_id
from ingest.inline import IngestOptions, build_context
from ingest.labels import Labeler, PathTemplate, read_manifest
from ingest.pipeline import PipelineContext
from ingest.sources import open_source
from ingest.sources.base import Source
from workers.names import settings_of

__all__ = ["WorkerResources", "resources_for"]

log = logging.getLogger(__name__)

_LABELER_CACHE = 8
_RESOURCES_KEY = "radsearch_resources"
_resources_lock = threading.Lock()


class WorkerResources:
    """Per-process, lazily opened: index + catalog (encoders), job store, sources, labelers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self._lock = threading.RLock()
        self._index: VectorIndex | None = None
        self._catalog: Catalog | None = None
        self._store: RedisJobStore | None = None
        self._store_id: str | None = None
        self._sources: dict[tuple[str, str | None], Source] = {}
        self._labelers: OrderedDict[tuple[str, str | None, str | None], Labeler] = OrderedDict()
        self._ensured: set[str] = set()
        self.pool = ThreadPoolExecutor(
            max_workers=settings.ingest.decode_workers, thread_name_prefix="decode"
        )

    @property
    def store(self) -> RedisJobStore:
        with self._lock:
            if self._store is None:
                self._store = job_store_for(self.settings)
            return self._store

    @property
    def store_id(self) -> str:
        """The store this worker writes (`core.store_identity.served_store_id`), asked once."""
        with self._lock:
            if self._store_id is None:
                self._store_id = served_store_id(self.settings)
            return self._store_id

    @property
    def embedded(self) -> bool:
        """Whether the store is the embedded one, written by its owner (``radsearch serve``)."""
        return self.settings.store.backend == "edge"

    @property
    def catalog(self) -> Catalog:
        """Collections and encoders over the owner's API (embedded store) or the Qdrant server.

        The owner is located on first use, and again after it could not be reached: without one
        the task fails with `ServerUnavailable` (transient, retried) saying to start it."""
        with self._lock:
            if self._catalog is None:
                if self.embedded:
                    self._index = OwnerIndex.for_settings(self.settings)
                    log.info("pid %d writes the embedded store through its owner's API", self.pid)
                else:
                    self._index = open_index(self.settings, owner="worker")
                    log.info("pid %d opened the %s store", self.pid, self.settings.store.backend)
                self._catalog = Catalog(self._index, self.settings)
            return self._catalog

    def source(self, uri: str, name: str | None = None) -> Source:
        """The source at ``uri`` under the stable ``name`` (None: its default name), opened once."""
        with self._lock:
            if (uri, name) not in self._sources:
                self._sources[(uri, name)] = open_source(uri, self.settings, name=name)
            return self._sources[(uri, name)]

    def _fetch_object(self, location: S3Location) -> bytes:
        return self.source(f"s3://{location.bucket}").fetch(location.key)

    def ensure_collections(self, spec: JobSpec, *, create: bool = False) -> None:
        """Check the job's collections exist; with ``create`` (the planning step of a new job
        only) and a Qdrant server, create missing ones with the job's encoder. `CollectionNotFound`
        saying what to do otherwise: a batch, a retry or a replayed dead letter never re-creates a
        collection dropped since its job was planned."""
        catalog = self.catalog
        with self._lock:
            for name in spec.collections:
                if name in self._ensured:
                    continue
                try:
                    catalog.get(name)
                except CollectionNotFound:
                    if not create:
                        raise CollectionNotFound(
                            f"collection {name!r} was dropped while the job wrote to it"
                        ) from None
                    if self.embedded:
                        raise CollectionNotFound(
                            f"collection {name!r} does not exist on the radsearch server that owns the "
                            "store, and workers do not create collections there: submit the job through "
                            "the API with an encoder (POST /v1/ingest-jobs creates missing collections), "
                            "or create it first (radsearch collections create)"
                        ) from None
                    if not spec.encoder:
                        raise CollectionNotFound(
                            f"collection {name!r} does not exist; create it first or give the job an encoder"
                        ) from None
                    try:
                        catalog.create(name, resolve_spec(spec.encoder))
                    except CollectionExists:
                        pass
                self._ensured.add(name)

    def forget_collections(self) -> None:
        """Check every collection again on its next use (one was found dropped)."""
        with self._lock:
            self._ensured.clear()

    def labeler(self, job_id: str, spec: JobSpec) -> Labeler:
        """The job's label rules; a manifest is read once per job per process."""
        cache_key = (job_id, spec.manifest, spec.path_template)
        with self._lock:
            if cache_key in self._labelers:
                self._labelers.move_to_end(cache_key)
                return self._labelers[cache_key]
        labeler = Labeler(
            manifest=read_manifest(spec.manifest, self._fetch_object) if spec.manifest else {},
            path_template=PathTemplate(spec.path_template) if spec.path_template else None,
        )
        with self._lock:
            self._labelers[cache_key] = labeler
            while len(self._labelers) > _LABELER_CACHE:
                self._labelers.popitem(last=False)
        return labeler

    def pipeline_context(self, job_id: str, spec: JobSpec) -> PipelineContext:
        """The batch pipeline's context for one job (cheap: everything heavy is cached)."""
        self.ensure_collections(spec)
        return build_context(
            self.source(spec.source, spec.source_name),
            self.catalog,
            list(spec.collections),
            IngestOptions(skip_unchanged=spec.skip_unchanged, accept_burned_in=spec.accept_burned_in),
            self.settings,
            labeler=self.labeler(job_id, spec),
        )

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for source in self._sources.values():
            source.close()
        if self._index is not None:
            self._index.close()


def resources_for(app: Celery) -> WorkerResources:
    """This process's resources for ``app``, created on first use (after any fork)."""
    with _resources_lock:
        current: WorkerResources | None = app.conf.get(_RESOURCES_KEY)
        if current is None or current.pid != os.getpid():
            # A forked child must not use its parent's handles: build its own.
            current = WorkerResources(settings_of(app))
            app.conf[_RESOURCES_KEY] = current
        return current
