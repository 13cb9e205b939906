"""The Prometheus metrics radsearch records: every name, label and bucket in one place.

Counters and histograms only, so that prefork worker children can record them in Prometheus'
multiprocess mode (`radsearch worker --metrics-port`). Label values are route templates, collection
names, filter field names and stage names: never a request's data, a key or a DICOM value.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Histogram

from core.payload import SearchFilter

__all__ = [
    "HTTP_REQUEST_SECONDS",
    "INGEST_IMAGES",
    "INGEST_OBJECTS",
    "INGEST_STAGE_SECONDS",
    "PROCESS_SEARCHES",
    "STORE_RESTARTS",
    "SEARCHES",
    "SEARCH_SECONDS",
    "WORKER_MESSAGES_GIVEN_BACK",
    "filter_kind",
    "timed_search",
]

# Searches take 1-30 ms at 1 M points; uploads and ingest stages up to seconds.
_FAST_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)
_SLOW_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

HTTP_REQUEST_SECONDS = Histogram(
    "radsearch_http_request_duration_seconds",
    "HTTP requests by method, route template and status code.",
    ["method", "route", "status"],
    buckets=_SLOW_BUCKETS,
)
SEARCH_SECONDS = Histogram(
    "radsearch_search_seconds",
    "Time in the index's search call, as the API sees it (with the index in its own process: "
    "including the call into that process).",
    ["collection", "filter_kind"],
    buckets=_FAST_BUCKETS,
)
SEARCHES = Counter(
    "radsearch_searches",
    "Searches by collection and filter kind (the filter's field names, e.g. anatomy+modality).",
    ["collection", "filter_kind"],
)
PROCESS_SEARCHES = Counter(
    "radsearch_store_process_searches",
    "Searches answered by each process of the embedded store: its owner or a search replica.",
    ["process"],
)
# Labelled like every metric here: a metric without labels makes its value (in multiprocess mode,
# a file under PROMETHEUS_MULTIPROC_DIR) at import, before that directory may exist.
STORE_RESTARTS = Counter(
    "radsearch_store_process_restarts",
    "New processes started for the embedded store after its process ended (killed, out of memory).",
    ["process"],
)
INGEST_STAGE_SECONDS = Histogram(
    "radsearch_ingest_stage_seconds",
    "Ingest time per stage: fetch and decode per object, embed and upsert per batch and collection.",
    ["stage"],
    buckets=_SLOW_BUCKETS,
)
INGEST_IMAGES = Counter(
    "radsearch_ingest_images",
    "Frames embedded and written per collection (images/s: rate() of this counter).",
    ["collection"],
)
INGEST_OBJECTS = Counter(
    "radsearch_ingest_objects",
    "Source objects seen by ingest, by outcome (indexed, skipped, relabelled, failed, quarantined).",
    ["outcome"],
)

WORKER_MESSAGES_GIVEN_BACK = Counter(
    "radsearch_worker_messages_given_back",
    "Broker messages a worker gave back to their queues for a worker that died holding them "
    "(workers.held_messages), by the queue they went back to.",
    ["queue"],
)


def filter_kind(search_filter: SearchFilter | None) -> str:
    """The filter's shape as a label: ``none`` or its field names joined by ``+`` (never values)."""
    if search_filter is None:
        return "none"
    names = sorted(name for name, _ in search_filter.fields())
    return "+".join(names) or "none"


@contextmanager
def timed_search(collection: str, search_filter: SearchFilter | None) -> Iterator[None]:
    """Count a search and observe its time (also when it raises)."""
    kind = filter_kind(search_filter)
    SEARCHES.labels(collection, kind).inc()
    started = time.perf_counter()
    try:
        yield
    finally:
        SEARCH_SECONDS.labels(collection, kind).observe(time.perf_counter() - started)
