"""Hugging Face transformers vision encoders: ViT, MAE, DINOv2 (and RAD-DINO), ResNet, MedCLIP.

Architectures are built from configs shipped here (``ARCHITECTURES``), never fetched, so random
weights and weights from a local file or ``s3://`` need no hub access. Each spec's ``output`` picks
the embedding the reference paper should have used:

- ``cls``: the CLS token of ``last_hidden_state`` (after the final LayerNorm);
- ``pooled``: ResNet's global-average-pooled 2048-d features (never the class logits);
- ``projected_pooler``: MedCLIP, Swin-tiny's pooled features through its 768→512 projection.

MAE is built with ``mask_ratio=0`` and fed a fixed ``noise`` so no patch is dropped or shuffled:
its embeddings are deterministic (the paper's code left 75 % random masking on).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from core.config import Settings
from core.encoders.base import Encoder, Frame
from core.encoders.preprocess import Preprocessor
from core.encoders.spec import EncoderSpec
from core.encoders.weights import HOW_TO_PROVIDE, ResolvedWeights, resolve_weights
from core.errors import ConfigError, WeightsUnavailable

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "TransformersEncoder",
    "architecture_for",
    "build_model",
    "load_state_dict_file",
    "match_state_dict",
    "seeded",
]

logger = logging.getLogger(__name__)

_RANDOM_SEED = 0


@dataclass(frozen=True)
class Architecture:
    """How to build one checkpoint's model offline.

    ``model_type`` selects the transformers classes; ``config`` holds the checkpoint's published
    ``config.json`` values that differ from the transformers defaults; ``prefixes`` are the key
    prefixes the published checkpoint uses around the module we build (e.g. ``vit.`` of
    ``ViTMAEForPreTraining``), stripped on load; ``hub_weights`` is False where the weights are not
    on the hub at all (MedCLIP ships a zip from its own URL).
    """

    model_type: str
    config: Mapping[str, Any]
    prefixes: tuple[str, ...] = ()
    hub_weights: bool = True
    note: str = ""


ARCHITECTURES: dict[str, Architecture] = {
    "google/vit-base-patch16-224-in21k": Architecture("vit", {}, prefixes=("vit.",)),
    "facebook/vit-mae-base": Architecture("vit_mae", {"mask_ratio": 0.0}, prefixes=("vit.",)),
    "facebook/dinov2-base": Architecture("dinov2", {"image_size": 518}, prefixes=("dinov2.",)),
    "microsoft/rad-dino": Architecture("dinov2", {"image_size": 518}, prefixes=("dinov2.",)),
    "microsoft/resnet-50": Architecture("resnet", {}, prefixes=("resnet.",)),
    # SamVisionConfig initialises weights with std 1e-10: random weights would give ~zero (and
    # denormal, very slow) activations. Only random init reads initializer_range.
    "facebook/sam-vit-base": Architecture("sam", {"initializer_range": 0.02}, prefixes=("",)),
    "wanglab/medsam-vit-base": Architecture("sam", {"initializer_range": 0.02}, prefixes=("",)),
    "medclip-vit": Architecture(
        "medclip_swin",
        {},
        prefixes=("",),
        hub_weights=False,
        note=(
            "MedCLIP's weights are not on the Hugging Face hub (the medclip package downloads a zip "
            "from its own URL): unpack pytorch_model.bin from that release and pass it as a local "
            "path or s3:// URI"
        ),
    ),
}

_MEDCLIP_PROJECTION = 512


class _MedClipVision(nn.Module):
    """MedCLIP's vision tower: Swin-tiny → pooler (768) → linear projection without bias (512).

    Parameter names follow the released checkpoint (``vision_model.model.*``,
    ``vision_model.projection_head.weight``) once the ``vision_model.`` prefix is stripped.
    """

    def __init__(self, config: Any, dim: int) -> None:
        super().__init__()
        from transformers import SwinModel

        self.model = SwinModel(config)
        self.projection_head = nn.Linear(int(self.model.num_features), dim, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.model(pixel_values=pixel_values).pooler_output
        projected: torch.Tensor = self.projection_head(pooled)
        return projected


def architecture_for(spec: EncoderSpec) -> Architecture:
    """The shipped architecture of ``spec.checkpoint``; `ConfigError` for unknown checkpoints."""
    arch = ARCHITECTURES.get(spec.checkpoint)
    if arch is None:
        raise ConfigError(
            f"encoder {spec.name!r}: no shipped architecture for checkpoint {spec.checkpoint!r}; "
            f"known: {', '.join(sorted(ARCHITECTURES))}"
        )
    return arch


def _config(arch: Architecture, spec: EncoderSpec) -> Any:
    from transformers import Dinov2Config, ResNetConfig, SamVisionConfig, SwinConfig, ViTConfig, ViTMAEConfig

    classes: dict[str, Callable[..., Any]] = {
        "vit": ViTConfig,
        "vit_mae": ViTMAEConfig,
        "dinov2": Dinov2Config,
        "resnet": ResNetConfig,
        "sam": SamVisionConfig,
        "medclip_swin": SwinConfig,
    }
    values = {**arch.config, **(spec.model_overrides or {})}
    try:
        return classes[arch.model_type](**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"encoder {spec.name!r}: invalid model_overrides {values!r}: {exc}") from exc


def seeded(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module with torch's RNG seeded, so two random-weight loads are identical."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_RANDOM_SEED)
        return build()


def build_model(spec: EncoderSpec) -> nn.Module:
    """The spec's model with random (seeded) weights, in eval mode, fp32 on the CPU."""
    from transformers import Dinov2Model, ResNetModel, SamVisionModel, ViTMAEModel, ViTModel

    arch = architecture_for(spec)
    config = _config(arch, spec)
    builders: dict[str, Callable[[], nn.Module]] = {
        "vit": lambda: ViTModel(config, add_pooling_layer=False),
        "vit_mae": lambda: ViTMAEModel(config),
        "dinov2": lambda: Dinov2Model(config),
        "resnet": lambda: ResNetModel(config),
        "sam": lambda: SamVisionModel(config),
        "medclip_swin": lambda: _MedClipVision(config, spec.dim),
    }
    return seeded(builders[arch.model_type]).eval()


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


