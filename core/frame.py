"""The image unit every layer passes around: readers produce frames, encoders embed them."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["Frame"]

# One display-ready 2-D image: uint8 (H, W) greyscale or (H, W, 3) RGB, windowed by the reader.
Frame = NDArray[np.uint8]
