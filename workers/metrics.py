"""A worker's ``/metrics`` port: the ingest metrics its pool processes record (`core.metrics`).

Prefork children are separate processes, so their samples go through Prometheus' multiprocess
mode: ``PROMETHEUS_MULTIPROC_DIR`` must name an empty folder *before* the worker starts (the client
library reads it at import), and the main process serves what every child wrote there.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server

from core.errors import ConfigError

__all__ = ["MULTIPROC_ENV", "serve_worker_metrics"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def serve_worker_metrics(host: str, port: int, *, pool: str) -> None:
    """Serve the worker's metrics on ``host:port`` (a daemon thread of the main process).

    `ConfigError` for a prefork pool without ``PROMETHEUS_MULTIPROC_DIR``: its children's samples
    would never reach the port."""
    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        # Files of an earlier run of this worker would add their counts to this one's.
        for stale in path.glob("*.db"):
            stale.unlink()
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    elif pool == "prefork":
        raise ConfigError(
            f"--metrics-port with the prefork pool needs {MULTIPROC_ENV} set to an empty folder "
            "before the worker starts (its pool processes write their samples there); or use "
            "--pool threads or solo"
        )
    else:
        registry = REGISTRY
    start_http_server(port, addr=host, registry=registry)
