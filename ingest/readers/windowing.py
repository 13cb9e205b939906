"""Re-windowing one frame for a viewer: a window (center, width) instead of the file's own.

A grey DICOM frame is windowed from its modality-LUT values (Hounsfield units for CT), as
`ingest.readers.dicom` windows it but with the window given; MONOCHROME1 stays inverted. Anything
else (PNG, JPEG, colour DICOM) has no such values: the window applies to its 8-bit display values.
Only pixel data is read: overlays (60xx) and presentation states are never drawn.

Callers decode the object first (`ingest.readers.decode_object`): the header and size checks
have passed before this reads the file again.
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
from numpy.typing import NDArray
from pydicom import dcmread
from pydicom.pixels.processing import apply_modality_lut
from pydicom.pixels.utils import pixel_array

from core.errors import DecodeError
from core.frame import Frame
from ingest.readers.dicom import _frame_view, _scale

__all__ = ["WINDOW_PRESETS", "apply_window", "window_dicom_frame"]

#: Common CT windows (center, width) in Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "soft-tissue": (50.0, 400.0),
}


def apply_window(values: NDArray[np.generic], center: float, width: float) -> NDArray[np.uint8]:
    """Linear window: [center - width/2, center + width/2] onto [0, 255], clipped outside."""
    return _scale(np.asarray(values), center - width / 2, center + width / 2)


def window_dicom_frame(data: bytes, key: str, frame_index: int, center: float, width: float) -> Frame | None:
    """Frame ``frame_index`` of a grey DICOM file windowed at (``center``, ``width``) over its
    modality-LUT values; None for a colour image (the caller windows its display values)."""
    try:
        ds = dcmread(BytesIO(data), force=False)
        photometric = str(ds.PhotometricInterpretation).strip()
        if int(ds.get("SamplesPerPixel", 1)) != 1 or photometric == "PALETTE COLOR":
            return None
        raw = pixel_array(ds, index=frame_index)
        if raw.ndim == 3 and raw.shape[-1] == 1:
            raw = raw[..., 0]
        values = apply_modality_lut(raw, _frame_view(ds, frame_index))
    except Exception as exc:
        # as the reader does: header values never reach a message, only the exception type
        raise DecodeError(key, f"cannot window frame {frame_index} ({type(exc).__name__})") from None
    frame = apply_window(values, center, width)
    if photometric == "MONOCHROME1":
        frame = np.subtract(255, frame, dtype=np.uint8)
    return np.ascontiguousarray(frame)
