"""What an evaluation runs on: an index set and a query set of labelled vectors.

Two sources give the same structure: a collection (points of the index/query splits, labels from the
payload) and files (the paper's embeddings, `.npy` or one-dataset-per-image `.h5`, plus its labels
CSV: ``filepath, dataset, split, modality, anatomic_region``, then one one-hot column per label).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from core.errors import EvalInputError, os_reason
from core.index.base import VectorIndex
from core.payload import SearchFilter
from core.suggest import did_you_mean

__all__ = [
    "CSV_FIXED_COLUMNS",
    "CSV_GROUP_COLUMNS",
    "PAYLOAD_GROUP_FIELDS",
    "EvalData",
    "EvalInputError",
    "LabelledSet",
    "Record",
    "build_eval_data",
    "class_of_payload",
    "export_collection",
    "load_collection",
    "load_files",
]

CSV_FIXED_COLUMNS: tuple[str, ...] = ("filepath", "dataset", "split", "modality", "anatomic_region")
# --exclude-same patient|study: the payload field of a collection, and the CSV columns tried in order.
PAYLOAD_GROUP_FIELDS: dict[str, str] = {"patient": "patient_hash", "study": "study_hash"}
CSV_GROUP_COLUMNS: dict[str, tuple[str, ...]] = {
    "patient": ("patient_hash", "patient_id", "patient"),
    "study": ("study_hash", "study_id", "study"),
}
_POSITIVE = frozenset({"1", "1.0", "1.00", "True", "true"})

IntArray = NDArray[np.int64]
Vectors = NDArray[np.float32]


@dataclass(frozen=True)
class Record:
    """One image: id, class (the paper's full label), modality, region, optional patient/study group."""

    id: str
    label: str
    modality: str
    region: str
    group: str | None = None


@dataclass
class LabelledSet:
    """Images as integer codes into `EvalData`'s vocabularies; ``groups`` -1 = no group."""

    ids: list[str]
    labels: IntArray
    anatomy: IntArray
    modality: IntArray
    groups: IntArray
    vectors: Vectors

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: IntArray) -> LabelledSet:
        return LabelledSet(
            ids=[self.ids[int(i)] for i in rows],
            labels=self.labels[rows],
            anatomy=self.anatomy[rows],
            modality=self.modality[rows],
            groups=self.groups[rows],
            vectors=self.vectors[rows],
        )


@dataclass
class EvalData:
    """Index and queries sharing one vocabulary of classes, anatomies (modality/region) and modalities."""

    index: LabelledSet
    queries: LabelledSet
    classes: list[str]
    anatomies: list[str]
    modalities: list[str]
    source: str
    group_field: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)


class _Vocab:
    def __init__(self) -> None:
        self.codes: dict[str, int] = {}

    def __call__(self, value: str) -> int:
        return self.codes.setdefault(value, len(self.codes))

    def names(self) -> list[str]:
        return list(self.codes)


def _normalise_rows(vectors: NDArray[Any]) -> Vectors:
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    arr /= norms
    return arr


