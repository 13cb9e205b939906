"""open_clip encoders (BiomedCLIP, OpenAI CLIP, ...): image embedding = ``encode_image`` (projected)."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from open_clip.tokenizer import HFTokenizer
from open_clip.transformer import QuickGELU

from core.config import Settings
from core.encoders.base import Encoder
from core.encoders.preprocess import Preprocessor
from core.encoders.spec import EncoderSpec
from core.encoders.weights import (
    HOW_TO_PROVIDE,
    ResolvedWeights,
    hub_download,
    hub_reachable,
    is_offline,
    resolve_weights,
)
from core.errors import ConfigError, EncoderError, NoTextTower, WeightsUnavailable
from core.frame import Frame

__all__ = ["OpenClipEncoder", "model_config"]

logger = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).parent / "configs"
# Architectures open_clip does not ship, keyed by the hub checkpoint whose open_clip_config.json
# model_cfg they copy, so random/local/S3 weights need no hub access for the architecture.
_SHIPPED_ARCHS: dict[str, str] = {
    "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224": "biomedclip",
}
# Hugging Face text towers whose model *config* we ship: open_clip would otherwise fetch config.json
# from the hub even to build random weights. Key: the hf_model_name in the open_clip config.
_SHIPPED_TEXT_CONFIGS: dict[str, Path] = {
    "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract": _CONFIG_DIR / "biomedbert",
    "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract": _CONFIG_DIR / "biomedbert",
}
_RANDOM_SEED = 0
_registry_lock = threading.Lock()

Tokenizer = Callable[[list[str]], torch.Tensor]


class _ClipModel(Protocol):
    def encode_image(self, image: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, text: torch.Tensor) -> torch.Tensor: ...


def _register(name: str, path: Path) -> None:
    with _registry_lock:
        if name not in open_clip.list_models():
            open_clip.add_model_config(path)


for _arch in set(_SHIPPED_ARCHS.values()):
    _register(_arch, _CONFIG_DIR / f"{_arch}.json")


def _arch_for(spec: EncoderSpec, settings: Settings) -> str:
    """The open_clip architecture name to build ``spec.checkpoint`` with (registering it if needed)."""
    if spec.checkpoint in _SHIPPED_ARCHS:
        return _SHIPPED_ARCHS[spec.checkpoint]
    if not spec.checkpoint.startswith("hf-hub:"):
        name = spec.checkpoint.replace("/", "-")
        if open_clip.get_model_config(name) is None:
            raise ConfigError(f"encoder {spec.name!r}: open_clip has no architecture {spec.checkpoint!r}")
        return name
    # Another hub checkpoint: fetch its open_clip_config.json (cached) and register its model_cfg.
    repo_id = spec.checkpoint.removeprefix("hf-hub:")
    path, _ = hub_download(spec, repo_id, ("open_clip_config.json",), settings)
    model_cfg = _hub_model_config(spec, repo_id, path)
    name = "radsearch-" + re.sub(r"[^A-Za-z0-9_.-]", "-", repo_id)
    target = settings.model_cache_dir / "open_clip_configs" / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(model_cfg), encoding="utf-8")
    _register(name, target)
    return name


def _hub_model_config(spec: EncoderSpec, repo_id: str, path: Path) -> dict[str, Any]:
    """The ``model_cfg`` of a hub repo's ``open_clip_config.json`` at ``path``; `WeightsUnavailable`
    naming the file where it is damaged (a cut download, a hand edit), never its content."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        why = f"is not JSON (line {exc.lineno})"
    except UnicodeDecodeError:
        why = "is not UTF-8 text"
    except OSError as exc:
        why = f"cannot be read ({exc.strerror or type(exc).__name__})"
    else:
        model_cfg = config.get("model_cfg", config) if isinstance(config, dict) else None
        if isinstance(model_cfg, dict) and isinstance(model_cfg.get("vision_cfg"), dict):
            return model_cfg
        why = "has no model_cfg with a vision_cfg"
    raise WeightsUnavailable(
        f"encoder {spec.name!r}: the open_clip_config.json of hub repo {repo_id!r} at {path} {why}; "
        "delete it so that it is fetched again, or put the repo's own file there"
    )


