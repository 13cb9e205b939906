"""What the routes do, as keyword-only blocking functions (the routes run them in worker threads)."""

from __future__ import annotations

import io
import logging
import uuid

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from core.catalog import Catalog, CollectionEntry
from core.config import Settings
from core.errors import BadInput, ObjectNotFound
from core.filter_warnings import StoredValues, filter_warnings
from core.frame import Frame
from core.index.base import Hit, StoredPoint, VectorIndex, point_not_found
from core.metrics import timed_search
from core.payload import SearchFilter
from ingest.readers import DecodedObject, DecodeLimits, decode_object
from ingest.sources import open_source
from search_api.errors import ObjectGone, ObjectQuarantined, UpstreamUnavailable
from search_api.offload import on_index
from search_api.schemas import SearchWarning

__all__ = [
    "decode_upload",
    "embed_frame",
    "embed_text",
    "pick_frame",
    "read_source_object",
    "to_png",
    "read_point",
    "render_thumbnail",
    "source_location",
    "search_warnings",
]

logger = logging.getLogger(__name__)


def read_point(
    *, index: VectorIndex, entry: CollectionEntry, point_id: str, with_vector: bool = False
) -> StoredPoint:
    """One stored point; `PointNotFound` if absent (ids that are not UUIDs cannot exist)."""
    try:
        uuid.UUID(point_id)
    except ValueError:  # cannot be stored: no need to ask the store
        raise point_not_found(entry.name, point_id) from None
    points = index.retrieve(entry.name, [point_id], with_vectors=with_vector)
    if not points:
        raise point_not_found(entry.name, point_id)
    return points[0]


def embed_text(*, catalog: Catalog, entry: CollectionEntry, text: str) -> NDArray[np.float32]:
    """The query vector of a text; `NoTextTower` for image-only encoders."""
    vectors = catalog.encoder(entry.encoder).embed_text([text])
    return np.asarray(vectors[0], dtype=np.float32)


def _decode(data: bytes, key: str, settings: Settings) -> DecodedObject:
    return decode_object(
        data, key, limits=DecodeLimits.from_settings(settings.ingest), hash_key=settings.hash_key_bytes()
    )


def decode_upload(*, settings: Settings, data: bytes, filename: str) -> DecodedObject:
    """An uploaded DICOM/PNG/JPEG decoded as ingest decodes it (identifiers as keyed hashes)."""
    return _decode(data, filename, settings)


def embed_frame(*, catalog: Catalog, entry: CollectionEntry, frame: Frame) -> NDArray[np.float32]:
    """The query vector of one frame, by the collection's encoder."""
    vectors = catalog.encoder(entry.encoder).embed([frame])
    return np.asarray(vectors[0], dtype=np.float32)


async def search_near_point(
    *,
    index: VectorIndex,
    entry: CollectionEntry,
    point_id: str,
    search_filter: SearchFilter | None,
    limit: int,
    offset: int,
    score_threshold: float | None,
) -> list[Hit]:
    """Filtered k-NN around a stored point (the point itself left out), awaited on the index."""
    with timed_search(entry.name, search_filter):
        return await index.search_near_point_async(
            entry.name,
            point_id,
            filter=search_filter,
            limit=limit,
            offset=offset,
            score_threshold=score_threshold,
        )


def search_warnings(
    *,
    index: VectorIndex,
    entry: CollectionEntry,
    search_filter: SearchFilter | None,
    stored: StoredValues,
    ungroupable: str | None,
) -> list[SearchWarning]:
    """The warnings of a search: one per filter value no point of the collection holds (none
    without a filter), and one for the ``group_by`` no hit could be grouped by
    (`search_api.results.Found.ungroupable`)."""
    warnings = [
        SearchWarning.model_validate(w.to_dict())
        for w in filter_warnings(index, entry.name, search_filter, stored)
    ]
    if ungroupable is not None:
        warnings.append(
            SearchWarning(
                field="group_by",
                value=ungroupable,
                message=f"group_by {ungroupable!r} found no group: no hit holds a {ungroupable} (PNG and "
                "other non-DICOM images have none); search without group_by, or group_by object",
                suggestions=[],
            )
        )
    return warnings