def build_eval_data(
    index_records: Sequence[Record],
    index_vectors: NDArray[Any],
    query_records: Sequence[Record],
    query_vectors: NDArray[Any],
    *,
    source: str,
    group_field: str | None = None,
) -> EvalData:
    """Encode labels and groups, L2-normalise vectors (cosine = inner product)."""
    classes, anatomies, modalities, groups = _Vocab(), _Vocab(), _Vocab(), _Vocab()

    def encode(records: Sequence[Record], vectors: NDArray[Any]) -> LabelledSet:
        if len(records) != vectors.shape[0]:
            raise EvalInputError(f"{len(records)} labelled images but {vectors.shape[0]} vectors")
        rows = vectors.reshape(len(records), -1)
        unusable = ~np.isfinite(rows).all(axis=1) | ~rows.any(axis=1)
        if unusable.any():
            first = int(np.argmax(unusable))
            raise EvalInputError(
                f"{source}: {int(unusable.sum())} embedding(s) hold NaN, infinite values or only zeros, "
                f"which no cosine can rank (first: {records[first].id})"
            )
        return LabelledSet(
            ids=[r.id for r in records],
            labels=np.array([classes(r.label) for r in records], dtype=np.int64),
            anatomy=np.array([anatomies(f"{r.modality}/{r.region}") for r in records], dtype=np.int64),
            modality=np.array([modalities(r.modality) for r in records], dtype=np.int64),
            groups=np.array([groups(r.group) if r.group else -1 for r in records], dtype=np.int64),
            vectors=_normalise_rows(rows),
        )

    if not index_records:
        raise EvalInputError(f"{source}: the index set is empty")
    if not query_records:
        raise EvalInputError(f"{source}: the query set is empty")
    index = encode(index_records, index_vectors)
    queries = encode(query_records, query_vectors)
    if index.vectors.shape[1] != queries.vectors.shape[1]:
        raise EvalInputError(
            f"index vectors are {index.vectors.shape[1]}-d but query vectors {queries.vectors.shape[1]}-d"
        )
    return EvalData(
        index=index,
        queries=queries,
        classes=classes.names(),
        anatomies=anatomies.names(),
        modalities=modalities.names(),
        source=source,
        group_field=group_field,
    )


# ---------------------------------------------------------------------------------------- collection


def class_of_payload(payload: dict[str, Any]) -> str:
    """The paper's class of a point: ``modality/anatomy/pathology`` (several pathologies joined by +)."""
    pathology = payload.get("pathology") or ["-"]
    if isinstance(pathology, str):
        pathology = [pathology]
    return f"{payload.get('modality', '-')}/{payload.get('anatomy', '-')}/{'+'.join(sorted(pathology))}"


def _record_of_payload(point_id: str, payload: dict[str, Any], group_field: str | None) -> Record:
    group = payload.get(group_field) if group_field else None
    return Record(
        id=point_id,
        label=class_of_payload(payload),
        modality=str(payload.get("modality", "-")),
        region=str(payload.get("anatomy", "-")),
        group=str(group) if group else None,
    )


def _scroll_split(
    index: VectorIndex, collection: str, splits: Sequence[str], group_field: str | None
) -> tuple[list[Record], Vectors]:
    records: list[Record] = []
    rows: list[NDArray[np.float32]] = []
    for point in index.scroll(collection, filter=SearchFilter(split=list(splits)), with_vectors=True):
        if point.vector is None:
            raise EvalInputError(f"collection {collection!r}: point {point.id} came back without its vector")
        records.append(_record_of_payload(point.id, point.payload, group_field))
        rows.append(point.vector)
    matrix = np.stack(rows) if rows else np.zeros((0, 1), dtype=np.float32)
    return records, matrix.astype(np.float32, copy=False)


def _no_points_in(index: VectorIndex, collection: str, splits: Sequence[str]) -> EvalInputError:
    """The error for splits no point holds, with the split meant and those the collection holds."""
    held = sorted(index.facet(collection, "split", limit=100))
    meant = did_you_mean(splits[0], held) if len(splits) == 1 else ""
    return EvalInputError(
        f"collection {collection!r} has no points with split {'/'.join(splits)}{meant}; "
        f"it holds {', '.join(held) if held else 'no split labels'}"
    )


def load_collection(
    index: VectorIndex,
    collection: str,
    *,
    index_splits: Sequence[str] = ("train",),
    query_splits: Sequence[str] = ("test",),
    exclude_same: str | None = None,
) -> EvalData:
    """Index = points of ``index_splits``, queries = points of ``query_splits``, with their vectors."""
    if set(index_splits) & set(query_splits):
        raise EvalInputError("index and query splits overlap: every query would find itself")
    group_field = PAYLOAD_GROUP_FIELDS[exclude_same] if exclude_same else None
    index_records, index_vectors = _scroll_split(index, collection, index_splits, group_field)
    query_records, query_vectors = _scroll_split(index, collection, query_splits, group_field)
    for records, splits in ((index_records, index_splits), (query_records, query_splits)):
        if not records:
            raise _no_points_in(index, collection, splits)
    return build_eval_data(
        index_records,
        index_vectors,
        query_records,
        query_vectors,
        source=f"collection {collection}",
        group_field=group_field,
    )


