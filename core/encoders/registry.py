"""The encoder registry: name → spec, and one dispatch from a spec to a loaded encoder."""

from __future__ import annotations

import difflib
from typing import Any

from core.config import Settings
from core.encoders.base import Encoder
from core.encoders.spec import EncoderFamily, EncoderSpec
from core.errors import EncoderNotFound

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
)

REGISTRY: dict[str, EncoderSpec] = {spec.name: spec for spec in _SPECS}


def _clean_name(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def get_spec(name: str) -> EncoderSpec:
    """The registered spec for ``name``; `EncoderNotFound` with close matches otherwise."""
    cleaned = _clean_name(name)
    if cleaned in REGISTRY:
        return REGISTRY[cleaned]
    close = difflib.get_close_matches(cleaned, REGISTRY, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(REGISTRY))}"
    raise EncoderNotFound(f"unknown encoder {name!r}{hint}")


def list_specs() -> list[EncoderSpec]:
    return list(REGISTRY.values())


def resolve_spec(value: str | dict[str, Any] | EncoderSpec) -> EncoderSpec:
    """A registry name, a full spec as a dict (e.g. from a collection's metadata), or a spec."""
    if isinstance(value, EncoderSpec):
        return value
    if isinstance(value, str):
        return get_spec(value)
    return EncoderSpec.model_validate(value)


def load_encoder(spec: EncoderSpec, settings: Settings, *, weights: str | None = None) -> Encoder:
    """Build and load the encoder ``spec`` describes on the device/dtype the settings choose.

    ``weights`` overrides ``spec.weights`` (``"random"`` for tests and benchmarks).
    """
    from core.encoders.device import select_device_and_dtype

    spec = spec.with_weights(weights)
    device, dtype = select_device_and_dtype(settings.runtime, spec)
    match spec.family:
        case EncoderFamily.BUILTIN:
            from core.encoders.baseline import BaselineEncoder

            return BaselineEncoder(spec, device=device, dtype=dtype)
        case EncoderFamily.OPEN_CLIP:
            from core.encoders.open_clip_encoder import OpenClipEncoder

            return OpenClipEncoder(spec, settings=settings, device=device, dtype=dtype)
        case _:
            raise EncoderNotFound(f"encoder family {spec.family!s} of {spec.name!r} is not supported yet")