def model_config(spec: EncoderSpec, settings: Settings, arch: str | None = None) -> dict[str, Any]:
    """The open_clip model config (embed_dim, vision_cfg, text_cfg) ``spec`` builds."""
    config = open_clip.get_model_config(arch or _arch_for(spec, settings))
    if config is None:
        raise ConfigError(f"encoder {spec.name!r}: no open_clip config for {spec.checkpoint!r}")
    merged = dict(config)
    # spec.model_overrides (reduced or custom variants): a dict value updates that sub-config
    # (vision_cfg, text_cfg) key by key, anything else replaces the key.
    for key, value in (spec.model_overrides or {}).items():
        current = merged.get(key)
        merged[key] = {**current, **value} if isinstance(value, dict) and isinstance(current, dict) else value
    return merged


def _quick_gelu(spec: EncoderSpec, arch: str) -> bool:
    # The OpenAI checkpoints were trained with QuickGELU; open_clip's plain configs use GELU and
    # only warn on a mismatch, which silently gives wrong embeddings.
    if spec.checkpoint.startswith("hf-hub:") or not spec.pretrained:
        return False
    tag = open_clip.get_pretrained_cfg(arch, spec.pretrained)
    return bool(tag.get("quick_gelu", False)) if tag else False


def _build(spec: EncoderSpec, arch: str, config: dict[str, Any]) -> torch.nn.Module:
    overrides: dict[str, Any] = {key: config[key] for key in spec.model_overrides or {}}
    text_cfg = dict(config.get("text_cfg", {}))
    local_text = _SHIPPED_TEXT_CONFIGS.get(str(text_cfg.get("hf_model_name", "")))
    if local_text is not None:
        overrides["text_cfg"] = {**text_cfg, "hf_model_name": str(local_text), "hf_model_pretrained": False}
    # Random init is seeded so that two loads of "random" weights give the same vectors.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_RANDOM_SEED)
        model: torch.nn.Module = open_clip.create_model(
            arch,
            pretrained=None,
            load_weights=False,
            pretrained_image=False,
            pretrained_text=False,
            force_quick_gelu=_quick_gelu(spec, arch),
            device="cpu",
            precision="fp32",
            **overrides,
        )
    return model