def export_collection(
    index: VectorIndex,
    collection: str,
    embeddings_path: Path,
    labels_csv: Path,
    *,
    splits: Sequence[str] = ("train", "test"),
    group_by: str | None = None,
) -> int:
    """Write a collection's vectors (``.npy``, in CSV row order) and labels in the paper's CSV schema.

    ``filepath`` is the point id; the one-hot columns are the collection's classes. With
    ``group_by`` ("patient" or "study"), that payload hash is written to an extra column named
    after the payload field. Returns the number of rows.
    """
    points = list(index.scroll(collection, filter=SearchFilter(split=list(splits)), with_vectors=True))
    labels = sorted({class_of_payload(p.payload) for p in points})
    payload_field = PAYLOAD_GROUP_FIELDS[group_by] if group_by else None
    with labels_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*CSV_FIXED_COLUMNS, *([payload_field] if payload_field else []), *labels])
        for p in points:
            own = class_of_payload(p.payload)
            extra = [p.payload.get(payload_field) or ""] if payload_field else []
            writer.writerow(
                [
                    p.id,
                    p.payload.get("dataset", ""),
                    p.payload.get("split", ""),
                    p.payload.get("modality", "-"),
                    p.payload.get("anatomy", "-"),
                    *extra,
                    *("1" if label == own else "0" for label in labels),
                ]
            )
    vectors = np.stack([p.vector for p in points if p.vector is not None]) if points else np.zeros((0, 1))
    np.save(embeddings_path, vectors.astype(np.float32))
    return len(points)


# --------------------------------------------------------------------------------------------- files


@dataclass(frozen=True)
class _CsvRow:
    record: Record
    split: str


def _row_label(values: list[str], names: list[str], where: str) -> str:
    positives = sum(values.count(p) for p in _POSITIVE)
    if positives == 1:
        for p in _POSITIVE:
            if p in values:
                return names[values.index(p)]
    # Slow path for unusual spellings ("1e0", " 1"); zero or several positives is an error.
    try:
        found = [names[i] for i, v in enumerate(values) if v.strip() and float(v) != 0.0]
    except ValueError:
        raise EvalInputError(
            f"{where}: label columns hold numbers (1 for the image's label, else 0)"
        ) from None
    if len(found) != 1:
        raise EvalInputError(
            f"{where}: expected exactly one positive label column, found {len(found)}: {found[:5]}"
        )
    return found[0]


def read_labels_csv(
    paths: Sequence[Path], *, group_column: str | None = None, group_candidates: Sequence[str] = ()
) -> tuple[list[_CsvRow], str | None]:
    """Rows of one or more CSVs in the paper's schema (label columns unioned, missing = 0).

    Returns the rows and the group column used (``group_column``, else the first of
    ``group_candidates`` present in every CSV, else None).
    """
    rows: list[_CsvRow] = []
    used_group: str | None = group_column
    for path in paths:
        try:
            file_rows, used_group = _read_labels_file(path, group_column, group_candidates, used_group)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise EvalInputError(
                f"{path}: cannot read the labels: {os_reason(exc, 'not a UTF-8 CSV file')}"
            ) from None
        rows.extend(file_rows)
    return rows, used_group


