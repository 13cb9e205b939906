"""What readers return, and the limits they enforce before decoding pixels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.config import IngestSettings
from core.frame import Frame

__all__ = ["DecodeLimits", "DecodedObject"]


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels_per_frame: int = 8192 * 8192
    max_frames: int = 64  # longer series are sampled evenly down to this many frames
    max_total_pixels: int = 2_000_000_000
    timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, ingest: IngestSettings) -> DecodeLimits:
        return cls(
            max_pixels_per_frame=ingest.max_pixels_per_frame,
            max_frames=ingest.max_frames_per_object,
            timeout_s=ingest.decode_timeout_s,
        )


@dataclass
class DecodedObject:
    """Frames of one object, display-ready (windowed, 8-bit), with the frame index each came from.

    ``labels`` holds label candidates read from the file (``modality``, ``anatomy``); ``meta`` holds
    allow-listable technical fields (``rows``, ``cols``, ``n_frames``, keyed ``study_hash``,
    ``series_hash``, ``instance_hash``, ``patient_hash``) and never raw identifiers.
    """

    frames: list[Frame]
    frame_indices: list[int]
    labels: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
