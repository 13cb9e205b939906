"""Prometheus metrics of the API process: request latency by route, and what is read at scrape time
(queue depth, live workers, jobs by state, free disk) beside what `core.metrics` records."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Receive, Scope, Send

from core.config import Settings
from core.metrics import HTTP_REQUEST_SECONDS
from core.store_identity import store_id
from search_api.routing import RouteTable, StatusRecorder

logger = logging.getLogger(__name__)

__all__ = ["LiveStateCollector", "MetricsMiddleware", "render_metrics"]

# Recent jobs read per scrape for the counts by state (each store lists newest first).
_JOBS_PER_SCRAPE = 1000


class MetricsMiddleware:
    """Observe every HTTP request's time under its route template (``/v1/collections/{name}/
    search``), never the raw path: paths carry names and ids, and the label set stays bounded."""

    def __init__(self, app: ASGIApp, *, routes: RouteTable) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        record_send = StatusRecorder(send)
        try:
            await self.app(scope, receive, record_send)
        finally:
            route = self.routes.match(scope)
            HTTP_REQUEST_SECONDS.labels(
                scope.get("method", "-"),
                route.path if route is not None else "unmatched",
                str(record_send.status),
            ).observe(time.perf_counter() - started)


class LiveStateCollector(Collector):
    """Gauges read when Prometheus scrapes: each source that cannot be read (no Redis) is left out
    and its ``radsearch_scrape_source_up`` is 0, instead of failing the whole scrape."""

    def __init__(self, app_state: Any) -> None:
        self.state = app_state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        settings: Settings = self.state.settings
        up = GaugeMetricFamily(
            "radsearch_scrape_source_up", "Whether a live gauges' source could be read.", labels=["source"]
        )
        disk = GaugeMetricFamily("radsearch_store_disk_free_bytes", "Free bytes on the store's data disk.")
        try:
            path = settings.data_dir if settings.data_dir.exists() else settings.data_dir.parent
            disk.add_metric([], float(shutil.disk_usage(path).free))
            up.add_metric(["disk"], 1.0)
            yield disk
        except OSError:
            up.add_metric(["disk"], 0.0)
        replicated = GaugeMetricFamily(
            "radsearch_search_replica_current",
            "1 for each collection whose searches the store's search replicas share now.",
            labels=["collection"],
        )
        index = getattr(self.state, "index", None)
        for name in index.replicated_collections if index is not None else ():
            replicated.add_metric([name], 1.0)
        yield replicated
        jobs = GaugeMetricFamily("radsearch_jobs", "Recent jobs by kind and state.", labels=["kind", "state"])
        owner = getattr(self.state, "backfill", None)
        if owner is not None:
            counts: dict[tuple[str, str], int] = {}
            for job in owner.store.recent(limit=_JOBS_PER_SCRAPE):
                key = (f"owner_{_name(job.kind)}", _name(job.state))
                counts[key] = counts.get(key, 0) + 1
            for (kind, state), count in sorted(counts.items()):
                jobs.add_metric([kind, state], float(count))
        gateway = getattr(self.state, "workers", None)
        if gateway is not None:
            try:
                yield from self._broker(gateway, settings, jobs)
                up.add_metric(["redis"], 1.0)
            except Exception as exc:  # noqa: BLE001 - any broker failure leaves its gauges out
                logger.debug("metrics: broker unreadable: %s", type(exc).__name__)
                up.add_metric(["redis"], 0.0)
        yield jobs
        yield up

    @staticmethod
    def _broker(gateway: Any, settings: Settings, jobs: GaugeMetricFamily) -> Iterator[GaugeMetricFamily]:
        from workers.client import queue_depths
        from workers.heartbeat import live_workers

        client = gateway.store.client
        queue = GaugeMetricFamily("radsearch_queue_depth", "Messages waiting per queue.", labels=["queue"])
        for name, depth in sorted(queue_depths(client).items()):
            queue.add_metric([name], float(depth))
        workers = GaugeMetricFamily("radsearch_live_workers", "Workers heard from recently.")
        workers.add_metric(
            [], float(len(live_workers(client, dead_after_s=settings.celery.worker_dead_after_s)))
        )
        counts: dict[str, int] = {}
        for record in gateway.store.recent(limit=_JOBS_PER_SCRAPE, for_store=store_id(settings)):
            counts[_name(record.state)] = counts.get(_name(record.state), 0) + 1
        for state, count in sorted(counts.items()):
            jobs.add_metric(["ingest", state], float(count))
        yield queue
        yield workers


def _name(value: Any) -> str:
    return str(getattr(value, "value", value))


def render_metrics(app_state: Any) -> bytes:
    """The process-wide metrics and this app's live gauges, in Prometheus' text format."""
    live = CollectorRegistry(auto_describe=False)
    live.register(LiveStateCollector(app_state))
    return generate_latest(REGISTRY) + generate_latest(live)