def _read_labels_file(
    path: Path, group_column: str | None, group_candidates: Sequence[str], used_group: str | None
) -> tuple[list[_CsvRow], str | None]:
    rows: list[_CsvRow] = []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise EvalInputError(f"{path}: empty CSV") from None
        if tuple(header[:5]) != CSV_FIXED_COLUMNS:
            raise EvalInputError(
                f"{path}: the first columns must be {', '.join(CSV_FIXED_COLUMNS)}; got {header[:5]}"
            )
        if group_column is None and group_candidates and used_group is None:
            used_group = next((c for c in group_candidates if c in header), None)
        if used_group is not None and used_group not in header:
            raise EvalInputError(f"{path}: no column {used_group!r} to group by")
        extra = {c for c in (*CSV_GROUP_COLUMNS["patient"], *CSV_GROUP_COLUMNS["study"], used_group) if c}
        label_cols = [i for i, name in enumerate(header) if i >= 5 and name not in extra]
        if not label_cols:
            raise EvalInputError(f"{path}: no label columns after {', '.join(CSV_FIXED_COLUMNS)}")
        names = [header[i] for i in label_cols]
        group_at = header.index(used_group) if used_group is not None else None
        first, last = label_cols[0], label_cols[-1] + 1
        contiguous = label_cols == list(range(first, last))
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 5 or (group_at is not None and len(row) <= group_at):
                raise EvalInputError(f"{path}:{line}: {len(row)} columns, fewer than the header names")
            values = row[first:last] if contiguous else [row[i] if i < len(row) else "" for i in label_cols]
            label = _row_label(values, names, f"{path}:{line}")
            group = row[group_at].strip() if group_at is not None else ""
            rows.append(
                _CsvRow(
                    record=Record(
                        id=row[0], label=label, modality=row[3], region=row[4], group=group or None
                    ),
                    split=row[2],
                )
            )
    return rows, used_group


