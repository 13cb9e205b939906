"""The transformers vision models radsearch builds, as data: one `Architecture` per model type and
one `Checkpoint` per published checkpoint.

An architecture says how to build and run a model type: its config class, its builder, the output
it gives (``EncoderSpec.output``), its forward pass, its embedding size, and the checkpoint layouts
it converts. A new model type is one entry in `ARCHITECTURES`; a new checkpoint of a known type is
one entry in `CHECKPOINTS` (and its spec in the registry). Torch-free at import: the functions
import torch and transformers when a model is built or run.

The outputs, the embedding the reference paper should have used:

- ``cls``: the CLS token of ``last_hidden_state`` (after the final LayerNorm);
- ``pooled``: ResNet's global-average-pooled 2048-d features (never the class logits);
- ``neck_mean``: SAM's image-encoder neck (256 × 64 × 64), spatially mean-pooled;
- ``projected_pooler``: MedCLIP, Swin-tiny's pooled features through its 768→512 projection.

MAE is built with ``mask_ratio=0`` and fed a fixed ``noise`` so no patch is dropped or shuffled:
its embeddings are deterministic (the paper's code left 75 % random masking on).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.encoders.sam import check_sam_input, from_sam_checkpoint, sam_neck_mean
from core.encoders.spec import EncoderSpec
from core.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "ARCHITECTURES",
    "CHECKPOINTS",
    "Architecture",
    "Checkpoint",
    "architecture_for",
    "checkpoint_for",
]

StateDict = dict[str, "torch.Tensor"]


def _same(state: StateDict) -> StateDict:
    return state


def _no_check(spec: EncoderSpec, config: Any) -> None:
    return None


@dataclass(frozen=True)
class Architecture:
    """How one transformers model type is built and run.

    ``config_class`` names the transformers config class; ``build(config, spec)`` returns the
    module; ``forward(model, pixels)`` returns the ``output`` embedding of a batch; ``dim(model)`` is
    the embedding size, read from the config (a probe forward pass at 518² or 1024² costs seconds on
    a CPU) and named ``dim_name`` in errors; ``convert`` re-keys checkpoint layouts other than the
    module's own; ``check(spec, config)`` raises `ConfigError` for specs the model cannot run.
    """

    config_class: str
    build: Callable[[Any, EncoderSpec], nn.Module]
    output: str
    forward: Callable[[Any, torch.Tensor], torch.Tensor]
    dim: Callable[[Any], int]
    dim_name: str = "model output"
    convert: Callable[[StateDict], StateDict] = _same
    check: Callable[[EncoderSpec, Any], None] = _no_check


@dataclass(frozen=True)
class Checkpoint:
    """How to build one published checkpoint offline.

    ``model_type`` is its `Architecture`; ``config`` holds the checkpoint's published
    ``config.json`` values that differ from the transformers defaults; ``prefixes`` are the key
    prefixes the published checkpoint uses around the module we build (e.g. ``vit.`` of
    ``ViTMAEForPreTraining``), stripped on load; ``hub_weights`` is False where the weights are not
    on the hub at all (MedCLIP ships a zip from its own URL), and ``note`` then says where they are.
    """

    model_type: str
    config: Mapping[str, Any]
    prefixes: tuple[str, ...] = ()
    hub_weights: bool = True
    note: str = ""


def _transformers_model(class_name: str, **kwargs: Any) -> Callable[[Any, EncoderSpec], nn.Module]:
    def build(config: Any, spec: EncoderSpec) -> nn.Module:
        import transformers

        model: nn.Module = getattr(transformers, class_name)(config, **kwargs)
        return model

    return build


def _medclip_vision(config: Any, spec: EncoderSpec) -> nn.Module:
    from core.encoders.medclip import MedClipVision

    return MedClipVision(config, spec.dim)


def _medclip_vision_weights(state: StateDict) -> StateDict:
    # The released MedCLIP checkpoint holds both towers; keep the vision tower.
    prefix = "vision_model."
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _cls_token(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    hidden: torch.Tensor = model(pixel_values=pixels).last_hidden_state
    return hidden[:, 0]


def _mae_cls_token(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    import torch

    # Fixed noise → identity shuffle; with mask_ratio 0 every patch is kept, in order.
    patch = int(model.config.patch_size)
    patches = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)
    noise = torch.arange(patches, device=pixels.device, dtype=torch.float32).expand(len(pixels), -1)
    out = model(pixel_values=pixels, noise=noise, interpolate_pos_encoding=True)
    cls: torch.Tensor = out.last_hidden_state[:, 0]
    return cls


def _pooled(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    pooled: torch.Tensor = model(pixel_values=pixels).pooler_output
    return pooled.flatten(1)


def _projected(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    projected: torch.Tensor = model(pixels)
    return projected


def _hidden_size(model: Any) -> int:
    return int(model.config.hidden_size)


ARCHITECTURES: dict[str, Architecture] = {
    "vit": Architecture(
        "ViTConfig", _transformers_model("ViTModel", add_pooling_layer=False), "cls", _cls_token, _hidden_size
    ),
    "vit_mae": Architecture(
        "ViTMAEConfig", _transformers_model("ViTMAEModel"), "cls", _mae_cls_token, _hidden_size
    ),
    "dinov2": Architecture(
        "Dinov2Config", _transformers_model("Dinov2Model"), "cls", _cls_token, _hidden_size
    ),
    "resnet": Architecture(
        "ResNetConfig",
        _transformers_model("ResNetModel"),
        "pooled",
        _pooled,
        lambda model: int(model.config.hidden_sizes[-1]),
    ),
    "sam": Architecture(
        "SamVisionConfig",
        _transformers_model("SamVisionModel"),
        "neck_mean",
        sam_neck_mean,
        lambda model: int(model.config.output_channels),
        dim_name="SAM neck",
        convert=from_sam_checkpoint,
        check=check_sam_input,
    ),
    "medclip_swin": Architecture(
        "SwinConfig",
        _medclip_vision,
        "projected_pooler",
        _projected,
        lambda model: int(model.projection_head.out_features),
        convert=_medclip_vision_weights,
    ),
}

CHECKPOINTS: dict[str, Checkpoint] = {
    "google/vit-base-patch16-224-in21k": Checkpoint("vit", {}, prefixes=("vit.",)),
    "facebook/vit-mae-base": Checkpoint("vit_mae", {"mask_ratio": 0.0}, prefixes=("vit.",)),
    "facebook/dinov2-base": Checkpoint("dinov2", {"image_size": 518}, prefixes=("dinov2.",)),
    "microsoft/rad-dino": Checkpoint("dinov2", {"image_size": 518}, prefixes=("dinov2.",)),
    "microsoft/resnet-50": Checkpoint("resnet", {}, prefixes=("resnet.",)),
    # SamVisionConfig initialises weights with std 1e-10: random weights would give ~zero (and
    # denormal, very slow) activations. Only random init reads initializer_range.
    "facebook/sam-vit-base": Checkpoint("sam", {"initializer_range": 0.02}, prefixes=("",)),
    "wanglab/medsam-vit-base": Checkpoint("sam", {"initializer_range": 0.02}, prefixes=("",)),
    "medclip-vit": Checkpoint(
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


def checkpoint_for(spec: EncoderSpec) -> Checkpoint:
    """The shipped record of ``spec.checkpoint``; `ConfigError` for unknown checkpoints."""
    checkpoint = CHECKPOINTS.get(spec.checkpoint)
    if checkpoint is None:
        raise ConfigError(
            f"encoder {spec.name!r}: no shipped architecture for checkpoint {spec.checkpoint!r}; "
            f"known: {', '.join(sorted(CHECKPOINTS))}"
        )
    return checkpoint


def architecture_for(spec: EncoderSpec) -> Architecture:
    """The architecture ``spec.checkpoint`` is built as; `ConfigError` for unknown checkpoints."""
    return ARCHITECTURES[checkpoint_for(spec).model_type]
