"""Hugging Face transformers vision encoders: ViT, MAE, DINOv2 (and RAD-DINO), ResNet, SAM and
MedSAM, MedCLIP: one runtime over the records of `core.encoders.architectures`.

Models are built from configs shipped there, never fetched, so random weights and weights from a
local file or ``s3://`` need no hub access.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from core.config import Settings
from core.encoders.architectures import Architecture, Checkpoint, architecture_for, checkpoint_for
from core.encoders.base import Encoder
from core.encoders.preprocess import Preprocessor
from core.encoders.spec import EncoderSpec
from core.encoders.weights import HOW_TO_PROVIDE, ResolvedWeights, resolve_weights
from core.errors import ConfigError, WeightsUnavailable
from core.frame import Frame

__all__ = [
    "TransformersEncoder",
    "build_model",
    "load_state_dict_file",
    "match_state_dict",
    "seeded",
]

logger = logging.getLogger(__name__)

_RANDOM_SEED = 0


def _config(checkpoint: Checkpoint, arch: Architecture, spec: EncoderSpec) -> Any:
    import transformers

    values = {**checkpoint.config, **(spec.model_overrides or {})}
    try:
        return getattr(transformers, arch.config_class)(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"encoder {spec.name!r}: invalid model_overrides {values!r}: {exc}") from exc


def seeded(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module with torch's RNG seeded, so two random-weight loads are identical."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_RANDOM_SEED)
        return build()


def build_model(spec: EncoderSpec) -> nn.Module:
    """The spec's model with random (seeded) weights, in eval mode, fp32 on the CPU."""
    checkpoint = checkpoint_for(spec)
    arch = architecture_for(spec)
    config = _config(checkpoint, arch, spec)
    return seeded(lambda: arch.build(config, spec)).eval()


def load_state_dict_file(spec: EncoderSpec, path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a torch pickle (tensors only, ``weights_only``)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors, pickle and zip errors differ by version
        raise WeightsUnavailable(
            f"encoder {spec.name!r}: cannot read weights {path} ({type(exc).__name__}: {str(exc)[:300]}); "
            f"{HOW_TO_PROVIDE}"
        ) from exc
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise WeightsUnavailable(f"encoder {spec.name!r}: {path} is not a state dict of tensors")
    return {str(k): v for k, v in raw.items()}


def match_state_dict(
    spec: EncoderSpec, model: nn.Module, state: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """``state`` re-keyed to ``model``'s names: the prefix that matches most keys is stripped, keys of
    other heads (decoders, classifiers, prompt encoders) are dropped, and every model key must be
    present with its shape, or `WeightsUnavailable` names what is missing."""
    expected = model.state_dict()
    best: dict[str, torch.Tensor] = {}
    for prefix in ("", *prefixes):
        candidate = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if sum(k in expected for k in candidate) > sum(k in expected for k in best):
            best = candidate
    missing = [k for k in expected if k not in best]
    wrong = [
        f"{k}: {tuple(best[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in best and best[k].shape != v.shape
    ]
    if missing or wrong:
        raise WeightsUnavailable(
            f"encoder {spec.name!r}: weights do not fit {spec.checkpoint!r}: "
            f"{len(missing)} missing (e.g. {', '.join(missing[:3])}), {len(wrong)} with another shape "
            f"({'; '.join(wrong[:3])}); {HOW_TO_PROVIDE}"
        )
    dropped = len(state) - sum(k in expected for k in best)
    if dropped:
        logger.info("encoder %s: ignored %d weights of other heads", spec.name, dropped)
    return {k: best[k] for k in expected}


def _resolve(spec: EncoderSpec, checkpoint: Checkpoint, settings: Settings) -> ResolvedWeights:
    if spec.weights is None and not checkpoint.hub_weights:
        raise WeightsUnavailable(f"encoder {spec.name!r}: {checkpoint.note}; {HOW_TO_PROVIDE}")
    return resolve_weights(spec, settings)


class TransformersEncoder(Encoder):
    """A transformers vision model, loaded eagerly, in eval mode on ``device`` as ``dtype``; what
    is built and how it runs come from the spec's `Architecture`."""

    def __init__(
        self,
        spec: EncoderSpec,
        *,
        settings: Settings,
        device: torch.device,
        dtype: torch.dtype,
        resolved: ResolvedWeights | None = None,
    ) -> None:
        super().__init__(spec, device=device, dtype=dtype)
        checkpoint = checkpoint_for(spec)
        arch = architecture_for(spec)
        if spec.output != arch.output:
            raise ConfigError(
                f"encoder {spec.name!r}: output {spec.output!r} is not one of "
                f"{arch.output} for {spec.checkpoint!r}"
            )
        resolved = resolved or _resolve(spec, checkpoint, settings)
        model = build_model(spec)
        if resolved.kind != "random":
            assert resolved.path is not None
            state = arch.convert(load_state_dict_file(spec, resolved.path))
            model.load_state_dict(match_state_dict(spec, model, state, checkpoint.prefixes))
        self.resolved_weights = resolved
        self.weights_version = resolved.version
        self.model = model.to(device=device, dtype=dtype)
        self._arch = arch
        self.model_config: Any = model.config
        self._preprocessor = Preprocessor(spec)
        self._check()
        logger.info(
            "loaded encoder %s (%s, weights %s) on %s as %s",
            spec.name,
            spec.checkpoint,
            resolved.version,
            device,
            dtype,
        )

    def _check(self) -> None:
        got = self._arch.dim(self.model)
        if got != self.spec.dim:
            raise ConfigError(
                f"encoder {self.spec.name!r}: spec dim {self.spec.dim} != {self._arch.dim_name} {got}"
            )
        self._arch.check(self.spec, self.model_config)

    def _preprocess(self, frame: Frame) -> NDArray[np.float32]:
        return self._preprocessor(frame)

    def _embed_batch(self, batch: torch.Tensor) -> torch.Tensor:
        return self._arch.forward(self.model, batch.to(self.device, self.dtype))
