"""Frame → model input, from an `EncoderSpec`'s constants: numpy and Pillow only, thread-safe."""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from core.encoders.spec import EncoderSpec

__all__ = ["Preprocessor", "resize_uint8", "to_uint8_image"]

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
_MINMAX_EPS = 1e-6

ResizeMode = Literal["squash", "shortest_crop", "longest_pad"]


def to_uint8_image(frame: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Validate a frame: uint8 (H, W) grey, or (H, W, C) with C in {1, 3, 4} (alpha dropped).

    Grey stays 2-D (channels are replicated after resizing, which is cheaper and identical to the
    reference code's ``.convert("RGB")`` before resizing).
    """
    array = np.asarray(frame)
    if array.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"frames must be (H, W) or (H, W, 3), got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"empty frame of shape {array.shape}")
    return np.ascontiguousarray(array)


def resize_uint8(
    image: NDArray[np.uint8],
    size: int,
    mode: ResizeMode,
    interpolation: str,
    *,
    resize_size: int | None = None,
) -> tuple[NDArray[np.uint8], tuple[int, int]]:
    """Resize a uint8 (H, W) or (H, W, 3) image to fit ``size``×``size`` per ``mode``.

    Returns the resized image and the (height, width) of the valid region: for ``longest_pad`` the
    image is smaller than ``size``×``size`` on one side and the caller pads bottom/right, as SAM's
    processor does; otherwise the result is exactly ``size``×``size``. ``resize_size`` is the
    shortest edge before the centre crop of ``shortest_crop`` (default ``size``).
    """
    resample = _RESAMPLE[interpolation]
    height, width = image.shape[:2]
    pil = Image.fromarray(image)
    if mode == "squash":
        out = pil.resize((size, size), resample) if (height, width) != (size, size) else pil
    elif mode == "shortest_crop":
        # Same rounding as torchvision's Resize(int) + CenterCrop, which open_clip's transforms use.
        edge = resize_size or size
        if width <= height:
            new_w, new_h = edge, int(edge * height / width)
        else:
            new_w, new_h = int(edge * width / height), edge
        if (new_h, new_w) != (height, width):
            pil = pil.resize((new_w, new_h), resample)
        top = int(round((new_h - size) / 2.0))
        left = int(round((new_w - size) / 2.0))
        out = pil.crop((left, top, left + size, top + size)) if (new_h, new_w) != (size, size) else pil
    elif mode == "longest_pad":
        scale = size / max(height, width)
        new_h = max(1, min(size, int(height * scale + 0.5)))
        new_w = max(1, min(size, int(width * scale + 0.5)))
        out = pil.resize((new_w, new_h), resample) if (new_h, new_w) != (height, width) else pil
    else:
        raise ValueError(f"unknown resize mode {mode!r}")
    array = np.asarray(out)
    return array, (array.shape[0], array.shape[1])


class Preprocessor:
    """Turns one frame into a float32 CHW array as ``spec`` describes.

    Stateless after construction (so safe to call from many decode threads): RGB (grey replicated)
    → resize on uint8 with Pillow → scale to [0, 1] and normalise in one fused numpy pass.
    """

    def __init__(self, spec: EncoderSpec, *, channels: int = 3) -> None:
        if channels not in (1, 3):
            raise ValueError("channels must be 1 or 3")
        self.size = spec.input_size
        self.resize_size = spec.resize_size
        self.resize: ResizeMode = spec.resize
        self.interpolation = spec.interpolation
        self.scaling = spec.scaling
        self.channels = channels
        mean = np.asarray(spec.mean, dtype=np.float64)
        std = np.asarray(spec.std, dtype=np.float64)
        if channels == 1:
            mean, std = mean[:1], std[:1]
        # x/255 then (x - mean)/std, folded into one multiply-subtract.
        self._scale = (1.0 / (255.0 * std)).astype(np.float32).reshape(-1, 1, 1)
        self._offset = (mean / std).astype(np.float32).reshape(-1, 1, 1)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def __call__(self, frame: NDArray[np.uint8]) -> NDArray[np.float32]:
        image = to_uint8_image(frame)
        if self.channels == 1 and image.ndim == 3:
            image = np.asarray(Image.fromarray(image).convert("L"))
        resized, (h, w) = resize_uint8(
            image, self.size, self.resize, self.interpolation, resize_size=self.resize_size
        )
        out = np.zeros(self.shape, dtype=np.float32)
        region = out[:, :h, :w]
        source = resized[np.newaxis] if resized.ndim == 2 else resized.transpose(2, 0, 1)
        if self.scaling == "minmax":
            lo, hi = float(resized.min()), float(resized.max())
            np.subtract(source, np.float32(lo), out=region, casting="unsafe")
            region *= np.float32(1.0 / (hi - lo + _MINMAX_EPS * 255.0))
        else:
            np.multiply(source, self._scale, out=region, casting="unsafe")
            region -= self._offset
        return out