def _resolve(spec: EncoderSpec, arch: Architecture, settings: Settings) -> ResolvedWeights:
    if spec.weights is None and not arch.hub_weights:
        raise WeightsUnavailable(f"encoder {spec.name!r}: {arch.note}; {HOW_TO_PROVIDE}")
    return resolve_weights(spec, settings)


class TransformersEncoder(Encoder):
    """A transformers vision model, loaded eagerly, in eval mode on ``device`` as ``dtype``."""

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
        arch = architecture_for(spec)
        if spec.output not in self._outputs(arch):
            raise ConfigError(
                f"encoder {spec.name!r}: output {spec.output!r} is not one of "
                f"{', '.join(self._outputs(arch))} for {spec.checkpoint!r}"
            )
        resolved = resolved or _resolve(spec, arch, settings)
        model = build_model(spec)
        if resolved.kind != "random":
            assert resolved.path is not None
            state = self._convert(load_state_dict_file(spec, resolved.path))
            model.load_state_dict(match_state_dict(spec, model, state, arch.prefixes))
        self.resolved_weights = resolved
        self.weights_version = resolved.version
        self.model = model.to(device=device, dtype=dtype)
        self._arch = arch
        inner = model.model if isinstance(model, _MedClipVision) else model
        self.model_config: Any = inner.config
        self._preprocessor = Preprocessor(spec)
        self._check_dim()
        logger.info(
            "loaded encoder %s (%s, weights %s) on %s as %s",
            spec.name,
            spec.checkpoint,
            resolved.version,
            device,
            dtype,
        )

    @staticmethod
    def _outputs(arch: Architecture) -> tuple[str, ...]:
        return {
            "vit": ("cls",),
            "vit_mae": ("cls",),
            "dinov2": ("cls",),
            "resnet": ("pooled",),
            "medclip_swin": ("projected_pooler",),
            "sam": ("neck_mean",),
        }[arch.model_type]

    def _convert(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Re-key checkpoint formats other than the module's own (subclasses add theirs)."""
        if self._arch_type() == "medclip_swin":
            # The released MedCLIP checkpoint holds both towers; keep the vision tower.
            prefix = "vision_model."
            if any(k.startswith(prefix) for k in state):
                return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        return state

    def _arch_type(self) -> str:
        return architecture_for(self.spec).model_type

    def _check_dim(self) -> None:
        # From the config, not a probe forward pass: a 518² or 1024² probe costs seconds on a CPU.
        kind = self._arch_type()
        if kind == "resnet":
            got = int(self.model_config.hidden_sizes[-1])
        elif kind == "medclip_swin":
            got = self.spec.dim if isinstance(self.model, _MedClipVision) else -1
        else:
            got = int(self.model_config.hidden_size)
        if got != self.spec.dim:
            raise ConfigError(f"encoder {self.spec.name!r}: spec dim {self.spec.dim} != model output {got}")

    def _preprocess(self, frame: Frame) -> NDArray[np.float32]:
        return self._preprocessor(frame)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        kind = self._arch_type()
        if kind == "vit_mae":
            # Fixed noise → identity shuffle; with mask_ratio 0 every patch is kept, in order.
            patch = int(self.model_config.patch_size)
            patches = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)
            noise = torch.arange(patches, device=pixels.device, dtype=torch.float32).expand(len(pixels), -1)
            out = self.model(pixel_values=pixels, noise=noise, interpolate_pos_encoding=True)
            cls: torch.Tensor = out.last_hidden_state[:, 0]
            return cls
        if kind in ("vit", "dinov2"):
            hidden: torch.Tensor = self.model(pixel_values=pixels).last_hidden_state
            return hidden[:, 0]
        if kind == "resnet":
            pooled: torch.Tensor = self.model(pixel_values=pixels).pooler_output
            return pooled.flatten(1)
        projected: torch.Tensor = self.model(pixels)
        return projected

    def _embed_batch(self, batch: torch.Tensor) -> torch.Tensor:
        return self._forward(batch.to(self.device, self.dtype))
