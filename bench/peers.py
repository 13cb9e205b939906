"""radsearch's index against the libraries a user would pick instead, on bench/search.py's data.

The data, queries, filters and exact top-10 are `bench/search.py`'s own (`make_data`, `exact_topk`,
`mask_of`): ``--n`` points in ``--dim`` dimensions around 1,000 centres (mean cosine 0.8), queries
that are perturbed stored points, and the five filters (none, modality ~25 %, pathology ~2 %,
modality AND anatomy ~4 %, modality AND anatomy AND pathology ~0.5 %). The parent process makes them
once, writes them to a temp dir (vectors as ``.npy``, opened with ``mmap_mode="r"``), and runs each
engine in a child process of its own, so that each one's resident memory is its own:

- ``faiss-flat``: ``faiss.IndexFlatIP``, exact (the reference paper's engine); filtered through
  a ``faiss.SearchParameters`` whose ``sel`` is ``faiss.IDSelectorBitmap(nbytes, swig_ptr(bitmap))``
  (bit i % 8 of byte i // 8 = point i): the scan skips the points outside it. One row per filter.
- ``faiss-hnsw``: ``faiss.IndexHNSWFlat(dim, 32, METRIC_INNER_PRODUCT)``, efConstruction 64
  (radsearch's ef_construct; M 32 is faiss's usual value, twice radsearch's links per node);
  filtered through ``faiss.SearchParametersHNSW(efSearch=ef, sel=IDSelectorBitmap(...))``.
- ``hnswlib``: space ``ip``, M 16, ef_construction 64 (radsearch's defaults); filtered through
  ``knn_query(..., filter=mask.__getitem__)``, a Python callable the C++ search calls (under the
  GIL) for every candidate it meets.
- ``usearch``: metric ``ip``, f32, connectivity 16, expansion_add 64. Its Python API (2.26) has no
  filter or predicate argument (``Index.search`` takes vectors, count, radius, threads, exact), so
  it is measured unfiltered only; its filtered rows are marked unavailable.
- ``radsearch``: `core.index.edge.EdgeIndex` with `StoreSettings()` (the defaults: int8 with
  rescoring, originals in RAM) in a temp dir, built and queried exactly as `bench/search.py` does
  (upserts in batches of 5,000 with the same payloads, ``optimize()``, `run_queries` with the
  defaults, no sweep); or, with ``--radsearch-data-dir DIR``, the collection a
  ``bench/search.py --keep-data-dir DIR`` run of the same ``--n`` built (that run reports its
  build), opened and queried as it is (``make bench`` does so: one 1 M build less).

Fairness: each build is timed (``build_s``; builds may use both cores), then the child drops its
view of the source vectors so that RSS is the index's. Queries run one at a time on one thread
(``faiss.omp_set_num_threads(1)``, hnswlib ``set_num_threads(1)`` and ``num_threads=1``, usearch
``threads=1``); radsearch is queried as in production and ``cpu_ms`` (process CPU per query) shows
whether its engine used more than one thread. **The peers get their filter sets for free**: each
query's bitmap (faiss), mask (hnswlib) or search parameters are built before its timer starts, a
generous assumption in their favour (radsearch's timer includes its payload-index look-up; only the
`SearchFilter` object is made before, as in bench/search.py). The HNSW peers are tuned per filter:
efSearch (hnswlib ``ef``, usearch ``expansion_search``) is swept over 16, 32, ... 4096 and the
smallest value that reaches recall@10 >= 0.99 is chosen; the sweep stops early when a step's p50
exceeds ``--cap-ms`` (a step is cut after 20 queries once its median is over the cap) or when recall
has not improved over two steps. A filter no setting reached keeps the best-recall step, with
``"reached": false``. Recall is against the exact filtered top-10; peers' ``qps`` is 1 / mean timed
latency, radsearch's that of `run_queries` (wall time). Use n >= 20,000: below that the 0.5 %
filter matches fewer than 10 points for some queries, and the exact top-10 then holds points
outside the filter (recall < 1 even for flat).

Memory: ``rss_mb`` is the child's VmRSS after all its queries, ``hwm_mb`` its peak (VmHWM, which
includes the source vectors' pages the build read), ``base_rss_mb`` its RSS after the imports,
before the data (every child imports the same radsearch modules).

Targets (exit status 1 when missed, ``--no-check`` to explore): radsearch recall@10 >= 0.99 for
every filter; its p50 at most the best peer's (the lowest p50 among the peers that reached 0.99)
for every filtered case, and at most 1.5x for the unfiltered one. A child that fails (a missing
library, a crash) is reported (``"bench": "peers-failure"``) and counted as a failure; the others
still run.

Output: JSON lines on stdout: ``{"bench": "peers-data"}``, per engine ``{"bench": "peers-build"}``,
``{"bench": "peers-sweep"}`` for the sweep steps not chosen and ``{"bench": "peers"}`` per filter
(the chosen setting), then ``{"bench": "peers-summary"}`` per filter and ``{"bench": "peers-check"}``;
a markdown table (engine x filter: p50 / recall / setting) on stderr. The peers install with
``make bench-peers-install`` (the ``bench`` extra).

    .venv/bin/python bench/peers.py --n 20000 --queries 100 --no-check
    .venv/bin/python bench/peers.py --n 1000000 --queries 500
    .venv/bin/python bench/peers.py --n 100000 --engines faiss-hnsw,radsearch
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from search import (
    FILTERS,
    TARGET_RECALL,
    K,
    exact_topk,
    filter_shares,
    make_data,
    mask_of,
    payloads_of,
    point_ids,
    run_queries,
    status_mb,
    upsert_and_optimize,
)

ENGINES = ("faiss-flat", "faiss-hnsw", "hnswlib", "usearch", "radsearch")
EF_STEPS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
CAP_MS = 2000.0
CAP_AFTER = 20  # queries of a step before its median is held against the cap
PLATEAU_STEPS = 2
TARGET_RATIO_FILTERED = 1.0
TARGET_RATIO_NONE = 1.5
LABEL_FIELDS = ("modality", "anatomy", "pathology")
M_HNSW = 16  # radsearch's hnsw_m (StoreSettings)
M_FAISS = 32
EF_CONSTRUCT = 64  # radsearch's hnsw_ef_construct

Prepared = Any  # an engine's per-query filter object, made before the timer starts


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def _load1() -> float:
    return round(os.getloadavg()[0], 2)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown"


# --- the peers ------------------------------------------------------------------------------------


class Peer:
    """One library's index: build, then per-query filter objects and timed searches."""

    param: str = "ef"
    filtered = True  # whether the library can take a filter at all

    def build(self, vectors: NDArray[np.float32]) -> None:
        raise NotImplementedError

    def set_param(self, value: int) -> None:
        raise NotImplementedError

    def prepare(self, mask: NDArray[np.bool_] | None) -> Prepared:
        return mask

    def search(self, query: NDArray[np.float32], prepared: Prepared) -> list[int]:
        raise NotImplementedError


