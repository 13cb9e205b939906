"""Choosing the device and dtype an encoder runs on."""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path

import torch

from core.config import RuntimeSettings
from core.encoders.spec import EncoderFamily, EncoderSpec
from core.errors import ConfigError

__all__ = [
    "cpu_bf16_speedup",
    "cpu_has_native_bf16",
    "quantize_linear_int8",
    "select_device",
    "select_device_and_dtype",
    "uses_compile",
    "uses_int8_linear",
]

logger = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

_threads_lock = threading.Lock()
_threads_set: int | None = None


@functools.cache
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has native bf16 instructions (AVX-512 BF16 or AMX-BF16).

    Without them bf16 matmuls are emulated and slower than fp32, so ``auto`` only picks bf16 here.
    """
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            _, _, flags = line.partition(":")
            return bool(_CPU_BF16_FLAGS.intersection(flags.split()))
    return False


@functools.cache
def cpu_bf16_speedup(size: int = 1024, repeats: int = 3) -> float:
    """How many times faster a bf16 matmul runs than an fp32 one here (best of ``repeats``, timed
    once per process, well under a second).

    Native bf16 instructions are not always fast: on a 2-vCPU Intel Xeon with AVX-512 BF16 but no
    AMX, bf16 matmuls ran at half fp32's speed (162 vs 313 GFLOPS; clip-vit-b16 3.9 vs 6.6
    images/s), while an AMD EPYC with the same flag and an Intel Xeon with AMX ran bf16 2-3x faster.
    """

    def best_seconds(dtype: torch.dtype) -> float:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=generator).to(dtype)
        b = torch.randn(size, size, generator=generator).to(dtype)
        a @ b  # warm-up: kernel selection, first-touch of the buffers
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - started)
        return min(times)

    return best_seconds(torch.float32) / best_seconds(torch.bfloat16)


def uses_int8_linear(runtime: RuntimeSettings, spec: EncoderSpec, device: torch.device) -> bool:
    """Whether ``spec`` runs with int8 Linear layers: ``runtime.cpu_int8_linear``, on CPU, and
    never for the built-in (hand-crafted) encoders."""
    return runtime.cpu_int8_linear and device.type == "cpu" and spec.family is not EncoderFamily.BUILTIN


def uses_compile(runtime: RuntimeSettings, spec: EncoderSpec) -> bool:
    """Whether ``spec``'s image tower is compiled: ``runtime.compile_encoders``, except for the
    built-in encoders, which run no torch model."""
    return runtime.compile_encoders and spec.family is not EncoderFamily.BUILTIN


def quantize_linear_int8(encoder: object) -> None:
    """Swap the ``nn.Linear`` layers of ``encoder.model`` (an fp32 model on CPU) for dynamically
    quantized int8 ones, in place: weights int8 per tensor, activations quantized per batch."""
    model = getattr(encoder, "model", None)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"{type(encoder).__name__} has no torch model to quantize")
    torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
        model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
    )
    logger.info("%s: Linear layers quantized to int8 (dynamic)", type(encoder).__name__)


def _apply_torch_threads(runtime: RuntimeSettings) -> None:
    global _threads_set
    if runtime.torch_threads is None:
        return
    with _threads_lock:
        if _threads_set == runtime.torch_threads:
            return
        torch.set_num_threads(runtime.torch_threads)
        _threads_set = runtime.torch_threads
    logger.info("torch intra-op threads set to %d", runtime.torch_threads)


def select_device(runtime: RuntimeSettings, *, setting: str = "runtime.device") -> torch.device:
    """The torch device ``runtime.device`` names (``auto``: CUDA when present); `ConfigError`
    naming ``setting`` for a name torch does not know, or a CUDA device this machine lacks."""
    if runtime.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(runtime.device)
    except RuntimeError as exc:
        raise ConfigError(f"{setting} {runtime.device!r} is not a torch device: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting} is {runtime.device!r} but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"{setting} is {runtime.device!r} but this machine has {torch.cuda.device_count()} CUDA "
            "device(s), numbered from 0"
        )
    return device


def _auto_dtype(device: torch.device) -> tuple[torch.dtype, str]:
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "CUDA device supports bf16"
        return torch.float16, "CUDA device without bf16"
    if device.type == "cpu" and cpu_has_native_bf16():
        speedup = cpu_bf16_speedup()
        if speedup >= 1.0:
            return torch.bfloat16, f"CPU has native bf16 instructions; bf16 matmul {speedup:.1f}x fp32"
        return torch.float32, f"CPU has bf16 instructions, but bf16 matmul runs at {speedup:.2f}x fp32"
    return torch.float32, f"{device.type} without native bf16"


def select_device_and_dtype(runtime: RuntimeSettings, spec: EncoderSpec) -> tuple[torch.device, torch.dtype]:
    """The device and dtype ``spec`` runs on under ``runtime``.

    ``device="auto"`` picks CUDA when available, else CPU. ``dtype="auto"`` picks bf16 on CUDA with
    bf16 support (fp16 otherwise), bf16 on CPUs with native bf16 instructions where a bf16 matmul
    is also measured faster than fp32 (`cpu_bf16_speedup`), fp32 elsewhere.
    Built-in (hand-crafted) encoders always run in fp32. Also applies ``runtime.torch_threads``.
    """
    _apply_torch_threads(runtime)
    device = select_device(runtime)
    if spec.family is EncoderFamily.BUILTIN:
        dtype, why = torch.float32, "built-in encoders always run in fp32"
    elif uses_int8_linear(runtime, spec, device):
        dtype, why = torch.float32, "fp32 around int8 Linear layers (runtime.cpu_int8_linear)"
    elif runtime.dtype == "auto":
        dtype, why = _auto_dtype(device)
    else:
        dtype, why = _DTYPES[runtime.dtype], "set in runtime settings"
    logger.info("encoder %s: device %s, dtype %s (%s)", spec.name, device, dtype, why)
    return device, dtype
