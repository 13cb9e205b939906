"""The encoder registry: name → spec, and one dispatch from a spec to a loaded encoder."""

from __future__ import annotations

import importlib
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from core.config import Settings
from core.encoders.base import Encoder
from core.encoders.spec import IMAGENET_MEAN, IMAGENET_STD, EncoderFamily, EncoderSpec
from core.errors import ConfigError, EncoderNotFound
from core.suggest import did_you_mean

if TYPE_CHECKING:
    import torch

    from core.encoders.weights import ResolvedWeights

logger = logging.getLogger(__name__)

__all__ = ["REGISTRY", "get_spec", "list_specs", "load_encoder", "resolve_spec"]

_SPECS: tuple[EncoderSpec, ...] = (
    EncoderSpec(
        name="baseline",
        family=EncoderFamily.BUILTIN,
        checkpoint="builtin:baseline-v1",
        input_size=64,
        resize="squash",
        interpolation="bilinear",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        output="handcrafted",
        dim=512,
        license="Apache-2.0 (part of radsearch)",
        description=(
            "Weight-free, deterministic hand-crafted features (multi-scale intensity layout, "
            "intensity histogram, gradient-orientation histograms). Works offline; for demos, tests "
            "and pipeline benchmarks, not for clinical-grade retrieval."
        ),
    ),
    EncoderSpec(
        name="biomedclip",
        family=EncoderFamily.OPEN_CLIP,
        checkpoint="hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        input_size=224,
        resize="shortest_crop",
        interpolation="bicubic",
        output="image_embeds",
        dim=512,
        text_tower=True,
        license="MIT",
        source_url="https://huggingface.co/microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        description="BiomedCLIP ViT-B/16 (PMC-15M); the reference paper's best encoder (P@1 0.594).",
    ),
    EncoderSpec(
        name="clip-vit-b16",
        family=EncoderFamily.OPEN_CLIP,
        checkpoint="ViT-B-16",
        pretrained="openai",
        input_size=224,
        resize="shortest_crop",
        interpolation="bicubic",
        output="image_embeds",
        dim=512,
        text_tower=True,
        license="MIT",
        source_url="https://github.com/openai/CLIP",
        description="OpenAI CLIP ViT-B/16 via open_clip; general-domain image-text baseline.",
    ),
    EncoderSpec(
        name="clip-vit-l14",
        family=EncoderFamily.OPEN_CLIP,
        checkpoint="ViT-L-14",
        pretrained="openai",
        input_size=224,
        resize="shortest_crop",
        interpolation="bicubic",
        output="image_embeds",
        dim=768,
        text_tower=True,
        license="MIT",
        source_url="https://github.com/openai/CLIP",
        description=(
            "OpenAI CLIP ViT-L/14 (400M web image-text pairs) via open_clip; the paper's general-domain "
            "weakly-supervised model. Text search; strong general features, slow on CPU."
        ),
    ),
    EncoderSpec(
        name="dinov2-vit-b14",
        family=EncoderFamily.TRANSFORMERS,
        checkpoint="facebook/dinov2-base",
        input_size=224,
        resize="shortest_crop",
        resize_size=256,
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        output="cls",
        dim=768,
        license="Apache-2.0",
        source_url="https://huggingface.co/facebook/dinov2-base",
        description=(
            "DINOv2 ViT-B/14 (self-supervised, LVD-142M), CLS token at 224 px as in the paper "
            "(BitImageProcessor: shortest edge 256, centre crop 224). Good general visual similarity."
        ),
    ),
    EncoderSpec(
        name="vit-b16-in21k",
        family=EncoderFamily.TRANSFORMERS,
        checkpoint="google/vit-base-patch16-224-in21k",
        input_size=224,
        resize="squash",
        interpolation="bilinear",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        output="cls",
        dim=768,
        license="Apache-2.0",
        source_url="https://huggingface.co/google/vit-base-patch16-224-in21k",
        description="ViT-B/16 supervised on ImageNet-21k; CLS token after the final LayerNorm. Baseline.",
    ),
    EncoderSpec(
        name="mae-vit-b16",
        family=EncoderFamily.TRANSFORMERS,
        checkpoint="facebook/vit-mae-base",
        input_size=224,
        resize="squash",
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        output="cls",
        dim=768,
        license="Apache-2.0 (model card); MAE code CC-BY-NC-4.0",
        source_url="https://huggingface.co/facebook/vit-mae-base",
        description=(
            "MAE ViT-B/16 (self-supervised masked autoencoder), CLS token with masking off "
            "(mask_ratio 0, fixed patch order), so embeddings are deterministic."
        ),
    ),
    EncoderSpec(
        name="resnet50",
        family=EncoderFamily.TRANSFORMERS,
        checkpoint="microsoft/resnet-50",
        input_size=224,
        resize="shortest_crop",
        resize_size=256,
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        output="pooled",
        dim=2048,
        license="Apache-2.0",
        source_url="https://huggingface.co/microsoft/resnet-50",
        description=(
            "ResNet-50 supervised on ImageNet-1k; global-average-pooled 2048-d features, not the "
            "1000 class logits the paper's code used. Cheap CNN baseline."
        ),
    ),
    EncoderSpec(
        name="sam-vit-b",
        family=EncoderFamily.TRANSFORMERS,
        checkpoint="facebook/sam-vit-base",
        input_size=1024,
        resize="longest_pad",
        interpolation="bilinear",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        output="neck_mean",
        dim=256,
        license="Apache-2.0",
        source_url="https://huggingface.co/facebook/sam-vit-base",
        description=(
            "Segment Anything ViT-B image encoder; neck output (256x64x64) mean-pooled to 256. "
            "Segmentation features: weak for retrieval, and slow (1024 px)."
        ),
    ),
    EncoderSpec(
        name="medsam-vit-b",
        family=EncoderFamily.TRANSFORMERS,
        checkpoint="wanglab/medsam-vit-base",
        input_size=1024,
        resize="squash",
        interpolation="bicubic",
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        scaling="minmax",
        output="neck_mean",
        dim=256,
        license="Apache-2.0",
        source_url="https://github.com/bowang-lab/MedSAM",
        description=(
            "MedSAM ViT-B (SAM fine-tuned on 1.5M medical masks); neck mean-pooled to 256 with "
            "MedSAM's own input: squash to 1024x1024, min-max to [0, 1], no mean/std. Also loads "
            "the original medsam_vit_b.pth (segment_anything layout)."
        ),
    ),
    EncoderSpec(
        name="medclip-vit",
        family=EncoderFamily.TRANSFORMERS,
        checkpoint="medclip-vit",
        input_size=224,
        resize="shortest_crop",
        interpolation="bicubic",
        mean=(0.5862785803043838,) * 3,
        std=(0.27950088968644304,) * 3,
        output="projected_pooler",
        dim=512,
        license="no licence stated in RyanWangZf/MedCLIP (research code); check before clinical use",
        source_url="https://github.com/RyanWangZf/MedCLIP",
        description=(
            "MedCLIP-ViT image tower (Swin-tiny pooler -> 512 projection; CheXpert/MIMIC-CXR). Weights "
            "only from a local path or s3:// (the release is not on the hub). No text tower here."
        ),
    ),
    EncoderSpec(
        name="rad-dino",
        family=EncoderFamily.TRANSFORMERS,
        checkpoint="microsoft/rad-dino",
        input_size=518,
        resize="shortest_crop",
        interpolation="bicubic",
        mean=(0.5307, 0.5307, 0.5307),
        std=(0.2583, 0.2583, 0.2583),
        output="cls",
        dim=768,
        license="MSRLA (Microsoft Research License Agreement: research use)",
        source_url="https://huggingface.co/microsoft/rad-dino",
        description=(
            "RAD-DINO: DINOv2 ViT-B/14 trained on chest X-rays (MIMIC-CXR, CheXpert, NIH, PadChest, "
            "BRAX); CLS token at 518 px. Chest X-ray retrieval; newer than the paper."
        ),
    ),
)