class FaissFlat(Peer):
    param = "exact"

    def build(self, vectors: NDArray[np.float32]) -> None:
        import faiss

        self.faiss = faiss
        self.index: Any = faiss.IndexFlatIP(vectors.shape[1])
        for lo in range(0, len(vectors), 100_000):
            self.index.add(np.ascontiguousarray(vectors[lo : lo + 100_000]))
        faiss.omp_set_num_threads(1)

    def set_param(self, value: int) -> None:
        pass

    def _selector(self, mask: NDArray[np.bool_]) -> tuple[Any, NDArray[np.uint8]]:
        # bit i % 8 of byte i // 8 is point i (faiss/impl/IDSelector.h)
        bitmap = np.packbits(mask, bitorder="little")
        return self.faiss.IDSelectorBitmap(len(bitmap), self.faiss.swig_ptr(bitmap)), bitmap

    def prepare(self, mask: NDArray[np.bool_] | None) -> Prepared:
        if mask is None:
            return None
        sel, bitmap = self._selector(mask)
        params = self.faiss.SearchParameters()
        params.sel = sel
        return params, sel, bitmap  # the selector and its bitmap kept alive with the parameters

    def search(self, query: NDArray[np.float32], prepared: Prepared) -> list[int]:
        params = None if prepared is None else prepared[0]
        _, ids = self.index.search(query[None, :], K, params=params)
        return [int(i) for i in ids[0] if i >= 0]