async def search_warnings_async(
    *,
    index: VectorIndex,
    entry: CollectionEntry,
    search_filter: SearchFilter | None,
    stored: StoredValues,
    ungroupable: str | None,
) -> list[SearchWarning]:
    """`search_warnings` from the event loop: inline where the cache answers (set lookups), else
    in a worker thread, which reads the store."""
    if stored.answers(entry.name, search_filter):
        return search_warnings(
            index=index, entry=entry, search_filter=search_filter, stored=stored, ungroupable=ungroupable
        )
    return await on_index(
        index,
        search_warnings,
        index=index,
        entry=entry,
        search_filter=search_filter,
        stored=stored,
        ungroupable=ungroupable,
    )


def to_png(frame: Frame, size: int | None) -> bytes:
    """A PNG of ``frame``, longest side ``size`` (None: as it is), nothing of any header."""
    pixels = np.ascontiguousarray(frame, dtype=np.uint8)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    image = Image.fromarray(pixels)
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    if size is not None:
        width, height = image.size
        scale = size / max(width, height)
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(target, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    # a fresh image from pixels carries no metadata; nothing of the source's header is copied
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def source_location(catalog: Catalog, collection: str, point: StoredPoint) -> str | None:
    """Where the point's object is read from: the URI its collection registered for the payload's
    source name; a v1 payload's source that is itself a URI or an absolute path; else None."""
    name = point.payload.get("source")
    if not isinstance(name, str):
        return None
    uri = catalog.source_uri(collection, name)
    if uri is None and (name.startswith("s3://") or name.startswith("/")):
        return name
    return uri


def read_source_object(
    *, settings: Settings, point: StoredPoint, source_uri: str | None, accept_burned_in: bool = False
) -> tuple[bytes, DecodedObject]:
    """The bytes of the point's object, read from ``source_uri`` (`source_location`) and decoded
    as it is now: `ObjectGone` (404) when it was deleted, `ObjectQuarantined` (410) when it
    carries burned-in annotation (`burned_in_reason`) and the collection did not accept such
    objects (``accept_burned_in``), `UpstreamUnavailable` (502) when it cannot be read."""
    from ingest.pipeline import burned_in_reason

    key = point.payload.get("key")
    if source_uri is None or not isinstance(key, str):
        raise UpstreamUnavailable(
            f"the source object of point {point.id!r} cannot be read: its source is not registered here"
        )
    try:
        source = open_source(source_uri, settings)
        try:
            data = source.fetch(key)
        finally:
            source.close()
        decoded = _decode(data, key, settings)
    except ObjectNotFound:
        raise ObjectGone(
            f"the source object of point {point.id!r} no longer exists; its points go with "
            "the next prune or reconcile"
        ) from None
    except BadInput as exc:
        logger.warning("thumbnail source undecodable for point %s: %s", point.id, type(exc).__name__)
        raise UpstreamUnavailable(f"the source object of point {point.id!r} cannot be read") from exc
    except Exception as exc:
        # any failure to reach or read the store is the upstream's, never the client's (502)
        logger.warning("thumbnail source unreadable for point %s: %s", point.id, type(exc).__name__)
        raise UpstreamUnavailable(f"the source object of point {point.id!r} cannot be read") from exc
    if not accept_burned_in and burned_in_reason(decoded.meta, decoded.labels) is not None:
        raise ObjectQuarantined(
            f"the source object of point {point.id!r} is quarantined (burned-in annotation) and "
            "its collection does not accept burned-in objects: no pixels are served"
        )
    return data, decoded


def pick_frame(decoded: DecodedObject, frame_index: int) -> tuple[int, Frame]:
    """The decoded frame nearest to the file's frame ``frame_index`` (readers sample long
    series), and the file's index of it."""
    if not decoded.frames:
        raise UpstreamUnavailable("the source object has no image frames")
    indices = decoded.frame_indices or list(range(len(decoded.frames)))
    nearest = min(range(len(indices)), key=lambda i: abs(indices[i] - frame_index))
    return indices[nearest], decoded.frames[nearest]


def render_thumbnail(
    *,
    settings: Settings,
    point: StoredPoint,
    size: int,
    source_uri: str | None,
    accept_burned_in: bool = False,
) -> bytes:
    """A PNG of the point's frame, longest side ``size``, rendered from pixels only; errors as
    `read_source_object`."""
    _, decoded = read_source_object(
        settings=settings, point=point, source_uri=source_uri, accept_burned_in=accept_burned_in
    )
    frame_index = int(point.payload.get("frame", 0) or 0)
    return to_png(pick_frame(decoded, frame_index)[1], size)
