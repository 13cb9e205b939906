"""The built-in, weight-free encoder: hand-crafted global features, computed batched in torch."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from core.config import Settings
from core.encoders.base import Encoder
from core.encoders.preprocess import Preprocessor
from core.encoders.spec import EncoderSpec
from core.frame import Frame

if TYPE_CHECKING:
    from core.encoders.weights import ResolvedWeights

__all__ = ["BaselineEncoder"]

_SEED = 20240311  # fixed: changing it changes every baseline vector ever stored
_HIST_BINS = 32
_HOG_BINS = 8
_HOG_GRID = 4
_TEXTURE_GRID = 4
_LAYOUT_SIZES = (16, 8)
_EPS = 1e-6
# Relative weight of each block after its own L2 normalisation (layout16, layout8, histogram, HOG,
# texture): spatial layout and edge structure carry most of the "same kind of image" signal.
_BLOCK_WEIGHTS = (1.0, 0.7, 0.6, 1.0, 0.4)


def _feature_dim() -> int:
    layout = sum(s * s for s in _LAYOUT_SIZES)
    return layout + _HIST_BINS + _HOG_BINS * _HOG_GRID * _HOG_GRID + _TEXTURE_GRID * _TEXTURE_GRID


def _projection(in_dim: int, out_dim: int) -> torch.Tensor:
    """A fixed matrix with orthonormal rows or columns, from numpy's stable PCG64 stream.

    With ``out_dim >= in_dim`` it is an isometry, so cosine similarities of the raw features are kept
    exactly while the information is spread over all ``out_dim`` coordinates.
    """
    rng = np.random.default_rng(_SEED)
    gaussian = rng.standard_normal((max(in_dim, out_dim), min(in_dim, out_dim)))
    q, r = np.linalg.qr(gaussian)
    q = q * np.sign(np.diag(r))  # make the factorisation unique
    matrix = q if in_dim >= out_dim else q.T  # (in_dim, out_dim)
    return torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32))


def _standardise(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(1)
    centred = flat - flat.mean(dim=1, keepdim=True)
    return centred / (centred.pow(2).mean(dim=1, keepdim=True).sqrt() + _EPS)


def _l2(x: torch.Tensor) -> torch.Tensor:
    norm: torch.Tensor = x.norm(dim=1, keepdim=True)
    return x / (norm + _EPS)


class BaselineEncoder(Encoder):
    """Weight-free, deterministic features for demos, tests and pipeline benchmarks.

    From a grey ``input_size``² image in [0, 1]: intensity layout at 16² and 8² (standardised per
    image), a soft 32-bin intensity histogram, gradient-orientation histograms over a 4×4 grid
    (HOG-like, 8 unsigned orientations), and pooled local variance (texture). Each block is L2
    normalised and weighted, then rotated into ``spec.dim`` dimensions by a fixed projection.
    """

    def __init__(
        self,
        spec: EncoderSpec,
        *,
        device: torch.device,
        dtype: torch.dtype,
        settings: Settings | None = None,
        resolved: ResolvedWeights | None = None,
    ) -> None:
        # settings and resolved are the load signature every family shares: no weights to read here.
        # Hand-crafted features are cheap and precision-sensitive (histograms): always fp32.
        super().__init__(spec, device=device, dtype=torch.float32)
        if spec.input_size % _HOG_GRID or spec.input_size < max(_LAYOUT_SIZES):
            raise ValueError(f"baseline input_size must be a multiple of {_HOG_GRID} and >= 16")
        self.weights_version = "builtin"
        self._preprocessor = Preprocessor(spec, channels=1)
        self._mean = float(spec.mean[0])
        self._std = float(spec.std[0])
        self._projection = _projection(_feature_dim(), spec.dim).to(device)
        self._grad_kernel = torch.tensor(
            [
                [[[0.0, 0.0, 0.0], [-0.5, 0.0, 0.5], [0.0, 0.0, 0.0]]],
                [[[0.0, -0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.5, 0.0]]],
            ],
            device=device,
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, self.spec.input_size, self.spec.input_size)

    def _preprocess(self, frame: Frame) -> NDArray[np.float32]:
        return self._preprocessor(frame)

    def _embed_batch(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, torch.float32)
        if x.shape[1] != 1:
            x = x.mean(dim=1, keepdim=True)
        # Undo the spec's normalisation: the features are defined on intensities in [0, 1].
        x = (x * self._std + self._mean).clamp(0.0, 1.0)
        blocks = (
            *(_standardise(F.adaptive_avg_pool2d(x, s)) for s in _LAYOUT_SIZES),
            self._histogram(x),
            self._hog(x),
            self._texture(x),
        )
        features = torch.cat([_l2(b) * w for b, w in zip(blocks, _BLOCK_WEIGHTS, strict=True)], dim=1)
        return features @ self._projection

    def _histogram(self, x: torch.Tensor) -> torch.Tensor:
        # Triangular (linear-interpolation) soft binning, as two scatter-adds per pixel: robust to
        # small intensity shifts. Edge bins keep their full weight (no mass falls off the ends).
        flat = x.flatten(1)
        position = (flat * _HIST_BINS - 0.5).clamp(0.0, _HIST_BINS - 1.0)
        lower = torch.floor(position)
        frac = position - lower
        lower_bin = lower.long()
        upper_bin = (lower_bin + 1).clamp_max(_HIST_BINS - 1)
        hist = torch.zeros(flat.shape[0], _HIST_BINS, device=x.device, dtype=x.dtype)
        hist.scatter_add_(1, lower_bin, 1.0 - frac)
        hist.scatter_add_(1, upper_bin, frac)
        hist = hist / flat.shape[1]
        return hist.sqrt()  # Hellinger: damps the dominant background bin

    def _hog(self, x: torch.Tensor) -> torch.Tensor:
        grads = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self._grad_kernel)
        gx, gy = grads[:, 0], grads[:, 1]
        magnitude = torch.sqrt(gx * gx + gy * gy)
        angle = torch.atan2(gy, gx).remainder(math.pi)  # unsigned orientation in [0, pi)
        position = angle * (_HOG_BINS / math.pi) - 0.5
        lower = torch.floor(position)
        frac = position - lower
        lower_bin = lower.long().remainder(_HOG_BINS)
        upper_bin = (lower_bin + 1).remainder(_HOG_BINS)
        orient = torch.zeros(x.shape[0], _HOG_BINS, *x.shape[2:], device=x.device, dtype=x.dtype)
        orient.scatter_add_(1, lower_bin.unsqueeze(1), (magnitude * (1.0 - frac)).unsqueeze(1))
        orient.scatter_add_(1, upper_bin.unsqueeze(1), (magnitude * frac).unsqueeze(1))
        cells = F.adaptive_avg_pool2d(orient, _HOG_GRID)  # (B, bins, grid, grid)
        cells = cells / (cells.sum(dim=1, keepdim=True) + 1e-3)  # per-cell contrast normalisation
        return cells.flatten(1).sqrt()

    def _texture(self, x: torch.Tensor) -> torch.Tensor:
        mean = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        mean_sq = F.avg_pool2d(x * x, 3, stride=1, padding=1, count_include_pad=False)
        local_std = (mean_sq - mean * mean).clamp_min(0.0).sqrt()
        return F.adaptive_avg_pool2d(local_std, _TEXTURE_GRID).flatten(1)
