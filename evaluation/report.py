"""Output of an evaluation: markdown tables, the index-size plot, and strict JSON."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["comparison_table", "json_safe", "plot_index_size_curve", "to_markdown"]


def json_safe(obj: Any) -> Any:
    """NaN/Inf become null, so the output is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def _fmt(value: Any) -> str:
    if value is None:  # a NaN metric that went through JSON (a server's evaluation)
        return "–"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _row(name: str, values: dict[str, float], prefix: str, ks: Sequence[int]) -> str:
    return "| " + " | ".join([name, *(_fmt(values.get(f"{prefix}@{k}", float("nan"))) for k in ks)]) + " |"


def _header(first: str, ks: Sequence[int], prefix: str = "P") -> list[str]:
    cols = [first, *(f"{prefix}@{k}" for k in ks)]
    return ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * len(ks)) + "|"]


def to_markdown(result: dict[str, Any], title: str | None = None) -> str:
    """The result of `evaluate` as markdown: headline table, breakdowns, exclusion, curve."""
    ks: list[int] = result["ks"]
    search = result["search"]
    lines: list[str] = []
    if title:
        lines += [f"### {title}", ""]
    lines += [
        f"{result['source']}: {result['n_queries']} queries ({result['n_skipped_queries']} skipped: "
        f"class absent from the index), index {result['n_index']}, {result['n_classes']} classes, "
        f"search {search}.",
        "",
        *_header("metric", ks),
        _row(f"micro P ({search})", result["micro"], "P", ks),
        _row(f"macro P ({search})", result["macro"], "P", ks),
    ]
    if "exact" in result:
        lines.append(_row("micro P (exact)", result["exact"]["micro"], "P", ks))
        lines.append(_row("macro P (exact)", result["exact"]["macro"], "P", ks))
    lines += [
        _row("micro mAP", result["map"]["micro"], "mAP", ks),
        _row("macro mAP", result["map"]["macro"], "mAP", ks),
        _row("micro majority-vote acc", result["majority_vote"]["micro"], "acc", ks),
        _row("macro majority-vote acc", result["majority_vote"]["macro"], "acc", ks),
        _row("anatomy-level micro P", result["levels"]["anatomy"]["micro"], "P", ks),
        _row("anatomy-level macro P", result["levels"]["anatomy"]["macro"], "P", ks),
    ]
    chance = result["chance"]
    lines.append(_row("chance micro P", {f"P@{k}": chance["micro"] for k in ks}, "P", ks))
    lines.append(_row("chance macro P", {f"P@{k}": chance["macro"] for k in ks}, "P", ks))
    if "ann_recall" in result:
        lines.append(_row("ANN recall vs exact", result["ann_recall"], "R", ks))
    if "exclude_same" in result:
        ex = result["exclude_same"]
        lines.append(_row(f"micro P, same {ex['field']} excluded", ex["micro"], "P", ks))
        lines.append(_row(f"macro P, same {ex['field']} excluded", ex["macro"], "P", ks))
    if "grouped" in result:
        grouped = result["grouped"]
        how = f"by {grouped['group_by']}" + (
            f", same {grouped['exclude_same']} excluded" if grouped.get("exclude_same") else ""
        )
        lines.append(_row(f"micro P, grouped {how}", grouped["micro"], "P", ks))
        lines.append(_row(f"macro P, grouped {how}", grouped["macro"], "P", ks))
    lines += ["", "Per modality (pathology level = full class; anatomy level = modality/region):", ""]
    lines += [
        "| modality | queries | "
        + " | ".join(f"micro P@{k}" for k in ks)
        + " | "
        + " | ".join(f"macro P@{k}" for k in ks)
        + " | anatomy micro P@1 |",
        "|---|---:|" + "---:|" * (2 * len(ks) + 1),
    ]
    for name, block in sorted(result["per_modality"].items()):
        cells = [
            name,
            str(block["n_queries"]),
            *(_fmt(block["micro"][f"P@{k}"]) for k in ks),
            *(_fmt(block["macro"][f"P@{k}"]) for k in ks),
            _fmt(block["anatomy"]["micro"][f"P@{ks[0]}"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if "index_size_curve" in result:
        lines += [
            "",
            "Index-size curve (exact search, index subsampled with a fixed seed; queries whose class"
            " is absent from the subsample are not scored):",
            "",
        ]
        lines += [
            "| fraction | index | queries scored | "
            + " | ".join(f"micro P@{k}" for k in ks)
            + " | "
            + " | ".join(f"macro P@{k}" for k in ks)
            + " | chance (micro) |",
            "|---:|---:|---:|" + "---:|" * (2 * len(ks) + 1),
        ]
        for point in result["index_size_curve"]:
            cells = [
                f"{point['fraction']:g}",
                str(point["n_index"]),
                str(point["n_queries"]),
                *(_fmt(point["micro"][f"P@{k}"]) for k in ks),
                *(_fmt(point["macro"][f"P@{k}"]) for k in ks),
                _fmt(point["chance"]["micro"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_table(results: dict[str, dict[str, Any]], ks: Sequence[int]) -> str:
    """One row per (name, micro|macro) across several results, e.g. encoders or search modes."""
    lines = _header("run", ks)
    for name, result in results.items():
        lines.append(_row(f"{name} micro", result["micro"], "P", ks))
        lines.append(_row(f"{name} macro", result["macro"], "P", ks))
    return "\n".join(lines) + "\n"


def plot_index_size_curve(result: dict[str, Any], path: Path) -> None:
    """P@k (micro, solid; macro, dashed) against index size on a log axis, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result.get("index_size_curve")
    if not curve:
        raise ValueError("the result has no index-size curve (give index fractions)")
    sizes = [p["n_index"] for p in curve]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for k in result["ks"]:
        line = ax.plot(sizes, [p["micro"][f"P@{k}"] for p in curve], marker="o", label=f"micro P@{k}")
        ax.plot(
            sizes,
            [p["macro"][f"P@{k}"] for p in curve],
            linestyle="--",
            color=line[0].get_color(),
            label=f"macro P@{k}",
        )
    ax.plot(sizes, [p["chance"]["micro"] for p in curve], color="grey", linestyle=":", label="chance (micro)")
    ax.set_xscale("log")
    ax.set_xlabel("index size (images)")
    ax.set_ylabel("modified precision")
    ax.set_ylim(0, 1)
    ax.set_title(f"Index-size curve: {result['source']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
