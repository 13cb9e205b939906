"""The encoder runtime interface: frames in, float32 vectors out, batched."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from core.encoders.spec import EncoderSpec
from core.errors import ConfigError, NoTextTower
from core.frame import Frame

if TYPE_CHECKING:
    # torch costs ~2 s to import: loaded by the methods that run a model, so that commands which
    # only name encoders (the CLI's light commands, the catalog) start without it.
    import torch

__all__ = ["Encoder"]


class Encoder(ABC):
    """A loaded encoder. ``preprocess`` is thread-safe and CPU-only (decode threads call it);
    ``embed_batch`` runs the model on a preprocessed batch.

    Public ``embed``/``preprocess``/``embed_batch`` sit over the private ``_``-methods subclasses
    implement. ``weights_version`` says what the weights were ("random", "sha256:<hex>",
    "hub:<id>", ...), and is recorded with every collection built by this encoder.
    """

    def __init__(self, spec: EncoderSpec, *, device: torch.device, dtype: torch.dtype) -> None:
        self.spec = spec
        self.device = device
        self.dtype = dtype
        self.weights_version = "unknown"
        self._lock = threading.Lock()
        self._forward = self._embed_batch  # or its compiled graph (compile_image_tower)

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def image_tower(self) -> object:
        """The torch module that embeds images (``model`` unless a subclass says otherwise; None
        for an encoder that runs no torch model): what `quantize_linear_int8` quantizes."""
        return getattr(self, "model", None)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed frame, (channels, height, width)."""
        return (3, self.spec.input_size, self.spec.input_size)

    def preprocess(self, frame: Frame) -> NDArray[np.float32]:
        """One frame → one float32 array of ``input_shape`` (model-ready, CPU)."""
        return self._preprocess(frame)

    def embed_batch(self, batch: NDArray[np.float32] | torch.Tensor) -> NDArray[np.float32]:
        """A preprocessed batch ``[n, *input_shape]`` → ``[n, dim]`` float32 (L2-normalised when
        the spec says so)."""
        import torch

        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        tensor = torch.as_tensor(batch)
        with self._lock, torch.inference_mode():
            out = self._forward(tensor)
        vectors = out.detach().to(torch.float32).cpu().numpy()
        if self.spec.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def compile_image_tower(self) -> None:
        """From now on, run ``embed_batch`` through torch.compile (inductor, the weights frozen into
        the graph as constants). Compiled here, on one frame of zeros, so that a host that cannot
        compile (no C++ compiler) fails at load with `ConfigError`, not at a query."""
        import torch
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # process-wide; radsearch compiles nothing else
        compiled = torch.compile(self._embed_batch)
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()  # no compiler: fails here in ms, not after ~20 s of tracing
            with self._lock, torch.inference_mode():
                compiled(torch.zeros((1, *self.input_shape)))
        except Exception as exc:
            raise ConfigError(
                f"runtime.compile_encoders: torch.compile of encoder {self.spec.name!r} failed "
                f"({type(exc).__name__}); it needs a C++ compiler (gcc) on the host, or leave the "
                "setting off"
            ) from None
        self._forward = compiled

    def embed(self, frames: Sequence[Frame]) -> NDArray[np.float32]:
        """Frames → ``[n, dim]`` float32, preprocessing and embedding as one batch."""
        if not frames:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = np.stack([self.preprocess(f) for f in frames])
        return self.embed_batch(batch)

    def embed_text(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Texts → ``[n, dim]`` for encoders with a text tower; `NoTextTower` otherwise."""
        if not self.spec.text_tower:
            raise NoTextTower(f"encoder {self.spec.name!r} has no text tower; search by image instead")
        import torch

        with self._lock, torch.inference_mode():
            out = self._embed_text(list(texts))
        vectors = out.detach().to(torch.float32).cpu().numpy()
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)

    @abstractmethod
    def _preprocess(self, frame: Frame) -> NDArray[np.float32]: ...

    @abstractmethod
    def _embed_batch(self, batch: torch.Tensor) -> torch.Tensor: ...

    def _embed_text(self, texts: list[str]) -> torch.Tensor:
        raise NoTextTower(f"encoder {self.spec.name!r} has no text tower")