class _FusedQuickGELU(QuickGELU):  # type: ignore[misc]
    """QuickGELU, ``x * sigmoid(1.702 x)``, as ``silu(1.702 x) / 1.702``: the same function in one
    fused kernel. open_clip's version runs three elementwise ops, each slow in bf16 on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x * 1.702) * (1.0 / 1.702)


class _SdpaAttention(torch.nn.Module):
    """A batch-first ``nn.MultiheadAttention`` (the same weights) run through
    ``scaled_dot_product_attention``, its projections as plain ``nn.Linear`` layers.

    ``nn.MultiheadAttention`` in eval mode takes its "fast path" (``_native_multi_head_attention``:
    unfused bmm + softmax), which on CPU in bf16 is several times slower than SDPA's fused
    flash-attention kernel that timm's ViT (BiomedCLIP) uses. And its input projection is a bare
    parameter, its output projection a Linear subclass that int8 dynamic quantization skips on
    purpose: under ``runtime.cpu_int8_linear`` a third of each block's matmuls stayed fp32.
    """

    def __init__(self, mha: torch.nn.MultiheadAttention) -> None:
        super().__init__()
        assert mha.in_proj_weight is not None and mha.batch_first
        self.num_heads = mha.num_heads
        self.in_proj = _linear(mha.in_proj_weight, mha.in_proj_bias)  # width → q, k, v
        self.out_proj = _linear(mha.out_proj.weight, mha.out_proj.bias)
        # The state dict keeps open_clip's names: the model's weights stay a checkpoint of it.
        self.register_state_dict_post_hook(_to_checkpoint_names)  # type: ignore[no-untyped-call]
        self.register_load_state_dict_pre_hook(_from_checkpoint_names)  # type: ignore[no-untyped-call]

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, width = query.shape
        if query is key and key is value:
            projected = self.in_proj(query).chunk(3, dim=-1)
        else:  # cross-attention (CoCa's pooler): each input through its third of the projection
            projected = tuple(
                self.in_proj(x)[..., i * width : (i + 1) * width] for i, x in enumerate((query, key, value))
            )
        q, k, v = (self._heads(x) for x in projected)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:  # True: not attended (the reverse of SDPA's)
                blocked = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device)
                attn_mask = blocked.masked_fill(attn_mask, float("-inf"))
            if attn_mask.dim() == 3:  # (batch × heads, L, S)
                attn_mask = attn_mask.view(batch, self.num_heads, *attn_mask.shape[1:])
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
            probs = (scores if attn_mask is None else scores + attn_mask).softmax(dim=-1)
            out, weights = probs @ v, probs.mean(dim=1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width)), weights

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.num_heads, width // self.num_heads).transpose(1, 2)


_CHECKPOINT_NAMES = {"in_proj.weight": "in_proj_weight", "in_proj.bias": "in_proj_bias"}


def _to_checkpoint_names(_module: torch.nn.Module, state: dict[str, Any], prefix: str, _meta: Any) -> None:
    for ours, theirs in _CHECKPOINT_NAMES.items():
        if prefix + ours in state:
            state[prefix + theirs] = state.pop(prefix + ours)


def _from_checkpoint_names(_module: torch.nn.Module, state: dict[str, Any], prefix: str, *_: Any) -> None:
    for ours, theirs in _CHECKPOINT_NAMES.items():
        if prefix + theirs in state:
            state[prefix + ours] = state.pop(prefix + theirs)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Linear:
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _fast_inference(model: torch.nn.Module) -> int:
    """Swap open_clip's QuickGELU and the vision tower's self-attention for numerically equivalent
    fused kernels (bench/RESULTS.md: clip-vit-b16 bf16 on CPU). Returns the modules replaced."""
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is QuickGELU:
                setattr(module, name, _FusedQuickGELU())
                replaced += 1
    visual = getattr(model, "visual", None)
    if isinstance(visual, torch.nn.Module):
        for module in list(visual.modules()):
            for name, child in list(module.named_children()):
                if (
                    isinstance(child, torch.nn.MultiheadAttention)
                    and child.batch_first
                    and child.in_proj_weight is not None
                    and child._qkv_same_embed_dim
                ):
                    setattr(module, name, _SdpaAttention(child))
                    replaced += 1
    return replaced


def _load_weights(spec: EncoderSpec, model: torch.nn.Module, resolved: ResolvedWeights) -> None:
    assert resolved.path is not None
    try:
        open_clip.load_checkpoint(model, str(resolved.path), strict=True, weights_only=True)
    except Exception as exc:  # safetensors, pickle and zip errors differ by version (not a checkpoint)
        raise WeightsUnavailable(
            f"encoder {spec.name!r}: weights {resolved.path} do not load into {spec.checkpoint!r} "
            f"({type(exc).__name__}: {str(exc)[:500]}); {HOW_TO_PROVIDE}"
        ) from exc


class _HashTokenizer:
    """Deterministic stand-in for a hub tokenizer whose vocabulary cannot be had offline: open_clip's
    bundled BPE, ids folded into the text tower's vocabulary. Only for random weights."""

    def __init__(self, context_length: int, vocab_size: int) -> None:
        self._inner = open_clip.SimpleTokenizer(context_length=context_length)
        self._vocab_size = vocab_size

    def __call__(self, texts: list[str]) -> torch.Tensor:
        tokens = self._inner(texts)
        return torch.where(tokens > 0, tokens.remainder(self._vocab_size - 1) + 1, tokens)


