"""A calibrated "no close match": each collection's score threshold, learned from its own scores.

Cosine scores of one encoder crowd together (0.93-0.97 for everything is common), so a fixed
threshold means nothing across collections. The threshold here is a high quantile of the best
score that *unrelated* queries get in the collection: queries drawn from a Gaussian with the
per-dimension mean and spread of a sample of the collection's own vectors (so they look like the
collection's embeddings but depict nothing in it). A hit that scores below it is no closer than
the best match of such a query: ``weak``.

The result is stored in the collection's metadata under ``calibration`` (`CALIBRATION_KEY`); the
end of an ingest and ``radsearch collections calibrate`` compute it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from core.index.base import VectorIndex

__all__ = ["CALIBRATION_KEY", "QUANTILE", "calibrate", "calibrate_loaded", "threshold_of"]

CALIBRATION_KEY = "calibration"
#: The quantile of the unrelated queries' top-1 scores taken as the threshold.
QUANTILE = 0.99
_QUERIES = 200
_SAMPLE = 2000
_MIN_POINTS = 2


def calibrate(
    index: VectorIndex, name: str, *, queries: int = _QUERIES, seed: int = 0
) -> dict[str, Any] | None:
    """Compute and store the collection's threshold (``queries`` searches of one hit each); the
    stored record, or None (and nothing stored) for a collection with fewer than two points."""
    # Point ids are UUIDv5 digests, so the first page in id order is a sample spread over the
    # whole collection, read without a pass over every vector.
    points, _ = index.scroll_page(name, batch_size=_SAMPLE, with_vectors=True)
    sample = [p.vector for p in points if p.vector is not None]
    if len(sample) < _MIN_POINTS:
        return None
    seen = index.count(name)
    vectors = np.stack(sample).astype(np.float64)
    mean, spread = vectors.mean(axis=0), vectors.std(axis=0)
    draws = np.random.default_rng(seed).normal(size=(queries, vectors.shape[1])) * spread + mean
    top1: list[float] = []
    for query in draws.astype(np.float32):
        if not np.isfinite(query).all() or np.linalg.norm(query) < 1e-12:
            continue
        hits = index.search(name, query, limit=1)
        if hits:
            top1.append(hits[0].score)
    if not top1:
        return None
    record = {
        "threshold": float(np.quantile(np.asarray(top1), QUANTILE)),
        "quantile": QUANTILE,
        "method": "top-1 score of queries drawn from the collection's per-dimension mean and spread",
        "queries": len(top1),
        "points": seen,
        "computed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    index.update_metadata(name, {CALIBRATION_KEY: record})
    return record


def calibrate_loaded(index: VectorIndex, name: str) -> dict[str, Any] | None:
    """`calibrate` as a load ends (after its `VectorIndex.optimize`), where this process searches
    the store; an index that only writes through the owner's API leaves it to the owner, which
    calibrates as it optimizes."""
    if not index.searches_here:
        return None
    return calibrate(index, name)


def threshold_of(metadata: dict[str, Any]) -> float | None:
    """The stored threshold in a collection's metadata, or None when it was never calibrated."""
    record = metadata.get(CALIBRATION_KEY)
    if isinstance(record, dict) and isinstance(record.get("threshold"), int | float):
        return float(record["threshold"])
    return None
