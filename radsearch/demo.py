"""``radsearch demo``: build the synthetic archive, index it with ``baseline``, show searches and
the paper's P@k next to chance, then serve the API."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from core.catalog import Catalog
from core.config import Settings
from core.index.base import StoredPoint
from core.payload import SearchFilter
from ingest.inline import IngestOptions
from radsearch.demo_data import DemoArchive, generate_demo_archive
from radsearch.services import ensure_collection, hit_rows, ingest_source, open_catalog, serve_api

__all__ = [
    "DEMO_COLLECTION",
    "class_label",
    "evaluate_collection",
    "print_examples",
    "print_indexed",
    "print_quality",
    "run_demo",
    "write_archive",
]

DEMO_COLLECTION = "demo"


def class_label(payload: dict[str, Any]) -> str:
    """The paper's class of a point: modality/anatomy/pathology."""
    pathology = payload.get("pathology") or ["-"]
    return f"{payload.get('modality', '-')}/{payload.get('anatomy', '-')}/{pathology[0]}"


def evaluate_collection(catalog: Catalog, collection: str, *, k_max: int = 10) -> dict[str, Any]:
    """Micro/macro P@k with index = split train and queries = split test, plus the chance level."""
    from evaluation import EvalOptions
    from evaluation import evaluate_collection as run_protocol

    ks = tuple(k for k in (1, 3, 5, 10) if k <= k_max) or (k_max,)
    result = run_protocol(catalog.index, collection, EvalOptions(ks=ks))
    return {**result, "chance": result["chance"]["micro"]}


# The examples' two questions, answered here (the catalog) or by the server that owns the store:
# the points matching a filter, and a point's most similar ones (hit rows: {"id", "score",
# "payload"}) within a filter.
Points = Callable[[SearchFilter], Iterable[StoredPoint]]
Similar = Callable[[str, SearchFilter, int], Sequence[Mapping[str, Any]]]


def write_archive(settings: Settings, per_class: int) -> DemoArchive:
    """The synthetic archive under the data dir (files already there are kept)."""
    archive = generate_demo_archive(settings.data_dir / "demo-archive", per_class=per_class)
    print(f"demo archive: {archive.n_files} files, {len(archive.classes)} classes under {archive.root}")
    return archive


def print_indexed(summary: Mapping[str, Any], seconds: float) -> None:
    """The ingest's line (``summary``: `BatchReport.to_dict`, as an ingest job reports it too)."""
    relabelled = f", {summary['relabelled']} relabelled" if summary.get("relabelled") else ""
    deleted = f", {summary['deleted']} gone from the archive deleted" if summary.get("deleted") else ""
    print(
        f"indexed {summary['frames_indexed']} frames from {summary['objects']} objects "
        f"({summary['skipped']} unchanged skipped{relabelled}, {summary['failed']} failed{deleted}) "
        f"in {seconds:.1f} s"
    )


def print_examples(points: Points, similar: Similar) -> None:
    """A test image of each modality with its five nearest training images, then a filtered
    search: an MR query restricted to CT."""
    shown: set[str] = set()
    for point in points(SearchFilter(split=["test"])):
        modality = point.payload.get("modality", "-")
        if modality in shown:
            continue
        shown.add(modality)
        hits = similar(point.id, SearchFilter(split=["train"]), 5)
        print(f"\nquery {point.payload['key']} — {class_label(point.payload)}")
        _print_hits(hits)
        if len(shown) >= 4:
            break
    first = next(iter(points(SearchFilter(modality=["MR"]))), None)
    if first is not None:
        hits = similar(first.id, SearchFilter(modality=["CT"]), 3)
        print(f"\nfiltered: query {first.payload['key']} (MR) restricted to modality CT")
        _print_hits(hits)


def _print_hits(hits: Sequence[Mapping[str, Any]]) -> None:
    for rank, hit in enumerate(hits, start=1):
        payload = hit["payload"]
        print(f"  {rank}. {hit['score']:.3f}  {class_label(payload):<28} {payload['key']}")


def print_quality(metrics: Mapping[str, Any], started: float) -> None:
    """P@k by the paper's protocol next to chance (``metrics``: `evaluate_collection`'s)."""
    micro = metrics["micro"]
    print(
        f"\nretrieval quality (paper's modified P@k, index = train {metrics['n_index']}, "
        f"queries = test {metrics['n_queries']}):"
    )
    print(
        f"  micro P@1 {micro['P@1']:.3f}   P@5 {micro['P@5']:.3f}   P@10 {micro['P@10']:.3f}   "
        f"(chance {metrics['chance']:.3f})"
    )
    print(f"demo ready in {time.perf_counter() - started:.1f} s")


def run_demo(
    settings: Settings,
    *,
    per_class: int = 12,
    serve: bool = True,
    host: str | None = None,
    port: int | None = None,
) -> int:
    """The demo in this process, as the store's owner: archive, ingest, examples, P@k, then
    serve (``serve``)."""
    started = time.perf_counter()
    archive = write_archive(settings, per_class)
    with open_catalog(settings, owner="demo") as catalog:
        ensure_collection(catalog, DEMO_COLLECTION, "baseline")
        # pruned: the collection holds the archive as it is now (a smaller --per-class than before)
        options = IngestOptions(manifest=archive.manifest, prune=True, force=True)
        report = ingest_source(catalog, settings, str(archive.root), [DEMO_COLLECTION], options)
        print_indexed(report.to_dict(), report.seconds)
        index = catalog.index
        print_examples(
            lambda filter: index.scroll(DEMO_COLLECTION, filter=filter),
            lambda point_id, filter, limit: hit_rows(
                index.search_near_point(DEMO_COLLECTION, point_id, filter=filter, limit=limit)
            ),
        )
        metrics = evaluate_collection(catalog, DEMO_COLLECTION)
    print_quality(metrics, started)
    if serve:
        from search_api.security import check_bind

        bind_host = host or settings.api.host
        bind_port = port or settings.api.port
        notice = check_bind(bind_host, settings.security)
        if notice:
            print(notice)
        print(f"\nserving on http://{bind_host}:{bind_port} (web page /, API docs /docs); Ctrl-C to stop")
        serve_api(settings, bind_host, bind_port, kind="demo", log_level="warning")
    return 0
