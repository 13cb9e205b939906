"""Images for the viewer: a stored point's frame or an uploaded file's, as a PNG in a chosen window.

Pixels only (`ingest.readers.windowing`): overlays and burned-in text of quarantined objects are
never served; a stored object is read and checked as thumbnails are (`services.read_source_object`).
Blocking functions; the routes run them in worker threads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.catalog import CollectionEntry
from core.config import Settings
from core.frame import Frame
from core.index.base import StoredPoint
from core.suggest import did_you_mean
from ingest.readers import DecodedObject
from ingest.readers.windowing import WINDOW_PRESETS, apply_window, window_dicom_frame
from search_api import services
from search_api.errors import ObjectQuarantined
from search_api.results import InvalidQuery

__all__ = ["WINDOW_DESCRIPTION", "Rendered", "Window", "parse_window", "render_point", "render_upload"]

WINDOW_DESCRIPTION = (
    f"{', '.join(WINDOW_PRESETS)} (CT presets: "
    + ", ".join(f"{name} {c:g}/{w:g}" for name, (c, w) in WINDOW_PRESETS.items())
    + " HU), auto (the file's own window), or C,W (center,width). A grey DICOM is windowed over "
    "its modality values (HU for CT); PNG, JPEG and colour images over their 0-255 display values"
)


@dataclass(frozen=True)
class Window:
    """A window: None for the file's own (``auto``), else (center, width)."""

    center: float | None = None
    width: float | None = None


@dataclass(frozen=True)
class Rendered:
    png: bytes
    frame: int  # the file's frame index rendered
    frames: int  # the frames decoded from the file (long series are sampled)


def parse_window(raw: str | None) -> Window:
    """``lung|bone|brain|soft-tissue|auto|C,W`` → `Window`; `InvalidQuery` naming ``window``."""
    text = (raw or "auto").strip().lower()
    if text == "auto":
        return Window()
    if text in WINDOW_PRESETS:
        center, width = WINDOW_PRESETS[text]
        return Window(center, width)
    parts = text.split(",")
    try:
        center, width = (float(part) for part in parts) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        center = width = math.nan
    if not (math.isfinite(center) and math.isfinite(width)) or width < 1 or abs(center) > 1e6 or width > 1e6:
        meant = did_you_mean(text, [*WINDOW_PRESETS, "auto"]) if len(parts) == 1 else ""
        raise InvalidQuery(
            "window",
            f"a window is one of {', '.join(WINDOW_PRESETS)}, auto, or C,W with width 1 to 1e6{meant}",
        )
    return Window(center, width)


def _windowed(
    data: bytes, key: str, decoded: DecodedObject, frame_index: int, window: Window
) -> tuple[int, Frame]:
    index, frame = services.pick_frame(decoded, frame_index)
    if window.center is None or window.width is None:
        return index, frame
    if data[128:132] == b"DICM":
        windowed = window_dicom_frame(data, key, index, window.center, window.width)
        if windowed is not None:
            return index, windowed
    return index, apply_window(frame, window.center, window.width)


def render_point(
    *,
    settings: Settings,
    entry: CollectionEntry,
    point: StoredPoint,
    source_uri: str | None,
    window: Window,
    size: int | None,
) -> Rendered:
    """The point's frame in ``window``, longest side ``size`` (None: native size)."""
    data, decoded = services.read_source_object(
        settings=settings, point=point, source_uri=source_uri, accept_burned_in=entry.accept_burned_in
    )
    key = str(point.payload.get("key"))
    index, frame = _windowed(data, key, decoded, int(point.payload.get("frame", 0) or 0), window)
    return Rendered(services.to_png(frame, size), index, len(decoded.frames))


def render_upload(
    *, settings: Settings, data: bytes, filename: str, frame: int | None, window: Window, size: int | None
) -> Rendered:
    """An uploaded file's frame ``frame`` (None: the middle decoded frame, the one a search by
    this upload embeds) in ``window``; a DICOM flagged for burned-in annotation is refused (410)
    as a quarantined stored object is."""
    from ingest.pipeline import burned_in_reason

    decoded = services.decode_upload(settings=settings, data=data, filename=filename)
    if not decoded.frames:
        raise InvalidQuery("file", f"{filename}: no image frames")
    if burned_in_reason(decoded.meta, decoded.labels) is not None:
        raise ObjectQuarantined(f"{filename} carries burned-in annotation: no pixels are served")
    indices = decoded.frame_indices or list(range(len(decoded.frames)))
    wanted = indices[len(indices) // 2] if frame is None else frame
    if wanted >= int(decoded.meta.get("n_frames", len(indices)) or len(indices)):
        raise InvalidQuery("frame", f"{filename} has no frame {wanted}")
    index, pixels = _windowed(data, filename, decoded, wanted, window)
    return Rendered(services.to_png(pixels, size), index, len(decoded.frames))
