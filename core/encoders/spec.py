"""The frozen description of an encoder: where its weights come from and how it preprocesses."""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.errors import ConfigError

__all__ = ["EncoderFamily", "EncoderSpec"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


_OPTIONAL_FIELDS = ("resize_size", "model_overrides")


class EncoderFamily(StrEnum):
    BUILTIN = "builtin"
    OPEN_CLIP = "open_clip"
    TRANSFORMERS = "transformers"


class EncoderSpec(BaseModel):
    """What an encoder is. The collection's vector size comes from ``dim``.

    ``checkpoint`` is the family's model id (an open_clip architecture or ``hf-hub:`` id, a
    transformers hub id). ``pretrained`` is the open_clip pretrained tag. ``weights`` overrides where
    the weights come from: a hub id, a local file or directory, an ``s3://bucket/key`` URI, or
    ``"random"`` (tests and benchmarks only; recorded in the collection).

    ``resize_size`` is the shortest edge before the centre crop of ``shortest_crop`` (e.g. 256 → crop
    224, the DINOv2/ResNet processors); None resizes straight to ``input_size``. ``output`` names the
    embedding: ``image_embeds`` (CLIP projection), ``cls`` (CLS token of the last hidden state),
    ``pooled`` (global-average-pooled features), ``neck_mean`` (SAM image-encoder neck, spatially
    mean-pooled), ``projected_pooler`` (MedCLIP: Swin pooler → linear projection).
    ``model_overrides`` changes the architecture config (custom or reduced variants).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,47}$")
    family: EncoderFamily
    checkpoint: str
    pretrained: str | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    input_size: int = Field(default=224, ge=8, le=2048)
    resize: Literal["squash", "shortest_crop", "longest_pad"] = "squash"
    interpolation: Literal["bilinear", "bicubic"] = "bicubic"
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    scaling: Literal["mean_std", "minmax"] = "mean_std"
    output: str = "image_embeds"
    dim: int = Field(ge=1, le=65536)
    normalize: bool = True
    text_tower: bool = False
    license: str = ""
    source_url: str = ""
    description: str = ""
    preprocess_version: str = "1"
    resize_size: int | None = Field(default=None, ge=8, le=4096)
    model_overrides: dict[str, Any] | None = None

    @property
    def fingerprint(self) -> str:
        """A short hash of everything that changes the vectors (stored with the collection)."""
        fields = self.model_dump(exclude={"license", "source_url", "description"}, mode="json")
        # Fields added later are left out while unset, so existing fingerprints stay the same.
        for optional in _OPTIONAL_FIELDS:
            if fields.get(optional) is None:
                fields.pop(optional, None)
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def with_weights(self, weights: str | None) -> EncoderSpec:
        """This spec with ``weights`` as its weights source (unchanged when None); `ConfigError`
        for weights given to the built-in encoder, which has none (given, not silently dropped;
        a stored spec that already names some still loads)."""
        if weights is None:
            return self
        if self.family is EncoderFamily.BUILTIN:
            raise ConfigError(f"encoder {self.name!r} is built in and takes no weights: leave them out")
        return self.model_copy(update={"weights": weights})
