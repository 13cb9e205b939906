"""Vector validation, done before any store call (ingest and query)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from core.errors import InvalidVector

__all__ = ["l2_normalise", "validate_vectors"]


def validate_vectors(vectors: object, dim: int, *, field: str | None = None) -> NDArray[np.float32]:
    """Return ``vectors`` as a C-contiguous float32 ``[n, dim]`` array, L2-normalised.

    Raises `InvalidVector` naming the first offending row for a wrong shape, NaN, Inf or a zero norm
    (with ``field``, the request field the vectors came in, for the error body).
    """
    try:
        # Values beyond float32's range become Inf here and are rejected below, with a message.
        with np.errstate(over="ignore"):
            arr = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidVector(f"vectors must be numeric: {exc}", field=field) from exc
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidVector(f"vectors must be a 2-D array [n, {dim}], got shape {arr.shape}", field=field)
    if arr.shape[1] != dim:
        raise InvalidVector(
            f"wrong vector dimension {arr.shape[1]}, the collection expects {dim}", field=field
        )
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        raise InvalidVector(f"vector {row} contains NaN or Inf", field=field)
    norms = np.linalg.norm(arr, axis=1)
    if (norms < 1e-12).any():
        row = int(np.argmax(norms < 1e-12))
        raise InvalidVector(f"vector {row} has zero norm", field=field)
    return l2_normalise(arr, norms)


def l2_normalise(arr: NDArray[np.float32], norms: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
    if norms is None:
        norms = np.linalg.norm(arr, axis=1)
    return np.ascontiguousarray(arr / norms[:, None], dtype=np.float32)