class FaissHNSW(FaissFlat):
    param = "efSearch"

    def build(self, vectors: NDArray[np.float32]) -> None:
        import faiss

        self.faiss = faiss
        self.index = faiss.IndexHNSWFlat(vectors.shape[1], M_FAISS, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = EF_CONSTRUCT
        for lo in range(0, len(vectors), 100_000):
            self.index.add(np.ascontiguousarray(vectors[lo : lo + 100_000]))
        faiss.omp_set_num_threads(1)
        self.ef = 16

    def set_param(self, value: int) -> None:
        self.ef = value

    def prepare(self, mask: NDArray[np.bool_] | None) -> Prepared:
        if mask is None:
            return self.faiss.SearchParametersHNSW(efSearch=self.ef), None, None
        sel, bitmap = self._selector(mask)
        return self.faiss.SearchParametersHNSW(efSearch=self.ef, sel=sel), sel, bitmap


class Hnswlib(Peer):
    param = "ef"

    def build(self, vectors: NDArray[np.float32]) -> None:
        import hnswlib

        n, dim = vectors.shape
        self.index = hnswlib.Index(space="ip", dim=dim)
        self.index.init_index(max_elements=n, ef_construction=EF_CONSTRUCT, M=M_HNSW)
        for lo in range(0, n, 100_000):
            chunk = np.ascontiguousarray(vectors[lo : lo + 100_000])
            self.index.add_items(chunk, np.arange(lo, lo + len(chunk)), num_threads=-1)
        self.index.set_num_threads(1)

    def set_param(self, value: int) -> None:
        self.index.set_ef(value)

    def prepare(self, mask: NDArray[np.bool_] | None) -> Prepared:
        # The fastest callable measured (a list's or a set's are no faster): one Python call per
        # candidate the search meets.
        return None if mask is None else mask.__getitem__

    def search(self, query: NDArray[np.float32], prepared: Prepared) -> list[int]:
        try:
            labels, _ = self.index.knn_query(query, k=K, num_threads=1, filter=prepared)
        except RuntimeError:  # fewer than K found ("Probably ef or M is too small")
            return []
        return [int(i) for i in labels[0]]


class Usearch(Peer):
    param = "expansion_search"
    filtered = False  # usearch 2.26's Python Index.search takes no predicate

    def build(self, vectors: NDArray[np.float32]) -> None:
        from usearch.index import Index

        n, dim = vectors.shape
        self.index = Index(
            ndim=dim, metric="ip", dtype="f32", connectivity=M_HNSW, expansion_add=EF_CONSTRUCT
        )
        for lo in range(0, n, 100_000):
            chunk = np.ascontiguousarray(vectors[lo : lo + 100_000])
            self.index.add(np.arange(lo, lo + len(chunk), dtype=np.uint64), chunk, threads=0)

    def set_param(self, value: int) -> None:
        self.index.expansion_search = value  # type: ignore[misc]  # (mypy misses its setter)

    def search(self, query: NDArray[np.float32], prepared: Prepared) -> list[int]:
        return [int(i) for i in self.index.search(query, K, threads=1).keys]


PEERS: dict[str, Callable[[], Peer]] = {
    "faiss-flat": FaissFlat,
    "faiss-hnsw": FaissHNSW,
    "hnswlib": Hnswlib,
    "usearch": Usearch,
}


# --- the child: one engine ------------------------------------------------------------------------


def _load(data_dir: Path) -> tuple[dict[str, Any], dict[str, NDArray[np.int64]]]:
    data: dict[str, Any] = {
        "vectors": np.load(data_dir / "vectors.npy", mmap_mode="r"),
        "queries": np.load(data_dir / "queries.npy"),
    }
    with np.load(data_dir / "labels.npz") as blob:
        data.update({key: blob[key] for key in blob.files})
    truth = np.load(data_dir / "truth.npy")
    return data, dict(zip(FILTERS, truth, strict=True))


def time_queries(
    peer: Peer, data: dict[str, Any], label: str, truth: NDArray[np.int64], cap_ms: float
) -> dict[str, Any]:
    """The queries one at a time; each one's filter object made before its timer starts."""
    queries = data["queries"]
    latencies: list[float] = []
    cpus: list[float] = []
    recalls: list[float] = []
    capped = False
    for j in range(len(queries)):
        prepared = peer.prepare(mask_of(data, label, j))
        query = queries[j]
        t, cpu = time.perf_counter(), time.process_time()
        found = peer.search(query, prepared)
        latencies.append(time.perf_counter() - t)
        cpus.append(time.process_time() - cpu)
        recalls.append(len(set(found) & set(truth[j].tolist())) / K)
        if len(latencies) >= CAP_AFTER and np.median(latencies) * 1000 > cap_ms:
            capped = len(latencies) < len(queries)
            break
    lat_ms = np.array(latencies) * 1000
    return {
        "recall_at_10": round(float(np.mean(recalls)), 4),
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
        "p99_ms": round(float(np.percentile(lat_ms, 99)), 3),
        "qps": round(1000 / float(np.mean(lat_ms)), 1),
        "cpu_ms": round(float(np.mean(cpus)) * 1000, 3),
        "queries_run": len(latencies),
        "capped": capped,
    }


def sweep(
    peer: Peer, data: dict[str, Any], label: str, truth: NDArray[np.int64], cap_ms: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the chosen step, the others) of the efSearch sweep; flat is one exact step."""
    steps: list[dict[str, Any]] = []
    for ef in EF_STEPS if peer.param != "exact" else (None,):
        if ef is not None:
            peer.set_param(ef)
        step = {"param": peer.param, "value": ef, **time_queries(peer, data, label, truth, cap_ms)}
        steps.append(step)
        print(f"# {label} {peer.param}={ef}: {step['recall_at_10']} {step['p50_ms']} ms", file=sys.stderr)
        if step["recall_at_10"] >= TARGET_RECALL or step["capped"] or step["p50_ms"] > cap_ms:
            break
        if len(steps) > PLATEAU_STEPS and step["recall_at_10"] <= steps[-1 - PLATEAU_STEPS]["recall_at_10"]:
            break
    reached = [s for s in steps if s["recall_at_10"] >= TARGET_RECALL]
    chosen = reached[0] if reached else max(steps, key=lambda s: (s["recall_at_10"], -s["p50_ms"]))
    return chosen, [s for s in steps if s is not chosen]


def child(engine: str, data_dir: Path, cap_ms: float, radsearch_data_dir: str | None = None) -> None:
    base_rss = status_mb()["VmRSS"]
    data, truth = _load(data_dir)
    n, dim = data["vectors"].shape
    common = {"engine": engine, "n": n, "dim": dim}
    rows: list[dict[str, Any]] = []
    if engine == "radsearch":
        _radsearch(data, truth, common, rows, radsearch_data_dir)
    else:
        peer = PEERS[engine]()
        t0 = time.perf_counter()
        peer.build(data["vectors"])
        build_s = time.perf_counter() - t0
        del data["vectors"]  # the index holds its own copy: RSS from here on is the index's
        gc.collect()
        _emit({"bench": "peers-build", **common, "build_s": round(build_s, 2), "load1": _load1()})
        for label in FILTERS:
            if label != "none" and not peer.filtered:
                rows.append({"filter": label, "available": False, "reached": False, "build_s": build_s})
                continue
            chosen, others = sweep(peer, data, label, truth[label], cap_ms)
            for step in others:
                _emit({"bench": "peers-sweep", **common, "filter": label, **step, "load1": _load1()})
            reached = chosen["recall_at_10"] >= TARGET_RECALL
            rows.append({"filter": label, **chosen, "reached": reached, "build_s": build_s})
    status = status_mb()
    for row in rows:
        _emit(
            {
                "bench": "peers",
                **common,
                **{"available": True, "param": None, "value": None, "recall_at_10": None, "p50_ms": None},
                **row,
                "build_s": None if row["build_s"] is None else round(row["build_s"], 2),
                # radsearch's own, taken while its index was open (it is closed by now)
                "rss_mb": round(row.get("rss_mb", status["VmRSS"]), 1),
                "hwm_mb": round(row.get("hwm_mb", status["VmHWM"]), 1),
                "base_rss_mb": round(base_rss, 1),
                "load1": _load1(),
            }
        )


def _radsearch(
    data: dict[str, Any],
    truth: dict[str, NDArray[np.int64]],
    common: dict[str, Any],
    rows: list[dict[str, Any]],
    prebuilt: str | None,
) -> None:
    """radsearch's index at its defaults: built here, or (``prebuilt``, a radsearch data dir a
    ``bench/search.py --keep-data-dir`` run of the same ``--n`` built, whose build that run
    reports) opened and queried as it is."""
    from core.config import Settings, StoreSettings
    from core.index.base import CollectionConfig
    from core.index.edge import EdgeIndex

    store = StoreSettings()
    n, dim = data["vectors"].shape
    with tempfile.TemporaryDirectory(prefix="radsearch-peers-") as tmp:
        build_s: float | None = None
        if prebuilt:
            index = EdgeIndex(Settings(data_dir=Path(prebuilt), store=store).index_dir, store)
        else:
            index = EdgeIndex(Path(tmp), store)
        try:
            if not prebuilt:
                index.create_collection(
                    CollectionConfig(
                        name="bench",
                        dim=dim,
                        quantization=store.default_quantization,
                        combined_fields=store.combined_filter_fields,
                    )
                )
                upsert_s, optimize_s = upsert_and_optimize(index, point_ids(n), data, payloads_of(data))
                build_s = upsert_s + optimize_s
                _emit(
                    {
                        "bench": "peers-build",
                        **common,
                        "build_s": round(build_s, 2),
                        "upsert_s": round(upsert_s, 2),
                        "optimize_s": round(optimize_s, 2),
                        "quantization": store.default_quantization,
                        "load1": _load1(),
                    }
                )
            del data["vectors"]
            gc.collect()
            for label in FILTERS:
                result = run_queries(index, data, label, truth[label], None)
                reached = result["recall_at_10"] >= TARGET_RECALL
                row = {"filter": label, "param": "hnsw_ef", "value": "default", **result}
                rows.append({**row, "reached": reached, "build_s": build_s, "prebuilt": bool(prebuilt)})
            status = status_mb()
            for row in rows:
                row.update(rss_mb=status["VmRSS"], hwm_mb=status["VmHWM"])
        finally:
            index.close()


# --- the parent -----------------------------------------------------------------------------------


def _run_child(
    engine: str, data_dir: Path, cap_ms: float, radsearch_data_dir: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """The engine's child process: its JSON lines echoed and its ``peers`` rows returned, and the
    failure (None when it exited 0)."""
    cmd = [sys.executable, __file__, "--engine", engine, "--data", str(data_dir), "--cap-ms", str(cap_ms)]
    if radsearch_data_dir and engine == "radsearch":
        cmd += ["--radsearch-data-dir", radsearch_data_dir]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tail: collections.deque[str] = collections.deque(maxlen=20)

    def pump_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line)
            print(f"[{engine}] {line}", end="", file=sys.stderr, flush=True)

    pump = threading.Thread(target=pump_stderr, daemon=True)
    pump.start()
    rows = []
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            print(f"[{engine}] {line}", end="", file=sys.stderr)
            continue
        print(json.dumps(record), flush=True)
        if record.get("bench") == "peers":
            rows.append(record)
    code = proc.wait()
    pump.join()
    if code == 0:
        return rows, None
    return rows, f"exit {code}: {''.join(tail)[-600:]}"


def _setting(row: dict[str, Any]) -> str:
    return "exact" if row["param"] == "exact" else f"{row['param']} {row['value']}"


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "failed"
    if not row["available"]:
        return "n/a (no filter API)"
    setting = _setting(row)
    mark = "" if row["reached"] else " (< 0.99)"
    return f"{row['p50_ms']:.2f} ms / {row['recall_at_10']:.3f}{mark} / {setting}"


def _table(engines: list[str], by_engine: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| engine | build s | RSS MB | " + " | ".join(FILTERS) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in FILTERS) + " |",
    ]
    for engine in engines:
        rows = by_engine.get(engine, {})
        first = next(iter(rows.values()), None)
        build = f"{first['build_s']:.1f}" if first and first["build_s"] is not None else "-"
        rss = f"{first['rss_mb']:.0f}" if first else "-"
        cells = " | ".join(_cell(rows.get(label)) for label in FILTERS)
        lines.append(f"| {engine} | {build} | {rss} | {cells} |")
    return "\n".join(lines)


def parent(args: argparse.Namespace) -> int:
    engines = [e for e in args.engines.split(",") if e]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise SystemExit(f"unknown engines {unknown}; choose from {','.join(ENGINES)}")
    data = make_data(args.n, args.dim, args.queries)
    _emit(
        {
            "bench": "peers-data",
            "n": args.n,
            "dim": args.dim,
            "queries": args.queries,
            "engines": engines,
            "mean_cos_to_centre": round(data["mean_cos"], 4),
            "filter_shares": filter_shares(data),
            "cap_ms": args.cap_ms,
            "load1_at_start": _load1(),
            "cpu": _cpu_model(),
            "cpus": os.cpu_count(),
        }
    )
    failures: list[str] = []
    by_engine: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="radsearch-peers-data-") as tmp:
        data_dir = Path(tmp)
        np.save(data_dir / "truth.npy", np.stack([exact_topk(data, label) for label in FILTERS]))
        np.save(data_dir / "vectors.npy", data["vectors"])
        np.save(data_dir / "queries.npy", data["queries"])
        labels = {f: data[f] for f in LABEL_FIELDS} | {f"q_{f}": data[f"q_{f}"] for f in LABEL_FIELDS}
        np.savez(data_dir / "labels.npz", **labels)
        del data  # the children load their own copies
        gc.collect()
        for engine in engines:
            t0 = time.perf_counter()
            rows, failure = _run_child(engine, data_dir, args.cap_ms, args.radsearch_data_dir)
            print(f"[{engine}] {time.perf_counter() - t0:.1f} s in all", file=sys.stderr, flush=True)
            by_engine[engine] = {row["filter"]: row for row in rows}
            if failure is not None:
                _emit({"bench": "peers-failure", "engine": engine, "error": failure})
                failures.append(f"{engine} failed: {failure.splitlines()[-1] if failure else ''}")

    ours = by_engine.get("radsearch", {})
    for label in FILTERS:
        mine = ours.get(label)
        candidates = [
            rows[label]
            for engine, rows in by_engine.items()
            if engine != "radsearch" and label in rows and rows[label]["reached"]
        ]
        best = min(candidates, key=lambda r: r["p50_ms"]) if candidates else None
        ratio = mine["p50_ms"] / best["p50_ms"] if mine and best and best["p50_ms"] > 0 else None
        target = TARGET_RATIO_NONE if label == "none" else TARGET_RATIO_FILTERED
        _emit(
            {
                "bench": "peers-summary",
                "filter": label,
                "radsearch_p50_ms": mine["p50_ms"] if mine else None,
                "radsearch_recall": mine["recall_at_10"] if mine else None,
                "best_peer": best["engine"] if best else None,
                "best_peer_p50_ms": best["p50_ms"] if best else None,
                "best_peer_setting": _setting(best) if best else None,
                "ratio": round(ratio, 3) if ratio is not None else None,
                "target_ratio": target,
            }
        )
        if "radsearch" not in engines:
            continue
        if mine is None:
            failures.append(f"{label}: no radsearch row")
            continue
        if mine["recall_at_10"] < TARGET_RECALL:
            failures.append(f"{label}: radsearch recall {mine['recall_at_10']} < {TARGET_RECALL}")
        if best is not None and ratio is not None and ratio > target:
            failures.append(
                f"{label}: radsearch p50 {mine['p50_ms']} ms = {ratio:.2f}x {best['engine']}'s "
                f"{best['p50_ms']} ms > {target}x"
            )
    print(_table(engines, by_engine), file=sys.stderr, flush=True)
    _emit(
        {
            "bench": "peers-check",
            "n": args.n,
            "checked": not args.no_check,
            "failures": failures,
            "ok": not failures,
        }
    )
    return 1 if failures and not args.no_check else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="points in each index")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma list, run in this order")
    parser.add_argument("--cap-ms", type=float, default=CAP_MS, help="stop a sweep past this p50")
    parser.add_argument("--no-check", action="store_true", help="report only; exit 0")
    parser.add_argument(
        "--radsearch-data-dir",
        default=None,
        help="query the collection a bench/search.py --keep-data-dir run of the same --n built "
        "(its build figures are that run's) instead of building radsearch's index again",
    )
    parser.add_argument("--engine", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.engine:
        child(args.engine, Path(args.data), args.cap_ms, args.radsearch_data_dir)
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
