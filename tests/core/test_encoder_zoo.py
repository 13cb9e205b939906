"""The encoder zoo on random weights: preprocessing constants against each model's published
processor config, the right output (pooled features, not logits), determinism (MAE included), batch
invariance, and weights round trips through a file and the S3 model bucket. Nothing is downloaded."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub
import huggingface_hub.constants
import numpy as np
import pytest
import torch
from minio import Minio
from numpy.typing import NDArray
from PIL import Image

from core.config import RuntimeSettings, Settings
from core.encoders import open_clip_encoder
from core.encoders.base import Encoder
from core.encoders.device import cpu_has_native_bf16
from core.encoders.preprocess import Preprocessor
from core.encoders.registry import get_spec, list_specs, load_encoder, resolve_spec
from core.encoders.sam import transformers_to_segment_anything
from core.encoders.spec import EncoderSpec
from core.encoders.transformers_encoder import TransformersEncoder
from core.errors import NoTextTower, WeightsUnavailable

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))

# Each model's own preprocessing, written out from its published processor config (HF
# preprocessor_config.json / open_clip pretrained config / the model's inference code), so a change
# to the registry must be a deliberate change here too:
# (input_size, resize, resize_size, interpolation, mean, std, scaling, output, dim)
REFERENCE: dict[str, tuple[Any, ...]] = {
    # open_clip_config.json of microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224
    "biomedclip": (224, "shortest_crop", None, "bicubic", *OPENAI, "mean_std", "image_embeds", 512),
    # open_clip pretrained cfg ViT-L-14/openai (OPENAI_DATASET_MEAN/STD, bicubic, shortest)
    "clip-vit-l14": (224, "shortest_crop", None, "bicubic", *OPENAI, "mean_std", "image_embeds", 768),
    # facebook/dinov2-base: BitImageProcessor, shortest_edge 256, crop 224, resample 3 (bicubic)
    "dinov2-vit-b14": (224, "shortest_crop", 256, "bicubic", *IMAGENET, "mean_std", "cls", 768),
    # google/vit-base-patch16-224-in21k: ViTImageProcessor, size 224, resample 2, mean = std = 0.5
    "vit-b16-in21k": (224, "squash", None, "bilinear", (0.5,) * 3, (0.5,) * 3, "mean_std", "cls", 768),
    # facebook/vit-mae-base: ViTImageProcessor, size 224, resample 3, ImageNet mean/std
    "mae-vit-b16": (224, "squash", None, "bicubic", *IMAGENET, "mean_std", "cls", 768),
    # microsoft/resnet-50: ConvNextImageProcessor, shortest_edge 224, crop_pct 0.875 (256 -> 224)
    "resnet50": (224, "shortest_crop", 256, "bicubic", *IMAGENET, "mean_std", "pooled", 2048),
    # facebook/sam-vit-base: SamImageProcessor, longest_edge 1024, resample 2, pad to 1024
    "sam-vit-b": (1024, "longest_pad", None, "bilinear", *IMAGENET, "mean_std", "neck_mean", 256),
    # bowang-lab/MedSAM MedSAM_Inference.py: resize to 1024x1024 (order 3), min-max to [0, 1]
    "medsam-vit-b": (1024, "squash", None, "bicubic", (0.0,) * 3, (1.0,) * 3, "minmax", "neck_mean", 256),
    # medclip constants.py IMG_MEAN/IMG_STD (grey, replicated), CLIPFeatureExtractor 224 bicubic
    "medclip-vit": (
        224,
        "shortest_crop",
        None,
        "bicubic",
        (0.5862785803043838,) * 3,
        (0.27950088968644304,) * 3,
        "mean_std",
        "projected_pooler",
        512,
    ),
    # microsoft/rad-dino: BitImageProcessor, shortest_edge 518, crop 518, mean 0.5307, std 0.2583
    "rad-dino": (518, "shortest_crop", None, "bicubic", (0.5307,) * 3, (0.2583,) * 3, "mean_std", "cls", 768),
}


def _settings(root: Path, dtype: str = "float32") -> Settings:
    return Settings(data_dir=root / "data", runtime=RuntimeSettings(device="cpu", dtype=dtype))


def _frames(n: int, shape: tuple[int, ...] = (180, 150), seed: int = 0) -> list[NDArray[np.uint8]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def _batch(encoder: Encoder, n: int, seed: int = 0) -> NDArray[np.float32]:
    return np.stack([encoder.preprocess(f) for f in _frames(n, seed=seed)])


# ------------------------------------------------------------------------------------ registry


def test_every_paper_model_and_rad_dino_is_registered_with_licence_and_source() -> None:
    names = {spec.name for spec in list_specs()}
    assert set(REFERENCE) <= names
    for name in REFERENCE:
        spec = get_spec(name)
        assert spec.license and spec.source_url.startswith("https://") and spec.description


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_preprocessing_constants_match_the_reference_config(name: str) -> None:
    spec = get_spec(name)
    size, resize, resize_size, interpolation, mean, std, scaling, output, dim = REFERENCE[name]
    assert (spec.input_size, spec.resize, spec.resize_size, spec.interpolation) == (
        size,
        resize,
        resize_size,
        interpolation,
    )
    assert spec.mean == pytest.approx(mean) and spec.std == pytest.approx(std)
    assert (spec.scaling, spec.output, spec.dim) == (scaling, output, dim)


def _hf_reference(name: str, image: Image.Image) -> NDArray[np.float32]:
    """The transformers image processor, built from the constants of the model's published config."""
    from transformers import BitImageProcessor, ConvNextImageProcessor, ViTImageProcessor

    if name == "dinov2-vit-b14":
        processor: Any = BitImageProcessor(
            size={"shortest_edge": 256},
            crop_size={"height": 224, "width": 224},
            resample=3,
            image_mean=list(IMAGENET[0]),
            image_std=list(IMAGENET[1]),
            do_convert_rgb=True,
        )
    elif name == "resnet50":
        processor = ConvNextImageProcessor(
            size={"shortest_edge": 224},
            crop_pct=0.875,
            resample=3,
            image_mean=IMAGENET[0],
            image_std=IMAGENET[1],
        )
    else:
        processor = ViTImageProcessor(
            size={"height": 224, "width": 224}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
    out: NDArray[np.float32] = processor(image, return_tensors="np")["pixel_values"][0]
    return out


@pytest.mark.parametrize("name", ["dinov2-vit-b14", "resnet50", "vit-b16-in21k"])
def test_preprocessing_matches_the_transformers_processor(name: str) -> None:
    # 300x200: the resized long side minus the crop is even, so centre-crop rounding cannot differ.
    frame = _frames(1, (300, 200, 3), seed=3)[0]
    ours = Preprocessor(get_spec(name))(frame)
    reference = _hf_reference(name, Image.fromarray(frame))
    assert ours.shape == reference.shape
    # Resampling kernels differ slightly (Pillow here, torchvision in transformers' fast processors);
    # a wrong constant (mean, std, size, crop) would be off by ~0.1-1 everywhere.
    assert np.abs(ours - reference).mean() < 1e-2


def test_medsam_scales_min_max_without_mean_std() -> None:
    frame = np.linspace(30, 220, 64 * 48).reshape(64, 48).astype(np.uint8)
    out = Preprocessor(get_spec("medsam-vit-b"))(frame)
    assert out.shape == (3, 1024, 1024)
    assert out.min() == pytest.approx(0.0, abs=1e-6) and out.max() == pytest.approx(1.0, abs=1e-3)
    # SAM's own input is ImageNet-normalised and padded, which MedSAM must not get.
    sam = Preprocessor(get_spec("sam-vit-b"))(frame)
    assert sam.min() < -1.5 and np.all(sam[:, :, 800:] == 0.0)


# ----------------------------------------------------------------------------- models, full size


@pytest.fixture(scope="module")
def zoo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo")


class _LazyEncoders(dict[str, Encoder]):
    """Encoders loaded on first use and kept for the module (each load costs seconds)."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, name: str) -> Encoder:
        # SAM at 1024² runs in bf16 where the CPU has it natively (~3x faster than fp32).
        dtype = "bfloat16" if name == "sam-vit-b" and cpu_has_native_bf16() else "float32"
        encoder = load_encoder(get_spec(name), _settings(self.root, dtype), weights="random")
        self[name] = encoder
        return encoder


@pytest.fixture(scope="module")
def encoders(zoo_root: Path) -> Iterator[dict[str, Encoder]]:
    lazy = _LazyEncoders(zoo_root)
    yield lazy
    lazy.clear()


# name, input side fed to the model (RAD-DINO interpolates its position embeddings, so a smaller
# input exercises the same code at a fraction of the CPU time)
MODELS = [
    ("vit-b16-in21k", 224),
    ("mae-vit-b16", 224),
    ("dinov2-vit-b14", 224),
    ("rad-dino", 112),
    ("resnet50", 224),
    ("medclip-vit", 224),
    ("clip-vit-l14", 224),
    ("biomedclip", 224),
]


def _pixels(n: int, side: int, seed: int = 0) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (n, 3, side, side)).astype(np.float32)


@pytest.mark.parametrize("name, side", MODELS)
def test_output_dim_determinism_and_batch_invariance(
    encoders: dict[str, Encoder], name: str, side: int
) -> None:
    encoder = encoders[name]
    assert encoder.weights_version == "random"
    batch = _pixels(2, side, seed=1)
    alone = encoder.embed_batch(batch[1:2])
    assert alone.shape == (1, get_spec(name).dim) and np.isfinite(alone).all()
    assert np.allclose(np.linalg.norm(alone, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(alone, encoder.embed_batch(batch[1:2]))  # two runs: bit-identical
    together = encoder.embed_batch(batch)
    assert not np.allclose(together[0], together[1], atol=1e-3)
    assert float(alone[0] @ together[1]) > 0.9999


@pytest.mark.parametrize("name", ["vit-b16-in21k", "dinov2-vit-b14", "mae-vit-b16"])
def test_embedding_is_the_cls_token_of_the_last_hidden_state(encoders: dict[str, Encoder], name: str) -> None:
    encoder = encoders[name]
    assert isinstance(encoder, TransformersEncoder)
    pixels = torch.from_numpy(_pixels(1, 224, seed=2))
    kwargs: dict[str, Any] = {}
    if name == "mae-vit-b16":
        kwargs["noise"] = torch.arange(196, dtype=torch.float32)[None]
    with torch.inference_mode():
        hidden = encoder.model(pixel_values=pixels, **kwargs).last_hidden_state
    expected = hidden[0, 0].numpy()
    assert np.allclose(encoder.embed_batch(pixels.numpy())[0], expected / np.linalg.norm(expected), atol=1e-5)


def test_mae_masking_is_off(encoders: dict[str, Encoder]) -> None:
    encoder = encoders["mae-vit-b16"]
    assert isinstance(encoder, TransformersEncoder)
    assert encoder.model_config.mask_ratio == 0.0
    pixels = torch.from_numpy(_pixels(1, 224, seed=3))
    with torch.inference_mode():
        out = encoder.model(pixel_values=pixels)
    assert out.last_hidden_state.shape[1] == 1 + 196  # every patch kept
    assert not bool(out.mask.any())
    # Without our fixed noise the patch order is shuffled at random; with it, runs are identical.
    first = encoder.embed_batch(pixels.numpy())
    torch.manual_seed(123)
    assert np.array_equal(first, encoder.embed_batch(pixels.numpy()))


def test_resnet_gives_pooled_features_not_logits(encoders: dict[str, Encoder]) -> None:
    encoder = encoders["resnet50"]
    assert isinstance(encoder, TransformersEncoder)
    assert not any("classifier" in k for k in encoder.model.state_dict())
    pixels = torch.from_numpy(_pixels(1, 224, seed=4))
    with torch.inference_mode():
        features = encoder.model(pixel_values=pixels).last_hidden_state
    pooled = features.mean(dim=(2, 3))[0].numpy()
    assert pooled.shape == (2048,)
    assert np.allclose(encoder.embed_batch(pixels.numpy())[0], pooled / np.linalg.norm(pooled), atol=1e-5)


def test_rad_dino_preprocesses_to_518(encoders: dict[str, Encoder]) -> None:
    encoder = encoders["rad-dino"]
    assert encoder.input_shape == (3, 518, 518)
    assert encoder.embed(_frames(1, (600, 520), seed=5)).shape == (1, 768)


def test_sam_neck_mean_pooled_full_size(encoders: dict[str, Encoder]) -> None:
    encoder = encoders["sam-vit-b"]
    assert isinstance(encoder, TransformersEncoder)
    batch = np.stack([encoder.preprocess(f) for f in _frames(1, (300, 200), seed=6)])
    assert batch.shape == (1, 3, 1024, 1024)
    captured: list[torch.Tensor] = []
    # One 1024² forward pass: the hook sees the neck output the embedding is pooled from.
    model: Any = encoder.model
    hook = model.vision_encoder.neck.register_forward_hook(
        lambda module, args, output: captured.append(output.detach().float())
    )
    try:
        vector = encoder.embed_batch(batch)
    finally:
        hook.remove()
    assert tuple(captured[0].shape) == (1, 256, 64, 64) and vector.shape == (1, 256)
    pooled = captured[0].mean(dim=(2, 3))[0].numpy()
    assert np.allclose(vector[0], pooled / np.linalg.norm(pooled), atol=1e-3)


def test_sam_determinism_and_batch_invariance_small_variant(settings: Settings) -> None:
    # The same SAM code on a 64-px variant (full size: one forward pass costs seconds).
    encoder = load_encoder(_tiny_spec("sam-vit-b"), settings, weights="random")
    batch = np.stack([encoder.preprocess(f) for f in _frames(2, (90, 70), seed=8)])
    alone = encoder.embed_batch(batch[1:2])
    assert np.array_equal(alone, encoder.embed_batch(batch[1:2]))
    assert float(alone[0] @ encoder.embed_batch(batch)[1]) > 0.9999


def test_image_only_encoders_refuse_text(encoders: dict[str, Encoder]) -> None:
    with pytest.raises(NoTextTower, match="no text tower"):
        encoders["dinov2-vit-b14"].embed_text(["pleural effusion"])


def test_clip_l14_text_tower(encoders: dict[str, Encoder]) -> None:
    vectors = encoders["clip-vit-l14"].embed_text(["pleural effusion", "normal chest"])
    assert vectors.shape == (2, 768) and np.isfinite(vectors).all()


# -------------------------------------------------------------- weights round trip (tiny variants)

# The same architectures with small configs, each saved in its published checkpoint's key layout
# (prefixes and the heads we drop), so the loader's re-keying is exercised as real weights need it.
TINY: dict[str, dict[str, Any]] = {
    "vit-b16-in21k": {
        "overrides": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        "dim": 32,
        "input_size": 224,
        "layout": lambda state: {**state, "pooler.dense.weight": torch.zeros(32, 32)},
    },
    "mae-vit-b16": {
        "overrides": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        "dim": 32,
        "input_size": 224,
        "layout": lambda state: {
            **{f"vit.{k}": v for k, v in state.items()},
            "decoder.decoder_pred.weight": torch.zeros(4, 4),
        },
    },
    "dinov2-vit-b14": {
        "overrides": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 56},
        "dim": 32,
        "input_size": 224,
        "layout": lambda state: state,
    },
    "resnet50": {
        "overrides": {"embedding_size": 8, "hidden_sizes": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
        "dim": 64,
        "input_size": 224,
        "layout": lambda state: {
            **{f"resnet.{k}": v for k, v in state.items()},
            "classifier.1.weight": torch.zeros(1000, 64),
        },
    },
    "sam-vit-b": {  # the original segment_anything layout (sam_vit_b_01ec64.pth, medsam_vit_b.pth)
        "overrides": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "global_attn_indexes": [1],
            "image_size": 64,
            "mlp_dim": 64,
            "output_channels": 16,
            "window_size": 2,
        },
        "dim": 16,
        "input_size": 64,
        "layout": lambda state: {
            **transformers_to_segment_anything(state),
            "mask_decoder.iou_token.weight": torch.zeros(1, 16),
        },
    },
    "medsam-vit-b": {  # transformers' SamModel layout (wanglab/medsam-vit-base)
        "overrides": {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "global_attn_indexes": [1],
            "image_size": 64,
            "mlp_dim": 64,
            "output_channels": 16,
            "window_size": 2,
        },
        "dim": 16,
        "input_size": 64,
        "layout": lambda state: {**state, "prompt_encoder.not_a_point_embed.weight": torch.zeros(1, 16)},
    },
    "medclip-vit": {  # the MedCLIP release: both towers under vision_model./text_model.
        "overrides": {"embed_dim": 8, "depths": [1, 1], "num_heads": [1, 2]},
        "dim": 8,
        "input_size": 224,
        "layout": lambda state: {
            **{f"vision_model.{k}": v for k, v in state.items()},
            "text_model.projection_head.weight": torch.zeros(8, 8),
        },
    },
}


def _tiny_spec(name: str) -> EncoderSpec:
    tiny = TINY[name]
    return get_spec(name).model_copy(
        update={"model_overrides": tiny["overrides"], "dim": tiny["dim"], "input_size": tiny["input_size"]}
    )


@pytest.mark.parametrize("name", sorted(TINY))
def test_weights_round_trip_file_and_s3(
    name: str, settings: Settings, minio_client: Minio, bucket: str, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    spec = _tiny_spec(name)
    random_encoder = load_encoder(spec, settings, weights="random")
    assert isinstance(random_encoder, TransformersEncoder)
    generator = torch.Generator().manual_seed(11)
    state = {
        k: (v + 0.05 * torch.randn(v.shape, generator=generator)) if v.is_floating_point() else v
        for k, v in random_encoder.model.state_dict().items()
    }
    batch = np.stack([random_encoder.preprocess(f) for f in _frames(2, (90, 70), seed=7)])
    random_encoder.model.load_state_dict(state)
    expected = random_encoder.embed_batch(batch)

    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in TINY[name]["layout"](state).items()}, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    from_file = load_encoder(spec, settings, weights=str(path))
    assert from_file.weights_version == f"sha256:{digest[:16]}"
    assert np.array_equal(from_file.embed_batch(batch), expected)

    minio_client.fput_object(bucket, f"models/{name}.safetensors", str(path))
    spec_s3 = spec.model_copy(
        update={"weights": f"s3://{bucket}/models/{name}.safetensors", "weights_sha256": digest}
    )
    from_s3 = load_encoder(spec_s3, settings)
    assert from_s3.weights_version == from_file.weights_version
    assert np.array_equal(from_s3.embed_batch(batch), expected)


def test_torch_pickle_weights_and_wrong_weights(settings: Settings, tmp_path: Path) -> None:
    spec = _tiny_spec("resnet50")
    encoder = load_encoder(spec, settings, weights="random")
    assert isinstance(encoder, TransformersEncoder)
    path = tmp_path / "pytorch_model.bin"
    torch.save({f"resnet.{k}": v for k, v in encoder.model.state_dict().items()}, path)
    batch = np.stack([encoder.preprocess(f) for f in _frames(1)])
    # A directory resolves to its weights file, as a downloaded hub snapshot does.
    assert np.array_equal(
        load_encoder(spec, settings, weights=str(tmp_path)).embed_batch(batch), encoder.embed_batch(batch)
    )
    # Weights of another architecture are refused with what is missing, not loaded half.
    other = tmp_path / "other" / "model.safetensors"
    other.parent.mkdir()
    from safetensors.torch import save_file

    save_file({"embeddings.cls_token": torch.zeros(1, 1, 8)}, str(other))
    with pytest.raises(WeightsUnavailable, match="missing"):
        load_encoder(spec, settings, weights=str(other))


# --------------------------------------------------------------------------------------- offline


@pytest.fixture
def no_hub_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def forbidden(*args: object, **kwargs: object) -> str:
        raise AssertionError("a network download was attempted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", forbidden)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-default-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.usefixtures("no_hub_network")
@pytest.mark.parametrize(
    "name, repo",
    [
        ("dinov2-vit-b14", "facebook/dinov2-base"),
        ("rad-dino", "microsoft/rad-dino"),
        ("sam-vit-b", "facebook/sam-vit-base"),
        ("mae-vit-b16", "facebook/vit-mae-base"),
    ],
)
def test_offline_hub_weights_fail_clearly(tmp_path: Path, name: str, repo: str) -> None:
    with pytest.raises(WeightsUnavailable) as info:
        load_encoder(get_spec(name), _settings(tmp_path))
    message = str(info.value)
    assert name in message and repo in message and "offline" in message and "s3:// URI" in message


_BIOMEDCLIP_CONFIG = Path(open_clip_encoder.__file__).parent / "configs" / "biomedclip.json"


@pytest.mark.usefixtures("no_hub_network")
@pytest.mark.parametrize(
    "content, says",
    [
        (b'{"model_cfg": {"embed_dim": 5', "is not JSON (line 1)"),
        (b"\xff\xfe\x00binary", "is not UTF-8 text"),
        (b'{"model_cfg": {"embed_dim": 512}}', "has no model_cfg with a vision_cfg"),
        (b"[1, 2]", "has no model_cfg with a vision_cfg"),
        (None, None),  # the repo's own file: the encoder is built from it
    ],
    ids=["cut", "binary", "no-vision-cfg", "not-an-object", "intact"],
)
def test_a_damaged_cached_open_clip_config_is_named(
    tmp_path: Path, content: bytes | None, says: str | None
) -> None:
    """Noticed in session 22: a hub checkpoint's cached open_clip_config.json that was damaged (a
    cut download, a hand edit) ended as "unexpected error: JSONDecodeError"."""
    settings = _settings(tmp_path)
    repo = settings.model_cache_dir / "models--example--other-clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    if content is None:
        content = json.dumps({"model_cfg": json.loads(_BIOMEDCLIP_CONFIG.read_text())}).encode()
    (snapshot / "open_clip_config.json").write_bytes(content)
    spec = resolve_spec(
        {"name": "other-clip", "family": "open_clip", "checkpoint": "hf-hub:example/other-clip", "dim": 512}
    )
    if says is None:
        assert load_encoder(spec, settings, weights="random").dim == 512
        return
    with pytest.raises(WeightsUnavailable) as info:
        load_encoder(spec, settings, weights="random")  # the architecture comes from the config
    message = str(info.value)
    assert (
        "'other-clip'" in message and "'example/other-clip'" in message and "open_clip_config.json" in message
    )
    assert says in message and "fetched again" in message
    assert "embed_dim" not in message  # the file is named, its content is not echoed


@pytest.mark.usefixtures("no_hub_network")
def test_medclip_without_weights_says_where_they_come_from(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match="not on the Hugging Face hub"):
        load_encoder(get_spec("medclip-vit"), _settings(tmp_path))