class OpenClipEncoder(Encoder):
    """An open_clip model, loaded eagerly, in eval mode on ``device`` as ``dtype``.

    Weights come from `resolve_weights` (or ``resolved``, already resolved): random init (seeded),
    the hub (cache first, no network when offline), a local file or directory, or an ``s3://``
    object cached under the model cache.
    """

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
        self._settings = settings
        resolved = resolved or resolve_weights(spec, settings)
        self.resolved_weights = resolved
        arch = self._arch = _arch_for(spec, settings)
        self._config = model_config(spec, settings, arch)
        if int(self._config["embed_dim"]) != spec.dim:
            raise ConfigError(
                f"encoder {spec.name!r}: spec dim {spec.dim} != model embed_dim {self._config['embed_dim']}"
            )
        image_size = self._config["vision_cfg"].get("image_size", spec.input_size)
        if int(image_size if isinstance(image_size, int) else image_size[0]) != spec.input_size:
            raise ConfigError(
                f"encoder {spec.name!r}: spec input_size {spec.input_size} != model's {image_size}"
            )
        try:
            model = _build(spec, arch, self._config)
        except (OSError, ValueError) as exc:
            raise WeightsUnavailable(
                f"encoder {spec.name!r}: cannot build {spec.checkpoint!r} ({exc}); {HOW_TO_PROVIDE}"
            ) from exc
        if resolved.kind != "random":
            _load_weights(spec, model, resolved)
        _fast_inference(model)
        self.model = model.eval().to(device=device, dtype=dtype)
        self._clip = cast(_ClipModel, self.model)
        self.weights_version = resolved.version
        self._preprocessor = Preprocessor(spec)
        self._tokenizer: Tokenizer | None = None
        self._tokenizer_lock = threading.Lock()
        logger.info(
            "loaded encoder %s (%s, weights %s) on %s as %s", spec.name, arch, resolved.version, device, dtype
        )

    @property
    def image_tower(self) -> torch.nn.Module:
        """The visual tower alone: the text tower keeps its fp32 Linear layers (open_clip's
        ``encode_text`` reads their weights' dtype, which a quantized layer does not have, and a
        text query is one short forward)."""
        return cast(torch.nn.Module, self.model.visual)

    def _preprocess(self, frame: Frame) -> NDArray[np.float32]:
        return self._preprocessor(frame)

    def _embed_batch(self, batch: torch.Tensor) -> torch.Tensor:
        return self._clip.encode_image(batch.to(self.device, self.dtype))

    def _embed_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self._get_tokenizer()(texts).to(self.device)
        return self._clip.encode_text(tokens)

    def _get_tokenizer(self) -> Tokenizer:
        with self._tokenizer_lock:
            if self._tokenizer is None:
                self._tokenizer = self._make_tokenizer()
            return self._tokenizer

    def _make_tokenizer(self) -> Tokenizer:
        text_cfg: dict[str, Any] = self._config.get("text_cfg", {})
        context_length = int(text_cfg.get("context_length", 77))
        hf_name = text_cfg.get("hf_tokenizer_name")
        if not hf_name:
            return cast(Tokenizer, open_clip.get_tokenizer(self._arch))
        # Random weights never touch the network: a cached tokenizer or the stand-in. Nor does an
        # unreachable hub (no minutes of retries): the cache only.
        offline = is_offline(self._settings) or self.resolved_weights.kind == "random" or not hub_reachable()
        errors: list[str] = []
        for cache in (self._settings.model_cache_dir, None):
            try:
                tokenizer = HFTokenizer(
                    str(hf_name),
                    context_length=context_length,
                    cache_dir=str(cache) if cache is not None else None,
                    local_files_only=offline,
                    **text_cfg.get("tokenizer_kwargs", {}),
                )
                return cast(Tokenizer, tokenizer)
            except (OSError, ValueError, EncoderError) as exc:
                errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
        if self.resolved_weights.kind == "random":
            vocab = int(getattr(self.model.text, "vocab_size", 0) or 30522)
            logger.warning(
                "encoder %s: tokenizer %s unavailable; random weights use a stand-in tokenizer",
                self.spec.name,
                hf_name,
            )
            return _HashTokenizer(context_length, vocab)
        raise NoTextTower(
            f"encoder {self.spec.name!r}: tokenizer {hf_name!r} is not available ({'; '.join(errors)}); "
            "pre-populate the Hugging Face cache with it to search by text"
        )
