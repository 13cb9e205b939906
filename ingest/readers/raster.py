"""PNG/JPEG reader: bytes → one display-ready 8-bit frame.

The declared size is read from the header (``Image.open`` is lazy) and checked before any pixel
is decoded; Pillow's decompression-bomb warning is an error here; truncated images are never
loaded partially (Pillow's ``LOAD_TRUNCATED_IMAGES`` stays off). 16-bit and 32-bit grey images are
min–max scaled to 8 bits (PNG carries no window); alpha is dropped; palettes are expanded.
"""

from __future__ import annotations

import warnings
from io import BytesIO
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from core.errors import BadInput, DecodeError, TooLarge
from core.frame import Frame
from ingest.readers.base import DecodedObject, DecodeLimits

__all__ = ["decode_raster"]

_FORMATS = ("PNG", "JPEG")
_GREY_MODES = frozenset({"1", "L", "LA", "La"})


def _minmax_uint8(arr: NDArray[Any]) -> NDArray[np.uint8]:
    values = arr.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint((values - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _to_frame(image: Image.Image) -> Frame:
    """A loaded Pillow image → uint8 (H, W) grey or (H, W, 3) RGB."""
    mode = image.mode
    if mode in _GREY_MODES:
        return np.asarray(image.convert("L"), dtype=np.uint8).copy()
    if mode.startswith("I") or mode == "F":
        return _minmax_uint8(np.asarray(image))
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8).copy()
    # RGBA, P/PA (palette), CMYK, YCbCr, LAB, ...: Pillow's own conversion to RGB.
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def decode_raster(data: bytes, key: str, *, limits: DecodeLimits) -> DecodedObject:
    """Decode one PNG or JPEG into a single frame; ``labels`` stay empty.

    Raises `TooLarge` when the declared width × height exceeds ``limits.max_pixels_per_frame`` or
    Pillow flags a decompression bomb, `DecodeError` for corrupt or truncated data.
    """
    try:
        # Scoped to this call: the bomb warning must not be merely logged, and global warning
        # filters stay untouched.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(BytesIO(data), formats=_FORMATS) as image:
                width, height = image.size
                if width <= 0 or height <= 0:
                    raise DecodeError(key, "image has no pixels")
                if width * height > limits.max_pixels_per_frame:
                    raise TooLarge(
                        key,
                        f"image {width}x{height} exceeds the limit of {limits.max_pixels_per_frame} pixels",
                    )
                image.load()
                frame = _to_frame(image)
    except BadInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise TooLarge(key, "image flagged as a decompression bomb") from None
    except UnidentifiedImageError:
        raise DecodeError(key, "not a readable PNG or JPEG") from None
    except MemoryError:
        raise DecodeError(key, "out of memory while decoding") from None
    except BaseException as exc:  # native-extension panics are BaseExceptions
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        raise DecodeError(key, f"cannot decode image ({type(exc).__name__})") from None
    rows, cols = int(frame.shape[0]), int(frame.shape[1])
    return DecodedObject(
        frames=[frame],
        frame_indices=[0],
        labels={},
        meta={"rows": rows, "cols": cols, "n_frames": 1},
    )
