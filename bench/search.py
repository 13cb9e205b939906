"""Search benchmark of the embedded Qdrant Edge backend: latency, throughput and recall.

Data (seeded, reproducible):

- 1,000 cluster centres, random unit vectors in ``dim`` dimensions.
- Each point = a random centre + Gaussian noise with per-coordinate sigma = 0.75 / sqrt(dim), so
  that the mean cosine of a point to its centre is about 0.8 (for large dim,
  cos ~ 1 / sqrt(1 + sigma^2 * dim) = 0.8). The measured value is printed on the first line.
- Payload: ``modality`` one of 4 values (~25 % each) and ``pathology`` one of 50 values (~2 %
  each, stored as a one-element list), drawn independently of each other and of the cluster.
- Queries: ``--queries`` existing points, perturbed with the same noise.

Points are upserted into an EdgeIndex in a temp dir in batches of 5,000 (timed), then
``optimize()`` builds the HNSW segments (timed). For each filter (none; modality = one random value
per query; pathology = one random value per query) the queries run sequentially (filtered ones with
ACORN unless ``--no-acorn``): p50/p99
latency, qps, recall@10 against exact NumPy search over the same filtered set (one matrix product),
and ``exact_p50_ms``, the median time of a NumPy brute-force search per query in this process.

Output: JSON lines on stdout, one ``{"bench": "search-data", ...}`` line, then one line per filter:
``{"bench": "search", "backend": "edge", "n", "dim", "filter", "p50_ms", "p99_ms", "qps",
"recall_at_10", "exact_p50_ms", "upsert_per_s", "optimize_s"}``.

    .venv/bin/python bench/search.py --n 20000 --dim 512
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import StoreSettings  # noqa: E402
from core.index.base import CollectionConfig  # noqa: E402
from core.index.edge import EdgeIndex  # noqa: E402
from core.payload import SearchFilter  # noqa: E402

N_CENTRES = 1000
MODALITIES = ("CT", "MR", "CR", "US")
PATHOLOGIES = tuple(f"p{i:02d}" for i in range(50))
BATCH = 5000
K = 10
EXACT_TIMED_QUERIES = 100


def _unit(x: NDArray[np.float32]) -> NDArray[np.float32]:
    out: NDArray[np.float32] = (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)
    return out


def make_data(n: int, dim: int, n_queries: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    sigma = 0.75 / np.sqrt(dim)
    centres = _unit(rng.standard_normal((N_CENTRES, dim), dtype=np.float32))
    assign = rng.integers(0, N_CENTRES, size=n)
    points = centres[assign] + rng.standard_normal((n, dim), dtype=np.float32) * np.float32(sigma)
    mean_cos = float(np.mean(np.sum(_unit(points) * centres[assign], axis=1)))
    modality = rng.integers(0, len(MODALITIES), size=n)
    pathology = rng.integers(0, len(PATHOLOGIES), size=n)
    source = rng.choice(n, size=n_queries, replace=False)
    queries = _unit(
        points[source] + rng.standard_normal((n_queries, dim), dtype=np.float32) * np.float32(sigma)
    )
    return {
        "vectors": _unit(points),
        "modality": modality,
        "pathology": pathology,
        "queries": queries,
        "q_modality": rng.integers(0, len(MODALITIES), size=n_queries),
        "q_pathology": rng.integers(0, len(PATHOLOGIES), size=n_queries),
        "mean_cos": mean_cos,
        "sigma": float(sigma),
    }


def exact_topk(
    vectors: NDArray[np.float32], queries: NDArray[np.float32], masks: list[NDArray[np.bool_]] | None
) -> NDArray[np.int64]:
    """Row indices of the exact top-K per query (restricted to its mask), in chunks of queries."""
    out = np.empty((len(queries), K), dtype=np.int64)
    for lo in range(0, len(queries), 100):
        scores = queries[lo : lo + 100] @ vectors.T
        if masks is not None:
            for j in range(scores.shape[0]):
                scores[j, ~masks[lo + j]] = -np.inf
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[lo : lo + 100] = np.take_along_axis(top, order, axis=1)
    return out


def exact_p50_ms(vectors: NDArray[np.float32], queries: NDArray[np.float32], masks: Any) -> float:
    times = []
    for j in range(min(EXACT_TIMED_QUERIES, len(queries))):
        t = time.perf_counter()
        scores = vectors @ queries[j]
        if masks is not None:
            scores = np.where(masks[j], scores, -np.inf)
        top = np.argpartition(-scores, K)[:K]
        _ = top[np.argsort(-scores[top])]
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="points in the index")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--hnsw-ef", type=int, default=StoreSettings().hnsw_ef)
    parser.add_argument("--no-acorn", action="store_true", help="plain filtered HNSW, no ACORN")
    parser.add_argument("--quick", action="store_true", help="10,000 points, 100 queries (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.queries = min(args.n, 10_000), min(args.queries, 100)

    data = make_data(args.n, args.dim, args.queries)
    vectors: NDArray[np.float32] = data["vectors"]
    queries: NDArray[np.float32] = data["queries"]
    print(
        json.dumps(
            {
                "bench": "search-data",
                "n": args.n,
                "dim": args.dim,
                "queries": args.queries,
                "sigma": round(data["sigma"], 6),
                "mean_cos_to_centre": round(data["mean_cos"], 4),
            }
        ),
        flush=True,
    )
    ids = [str(uuid.UUID(int=i + 1)) for i in range(args.n)]
    payloads = [
        {"modality": MODALITIES[m], "pathology": [PATHOLOGIES[p]]}
        for m, p in zip(data["modality"].tolist(), data["pathology"].tolist(), strict=True)
    ]

    with tempfile.TemporaryDirectory(prefix="radsearch-bench-") as tmp:
        index = EdgeIndex(Path(tmp), StoreSettings(), acorn=not args.no_acorn)
        try:
            index.create_collection(CollectionConfig(name="bench", dim=args.dim))
            t0 = time.perf_counter()
            for lo in range(0, args.n, BATCH):
                index.upsert(
                    "bench", ids[lo : lo + BATCH], vectors[lo : lo + BATCH], payloads[lo : lo + BATCH]
                )
            upsert_per_s = args.n / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            index.optimize("bench")
            optimize_s = time.perf_counter() - t0

            filters: list[tuple[str, list[SearchFilter | None], list[NDArray[np.bool_]] | None]] = [
                ("none", [None] * args.queries, None),
                (
                    "modality",
                    [SearchFilter(modality=[MODALITIES[m]]) for m in data["q_modality"].tolist()],
                    [data["modality"] == m for m in data["q_modality"].tolist()],
                ),
                (
                    "pathology",
                    [SearchFilter(pathology=[PATHOLOGIES[p]]) for p in data["q_pathology"].tolist()],
                    [data["pathology"] == p for p in data["q_pathology"].tolist()],
                ),
            ]
            for label, search_filters, masks in filters:
                truth = exact_topk(vectors, queries, masks)
                latencies = []
                found: list[set[str]] = []
                t_all = time.perf_counter()
                for j in range(args.queries):
                    t = time.perf_counter()
                    hits = index.search(
                        "bench", queries[j], filter=search_filters[j], limit=K, hnsw_ef=args.hnsw_ef
                    )
                    latencies.append(time.perf_counter() - t)
                    found.append({h.id for h in hits})
                total = time.perf_counter() - t_all
                recalls = [
                    len(found[j] & {ids[i] for i in truth[j].tolist()}) / K for j in range(args.queries)
                ]
                lat_ms = np.array(latencies) * 1000
                print(
                    json.dumps(
                        {
                            "bench": "search",
                            "backend": "edge",
                            "n": args.n,
                            "dim": args.dim,
                            "filter": label,
                            "hnsw_ef": args.hnsw_ef,
                            "acorn": not args.no_acorn,
                            "p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
                            "p99_ms": round(float(np.percentile(lat_ms, 99)), 3),
                            "qps": round(args.queries / total, 1),
                            "recall_at_10": round(float(np.mean(recalls)), 4),
                            "exact_p50_ms": round(exact_p50_ms(vectors, queries, masks), 3),
                            "upsert_per_s": round(upsert_per_s, 1),
                            "optimize_s": round(optimize_s, 2),
                        }
                    ),
                    flush=True,
                )
        finally:
            index.close()


if __name__ == "__main__":
    main()
