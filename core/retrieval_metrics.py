"""The reference paper's retrieval metric (modified precision at k), micro and macro.

For a query of class y with C_y index images of class y, n = min(k, C_y) and
P@k = (neighbours of class y among the top n) / n. Micro = mean over queries, macro = mean over
classes of the per-class mean. Queries whose class has no index images are left out (and counted).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DEFAULT_KS", "chance_precision", "modified_precision_at_k"]

DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10)


def modified_precision_at_k(
    query_labels: Sequence[str],
    neighbour_labels: Sequence[Sequence[str]],
    index_class_counts: Mapping[str, int],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, Any]:
    """``{"micro": {"P@k": ...}, "macro": {...}, "n_queries", "n_skipped_queries"}``.

    ``neighbour_labels[i]`` are the classes of query i's hits, best first (at least max(ks) long
    where the index allows).
    """
    per_class: dict[int, dict[str, list[float]]] = {k: defaultdict(list) for k in ks}
    used = 0
    for label, neighbours in zip(query_labels, neighbour_labels, strict=True):
        c_y = index_class_counts.get(label, 0)
        if c_y == 0:
            continue
        used += 1
        for k in ks:
            n = min(k, c_y)
            hits = sum(1 for other in neighbours[:n] if other == label)
            per_class[k][label].append(hits / n)
    micro: dict[str, float] = {}
    macro: dict[str, float] = {}
    for k in ks:
        values = [v for vs in per_class[k].values() for v in vs]
        micro[f"P@{k}"] = sum(values) / len(values) if values else 0.0
        class_means = [sum(vs) / len(vs) for vs in per_class[k].values()]
        macro[f"P@{k}"] = sum(class_means) / len(class_means) if class_means else 0.0
    return {
        "micro": micro,
        "macro": macro,
        "n_queries": used,
        "n_skipped_queries": len(query_labels) - used,
    }


def chance_precision(query_labels: Sequence[str], index_labels: Sequence[str]) -> float:
    """Expected micro P@k of a random ranking: mean over queries of C_y / N (the same for every k)."""
    counts = Counter(index_labels)
    total = len(index_labels)
    scored = [counts[label] / total for label in query_labels if counts.get(label)]
    return sum(scored) / len(scored) if scored else 0.0
