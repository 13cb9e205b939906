"""``radsearch demo``: build the synthetic archive, index it with ``baseline``, show searches and
the paper's P@k next to chance, then serve the API."""

from __future__ import annotations

import time
from typing import Any

from core.catalog import Catalog
from core.config import Settings
from core.payload import SearchFilter
from ingest.inline import IngestOptions
from radsearch.demo_data import generate_demo_archive
from radsearch.services import ensure_collection, ingest_source, open_catalog, serve_api

__all__ = ["DEMO_COLLECTION", "class_label", "evaluate_collection", "run_demo"]

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


def _print_examples(catalog: Catalog, collection: str) -> None:
    index = catalog.index
    shown: set[str] = set()
    for point in index.scroll(collection, filter=SearchFilter(split=["test"]), with_vectors=True):
        modality = point.payload.get("modality", "-")
        if modality in shown or point.vector is None:
            continue
        shown.add(modality)
        hits = index.search(collection, point.vector, filter=SearchFilter(split=["train"]), limit=5)
        print(f"\nquery {point.payload['key']} — {class_label(point.payload)}")
        for rank, hit in enumerate(hits, start=1):
            print(f"  {rank}. {hit.score:.3f}  {class_label(hit.payload):<28} {hit.payload['key']}")
        if len(shown) >= 4:
            break
    # A filtered search: only CT images, whatever the query.
    first = next(index.scroll(collection, filter=SearchFilter(modality=["MR"]), with_vectors=True), None)
    if first is not None and first.vector is not None:
        hits = index.search(collection, first.vector, filter=SearchFilter(modality=["CT"]), limit=3)
        print(f"\nfiltered: query {first.payload['key']} (MR) restricted to modality CT")
        for rank, hit in enumerate(hits, start=1):
            print(f"  {rank}. {hit.score:.3f}  {class_label(hit.payload):<28} {hit.payload['key']}")


def run_demo(
    settings: Settings,
    *,
    per_class: int = 12,
    serve: bool = True,
    host: str | None = None,
    port: int | None = None,
) -> int:
    archive_dir = settings.data_dir / "demo-archive"
    started = time.perf_counter()
    archive = generate_demo_archive(archive_dir, per_class=per_class)
    print(f"demo archive: {archive.n_files} files, {len(archive.classes)} classes under {archive.root}")
    with open_catalog(settings, owner="demo") as catalog:
        ensure_collection(catalog, DEMO_COLLECTION, "baseline")
        report = ingest_source(
            catalog, settings, str(archive.root), [DEMO_COLLECTION], IngestOptions(manifest=archive.manifest)
        )
        print(
            f"indexed {report.frames_indexed} frames from {report.objects} objects "
            f"({report.skipped} unchanged skipped, {len(report.failed)} failed) in {report.seconds:.1f} s"
        )
        _print_examples(catalog, DEMO_COLLECTION)
        metrics = evaluate_collection(catalog, DEMO_COLLECTION)
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
