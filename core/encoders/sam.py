"""SAM and MedSAM ViT-B image encoders: the neck output (256 × 64 × 64), spatially mean-pooled.

The model is transformers' ``SamVisionModel`` (the ``sam`` entry of `core.encoders.architectures`).
Weights load from transformers' SAM layout (``facebook/sam-vit-base``, ``wanglab/medsam-vit-base``)
or from the original ``segment_anything`` layout (``sam_vit_b_01ec64.pth``, ``medsam_vit_b.pth``:
``image_encoder.blocks.0.norm1...``), re-keyed by `segment_anything_to_transformers`. Preprocessing
is each model's own: SAM resizes the longest side to 1024, normalises with ImageNet mean/std and
pads; MedSAM squash-resizes to 1024² and min-max scales to [0, 1] with no mean/std (the paper's code
gave it SAM's).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from core.encoders.spec import EncoderSpec
from core.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "check_sam_input",
    "from_sam_checkpoint",
    "sam_neck_mean",
    "segment_anything_to_transformers",
    "transformers_to_segment_anything",
]

# (segment_anything name, transformers name) fragments, applied in order to each key; ``{}`` stands
# for a number, a leading ``^`` for the start of the key. The inverse applies them reversed.
_NAMES: tuple[tuple[str, str], ...] = (
    ("^image_encoder.", "^vision_encoder."),
    (".patch_embed.proj.", ".patch_embed.projection."),
    (".blocks.{}.", ".layers.{}."),
    (".norm{}.", ".layer_norm{}."),
    (".neck.0.", ".neck.conv1."),
    (".neck.1.", ".neck.layer_norm1."),
    (".neck.2.", ".neck.conv2."),
    (".neck.3.", ".neck.layer_norm2."),
)


def _rule(source: str, target: str) -> tuple[re.Pattern[str], str]:
    anchor = "^" if source.startswith("^") else ""
    pattern = anchor + re.escape(source.removeprefix("^")).replace(r"\{\}", r"(\d+)")
    return re.compile(pattern), target.removeprefix("^").replace("{}", r"\1")


_SA_TO_HF = tuple(_rule(sa, hf) for sa, hf in _NAMES)
# Reversed, so that e.g. neck.layer_norm1 is renamed before the block norm rule could catch it.
_HF_TO_SA = tuple(_rule(hf, sa) for sa, hf in reversed(_NAMES))


def _rekey(key: str, rules: tuple[tuple[re.Pattern[str], str], ...]) -> str:
    for pattern, replacement in rules:
        key = pattern.sub(replacement, key)
    return key


def segment_anything_to_transformers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Image-encoder weights of a ``segment_anything`` checkpoint, in ``SamVisionModel``'s names.

    Prompt encoder and mask decoder weights are dropped.
    """
    return {_rekey(k, _SA_TO_HF): v for k, v in state.items() if k.startswith("image_encoder.")}


def transformers_to_segment_anything(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `segment_anything_to_transformers` (tests write checkpoints in SAM's layout)."""
    return {_rekey(k, _HF_TO_SA): v for k, v in state.items()}


def from_sam_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint in either layout, in transformers' names."""
    if any(k.startswith("image_encoder.") for k in state):
        return segment_anything_to_transformers(state)
    return state


def check_sam_input(spec: EncoderSpec, config: Any) -> None:
    """The spec's input size must be the model's: SAM's position embeddings are not interpolated."""
    if int(config.image_size) != spec.input_size:
        raise ConfigError(
            f"encoder {spec.name!r}: input_size {spec.input_size} != SAM image_size "
            f"{config.image_size} (set model_overrides.image_size for a smaller variant)"
        )


_MICRO_BATCH = 4


def sam_neck_mean(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """The neck's 64 × 64 feature map, mean-pooled: one vector of ``output_channels`` per image."""
    import torch

    # The global-attention blocks hold a 4096 x 4096 score matrix per head and image (~0.4 GB in
    # bf16 per image and layer): a batch of 32 at once needs ~14 GB, so run a few at a time.
    chunks = [
        model(pixel_values=part).last_hidden_state.mean(dim=(2, 3))
        for part in torch.split(pixels, _MICRO_BATCH)
    ]
    return torch.cat(chunks)