REGISTRY: dict[str, EncoderSpec] = {spec.name: spec for spec in _SPECS}


def _clean_name(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def get_spec(name: str) -> EncoderSpec:
    """The registered spec for ``name``; `EncoderNotFound` with close matches otherwise."""
    cleaned = _clean_name(name)
    if cleaned in REGISTRY:
        return REGISTRY[cleaned]
    hint = did_you_mean(cleaned, REGISTRY, n=3) or f"; known: {', '.join(sorted(REGISTRY))}"
    # echoed only when it looks like an encoder name: an error never carries arbitrary input
    shown = f" {name!r}" if re.fullmatch(r"[\w.\-/]{1,64}", name) else ""
    raise EncoderNotFound(f"unknown encoder{shown}{hint}")


def list_specs() -> list[EncoderSpec]:
    """Every registered spec, in registry order."""
    return list(REGISTRY.values())


def resolve_spec(value: str | dict[str, Any] | EncoderSpec) -> EncoderSpec:
    """A registry name, a full spec as a dict (e.g. from a collection's metadata), or a spec."""
    if isinstance(value, EncoderSpec):
        return value
    if isinstance(value, str):
        return get_spec(value)
    try:
        return EncoderSpec.model_validate(value)
    except ValidationError as exc:  # each field by name and rule, never the value given
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid encoder spec: {problems}") from None


def load_encoder(spec: EncoderSpec, settings: Settings, *, weights: str | None = None) -> Encoder:
    """Build and load the encoder ``spec`` describes on the device/dtype the settings choose.

    ``weights`` overrides ``spec.weights`` (``"random"`` for tests and benchmarks).
    """
    spec = spec.with_weights(weights)
    resolved = _resolve_first(spec, settings)

    from core.encoders.device import (
        quantize_linear_int8,
        select_device_and_dtype,
        uses_compile,
        uses_int8_linear,
    )

    device, dtype = select_device_and_dtype(settings.runtime, spec)
    encoder = _build_encoder(spec, settings, device, dtype, resolved)
    if uses_int8_linear(settings.runtime, spec, device):
        quantize_linear_int8(encoder)
    if uses_compile(settings.runtime, spec):
        started = time.perf_counter()
        encoder.compile_image_tower()
        logger.info("encoder %s: image tower compiled in %.1f s", spec.name, time.perf_counter() - started)
    return encoder


class _LoadEncoder(Protocol):
    """The constructor every family's `Encoder` class has."""

    def __call__(
        self,
        spec: EncoderSpec,
        *,
        settings: Settings,
        device: torch.device,
        dtype: torch.dtype,
        resolved: ResolvedWeights | None,
    ) -> Encoder: ...


@dataclass(frozen=True)
class _Family:
    """How a family's encoders load: ``encoder`` is the `Encoder` class, ``"module:Class"``,
    imported only when a model is loaded (it imports torch); ``defers_default_weights`` is True where
    the encoder resolves the default weights itself (a transformers checkpoint's may not be on the
    hub at all, which its record says)."""

    encoder: str
    defers_default_weights: bool = False


_FAMILIES: dict[EncoderFamily, _Family] = {
    EncoderFamily.BUILTIN: _Family("core.encoders.baseline:BaselineEncoder"),
    EncoderFamily.OPEN_CLIP: _Family("core.encoders.open_clip_encoder:OpenClipEncoder"),
    EncoderFamily.TRANSFORMERS: _Family(
        "core.encoders.transformers_encoder:TransformersEncoder", defers_default_weights=True
    ),
}


def _resolve_first(spec: EncoderSpec, settings: Settings) -> ResolvedWeights | None:
    """The spec's weights, resolved before torch is imported and the device probed: weights that
    cannot be had fail in a fraction of a second, not after the seconds a model build takes.
    None where the encoder decides (a transformers checkpoint's default weights)."""
    from core.encoders.weights import resolve_weights

    if spec.weights is None and _FAMILIES[spec.family].defers_default_weights:
        return None
    return resolve_weights(spec, settings)


def _build_encoder(
    spec: EncoderSpec,
    settings: Settings,
    device: torch.device,
    dtype: torch.dtype,
    resolved: ResolvedWeights | None = None,
) -> Encoder:
    module, _, name = _FAMILIES[spec.family].encoder.partition(":")
    load: _LoadEncoder = getattr(importlib.import_module(module), name)
    return load(spec, settings=settings, device=device, dtype=dtype, resolved=resolved)
