"""``radsearch demo``: build a demo archive, index it, run example searches, serve
(`radsearch.demo`); through the server that owns the store when one does."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from typing import Any

from core.config import Settings
from radsearch.commands import remote
from radsearch.commands.arg_types import at_least, port_number

__all__ = ["add_demo_command"]


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from radsearch.demo import run_demo

    return run_demo(
        settings, per_class=args.per_class, serve=not args.no_serve, host=args.host, port=args.port
    )


def _remote_demo(args: argparse.Namespace, settings: Settings, url: str) -> int:
    """The demo through the server at ``url`` (the data dir's owner): it ingests the archive as
    a job, answers the examples and computes P@k; the demo collection is then served there."""
    from core.index.base import StoredPoint
    from core.index.remote import OwnerIndex
    from core.payload import SearchFilter
    from radsearch.demo import (
        DEMO_COLLECTION,
        print_examples,
        print_indexed,
        print_quality,
        write_archive,
    )

    unused = [flag for flag, value in (("--host", args.host), ("--port", args.port)) if value is not None]
    if unused:  # said, not silently dropped
        print(f"radsearch: {' and '.join(unused)} not used: the demo goes through {url}", file=sys.stderr)
    started = time.perf_counter()
    archive = write_archive(settings, args.per_class)
    collection = remote.segment(DEMO_COLLECTION)
    body = {
        "executor": "owner",
        "source": remote.local_ref(archive.root),
        "collections": [DEMO_COLLECTION],
        "manifest": remote.local_ref(archive.manifest),
        "encoder": "baseline",
        "prune": True,  # as a demo run here: the collection holds the archive as it is now
        "force": True,
    }
    with remote.client(settings, url) as api:
        job_id = api.request("POST", "/v1/ingest-jobs", json=body)["id"]
        try:
            job = remote.follow(api, f"/v1/ingest-jobs/{job_id}", desc="ingest", progress=True, postfix=True)
        except KeyboardInterrupt:
            return remote.interrupted(job_id)
        if job["state"] != "done":
            raise remote.job_error(job, url)
        print_indexed(job["summary"], job["summary"].get("seconds", time.perf_counter() - started))
        owner = OwnerIndex(lambda: api)

        def similar(point_id: str, filter: SearchFilter, limit: int) -> list[dict[str, Any]]:
            query = {"point_id": point_id, "filter": dict(filter.fields()), "limit": limit}
            hits: list[dict[str, Any]] = api.request(
                "POST", f"/v1/collections/{collection}/search", json=query
            )["hits"]
            return hits

        def points(filter: SearchFilter) -> Iterator[StoredPoint]:
            # The owner's scroll names the points; their labels come with each point's own page.
            for point in owner.scroll(DEMO_COLLECTION, filter=filter, batch_size=100):
                row = api.request("GET", f"/v1/collections/{collection}/points/{point.id}")
                yield StoredPoint(id=row["id"], payload=row["payload"])

        print_examples(points, similar)
        metrics = api.request("POST", f"/v1/collections/{collection}/evaluate", json={"ks": [1, 3, 5, 10]})
    print_quality({**metrics, "chance": metrics["chance"]["micro"]}, started)
    print(f"\nthe server at {url} serves the demo collection (web page /, API docs /docs)")
    return 0


def add_demo_command(sub: Any) -> None:
    """Register ``radsearch demo`` on the ``radsearch`` subparsers."""
    demo = sub.add_parser(
        "demo",
        help="build a demo archive, index it, run example searches, serve "
        "(through the server that owns the data dir, when one does)",
    )
    demo.add_argument(
        "--per-class",
        type=at_least(2),
        default=12,
        help="images per class in the archive (default 12; at least 2: one to query with, one to find)",
    )
    demo.add_argument("--no-serve", action="store_true")
    demo.add_argument("--host")
    demo.add_argument("--port", type=port_number)
    demo.set_defaults(handler=_cmd_demo, remote_handler=_remote_demo)