def _read_ids(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalInputError(
            f"{path}: cannot read the ids: {os_reason(exc, 'not a UTF-8 text file')}"
        ) from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EvalInputError(f"{path}: not JSON (line {exc.lineno})") from None
        if not isinstance(data, list):
            raise EvalInputError(f"{path}: expected a JSON list of file paths")
        return [str(v) for v in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


def _load_npy(path: Path) -> NDArray[Any]:
    """A ``.npy`` array, memory-mapped; `EvalInputError` naming the file when it is not one."""
    try:
        array: NDArray[Any] = np.load(path, mmap_mode="r")  # never pickles: allow_pickle is off
    except (OSError, ValueError) as exc:
        reason = os_reason(exc, "not a NumPy .npy array of numbers")
        raise EvalInputError(f"{path}: cannot read the embeddings: {reason}") from None
    return array


def _open_h5(h5py: Any, path: Path) -> Any:
    """An HDF5 file opened for reading; `EvalInputError` naming the file when it is not one."""
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise EvalInputError(
            f"{path}: cannot read the embeddings: {os_reason(exc, 'not an HDF5 file')}"
        ) from None


def _vectors_from_npy(
    paths: Sequence[Path], ids_path: Path | None, wanted: Sequence[str], csv_order: Sequence[str]
) -> tuple[Vectors, list[bool]]:
    arrays = [_load_npy(p) for p in paths]
    for p, a in zip(paths, arrays, strict=True):
        if a.ndim != 2:
            raise EvalInputError(f"{p}: expected a 2-D [n, dim] array, got shape {a.shape}")
    matrix = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    ids = _read_ids(ids_path) if ids_path is not None else list(csv_order)
    if len(ids) != matrix.shape[0]:
        source = str(ids_path) if ids_path else "the labels CSV rows (no --ids given)"
        raise EvalInputError(f"{matrix.shape[0]} embeddings but {len(ids)} ids in {source}")
    position = {fp: i for i, fp in enumerate(ids)}
    rows = [position.get(fp, -1) for fp in wanted]
    found = [r >= 0 for r in rows]
    take = np.array([r for r in rows if r >= 0], dtype=np.int64)
    return np.asarray(matrix[take], dtype=np.float32), found


def _vectors_from_h5(paths: Sequence[Path], wanted: Sequence[str]) -> tuple[Vectors, list[bool]]:
    try:
        import h5py
    except ImportError as exc:  # pragma: no cover - h5py is a dev extra
        raise EvalInputError("reading .h5 embeddings needs h5py (pip install h5py)") from exc
    files: list[Any] = []
    try:
        files.extend(_open_h5(h5py, p) for p in paths)
        found: list[bool] = []
        out: NDArray[np.float32] | None = None
        filled = 0
        for fp in wanted:
            vector = None
            for f in files:
                # The paper's code writes one dataset per image, named by its file path.
                item = f.get(fp)
                if item is not None and isinstance(item, h5py.Dataset):
                    vector = np.asarray(item[()], dtype=np.float32).reshape(-1)
                    break
            found.append(vector is not None)
            if vector is None:
                continue
            if out is None:
                out = np.empty((len(wanted), vector.shape[0]), dtype=np.float32)
            out[filled] = vector
            filled += 1
        if out is None:
            return np.zeros((0, 1), dtype=np.float32), found
        return out[:filled], found
    finally:
        for f in files:
            f.close()


def load_files(
    embeddings: Sequence[Path],
    labels: Sequence[Path],
    *,
    ids: Path | None = None,
    index_splits: Sequence[str] = ("train",),
    query_splits: Sequence[str] = ("test",),
    exclude_same: str | None = None,
    group_column: str | None = None,
) -> EvalData:
    """Embeddings (``.npy`` + ids, or the paper's ``.h5``) joined to labels CSVs by file path.

    Without ``ids``, ``.npy`` rows are taken to be in the order of the (concatenated) CSV rows.
    Images without an embedding are left out and counted in ``notes["missing_embeddings"]``.
    """
    if not embeddings:
        raise EvalInputError("no embeddings file given")
    if set(index_splits) & set(query_splits):
        raise EvalInputError("index and query splits overlap: every query would find itself")
    candidates = CSV_GROUP_COLUMNS[exclude_same] if exclude_same else ()
    rows, used_group = read_labels_csv(
        labels,
        group_column=group_column if exclude_same or group_column else None,
        group_candidates=candidates,
    )
    if exclude_same and used_group is None:
        raise EvalInputError(
            f"--exclude-same {exclude_same}: the labels CSV has none of the columns {', '.join(candidates)} "
            "(name one with --group-column)"
        )
    csv_order = [r.record.id for r in rows]
    index_rows = [r.record for r in rows if r.split in index_splits]
    query_rows = [r.record for r in rows if r.split in query_splits]
    wanted = [r.id for r in index_rows] + [r.id for r in query_rows]
    kinds = {p.suffix.lower() for p in embeddings}
    if kinds <= {".npy"}:
        vectors, found = _vectors_from_npy(embeddings, ids, wanted, csv_order)
    elif kinds <= {".h5", ".hdf5"}:
        vectors, found = _vectors_from_h5(embeddings, wanted)
    else:
        raise EvalInputError(f"embeddings must be .npy or .h5 files, got {sorted(kinds)}")
    for kind, splits, chosen in (("index", index_splits, index_rows), ("queries", query_splits, query_rows)):
        if not chosen:
            present = sorted({r.split for r in rows})
            raise EvalInputError(
                f"the labels CSV has no rows with split {', '.join(splits)} (the {kind}); its splits: "
                f"{', '.join(present) or 'none'}"
            )
    n_index = len(index_rows)
    index_found = found[:n_index]
    query_found = found[n_index:]
    kept_index = [r for r, ok in zip(index_rows, index_found, strict=True) if ok]
    kept_queries = [r for r, ok in zip(query_rows, query_found, strict=True) if ok]
    data = build_eval_data(
        kept_index,
        vectors[: len(kept_index)],
        kept_queries,
        vectors[len(kept_index) :],
        source=", ".join(str(p) for p in embeddings),
        group_field=used_group if exclude_same else None,
    )
    data.notes["missing_embeddings"] = len(wanted) - len(kept_index) - len(kept_queries)
    return data
