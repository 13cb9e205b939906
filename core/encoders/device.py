"""Choosing the device and dtype an encoder runs on."""

from __future__ import annotations

import functools
import logging
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from core.config import RuntimeSettings
from core.encoders.spec import EncoderFamily, EncoderSpec
from core.errors import ConfigError

__all__ = [
    "cpu_bf16_speedup",
    "cpu_has_native_bf16",
    "cpu_int8_linear_speedup",
    "fastest_int8_engine",
    "int8_engine_timing",
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
# torch's quantized engine is one process-wide setting: probed and used under this lock.
_int8_engine_lock = threading.RLock()
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


def _best_seconds(call: Callable[[], object], repeats: int) -> float:
    with torch.inference_mode():
        call()  # warm-up: kernel selection, first-touch of the buffers
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
    return min(times)


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
        return _best_seconds(lambda: a @ b, repeats)

    return best_seconds(torch.float32) / best_seconds(torch.bfloat16)


# A ViT-B block's MLP projection at batch 1 (197 tokens x 768 -> 3072): what the int8 probes time.
_PROBE_SHAPE = (197, 768, 3072)
# The quantized engines an int8 Linear may run on, where torch has them: fbgemm (and "x86", which
# picks fbgemm for dynamic Linear layers) or oneDNN on x86-64; qnnpack where none of them is (ARM:
# on x86-64 torch lists it too, but it is a mobile engine there).
_INT8_ENGINES = ("x86", "onednn", "fbgemm")
_INT8_FALLBACK_ENGINE = "qnnpack"


def _int8_linear(rows: int, width: int, out: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """A dynamic int8 Linear on torch's current quantized engine, and an input for it."""
    linear = torch.nn.Sequential(torch.nn.Linear(width, out))
    return _quantize_dynamic(linear, inplace=False), torch.randn(rows, width)


def _quantize_dynamic(model: torch.nn.Module, *, inplace: bool) -> torch.nn.Module:
    """torch's dynamic int8 quantization of ``model``'s Linear layers, without the deprecation
    warnings it prints for each layer (the API is pinned with torch's version; a server's log
    would otherwise carry one per encoder load)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*(torch\.ao\.quantization|quantize_per_tensor).*deprecated"
        )
        quantized: torch.nn.Module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear}, dtype=torch.qint8, inplace=inplace
        )
    return quantized


@functools.cache
def int8_engine_timing(repeats: int = 20) -> tuple[str, float]:
    """The quantized engine whose dynamic int8 Linear runs fastest here, and its best seconds on the
    probe layer; timed once per process (well under a second), and made torch's engine from then on
    (a layer's packed weights belong to the engine it was quantized under). On a 2-vCPU Intel Xeon
    with AVX-512 VNNI, oneDNN ran clip-vit-b16's int8 forward in 91 ms against 111 ms under torch's
    default ("x86", i.e. fbgemm)."""
    timings: dict[str, float] = {}
    supported = torch.backends.quantized.supported_engines
    engines = [e for e in _INT8_ENGINES if e in supported] or [_INT8_FALLBACK_ENGINE]
    with _int8_engine_lock:
        for engine in engines:
            torch.backends.quantized.engine = engine
            layer, x = _int8_linear(*_PROBE_SHAPE)
            timings[engine] = _best_seconds(lambda: layer(x), repeats)  # noqa: B023 (called at once)
        fastest = min(timings, key=timings.__getitem__)
        torch.backends.quantized.engine = fastest
    logger.info(
        "int8 engine %s (%s)", fastest, ", ".join(f"{e} {1000 * s:.2f} ms" for e, s in timings.items())
    )
    return fastest, timings[fastest]


def fastest_int8_engine() -> str:
    """The quantized engine int8 Linear layers run on here (`int8_engine_timing`)."""
    return int8_engine_timing()[0]


@functools.cache
def cpu_int8_linear_speedup(over: torch.dtype = torch.float32, repeats: int = 10) -> float:
    """How many times faster a dynamic int8 Linear runs here (on the fastest engine) than the same
    Linear in ``over``; timed once per process and dtype, well under a second."""
    rows, width, out = _PROBE_SHAPE
    int8_seconds = int8_engine_timing()[1]
    linear = torch.nn.Linear(width, out).to(over)
    x = torch.randn(rows, width).to(over)
    return _best_seconds(lambda: linear(x), repeats) / int8_seconds


def _int8_linear_reason(runtime: RuntimeSettings, spec: EncoderSpec, device: torch.device) -> str | None:
    """Why ``spec`` runs with int8 Linear layers here, or None where it does not (`uses_int8_linear`)."""
    if device.type != "cpu" or spec.family is EncoderFamily.BUILTIN or runtime.cpu_int8_linear is False:
        return None
    if runtime.cpu_int8_linear is True:
        return "runtime.cpu_int8_linear true"
    if runtime.dtype != "auto" or runtime.compile_encoders:
        return None
    over = _auto_dtype(device)[0]
    speedup = cpu_int8_linear_speedup(over)
    if speedup <= 1.0:
        return None
    name = str(over).removeprefix("torch.")
    return (
        f"runtime.cpu_int8_linear auto, an int8 Linear measured {speedup:.1f}x faster than a {name} one here"
    )


def uses_int8_linear(runtime: RuntimeSettings, spec: EncoderSpec, device: torch.device) -> bool:
    """Whether ``spec`` runs with int8 Linear layers: only on CPU, and never for the built-in
    (hand-crafted) encoders; ``runtime.cpu_int8_linear`` true, or ``auto`` where the dtype is
    ``auto`` too, no encoder is compiled, and an int8 Linear is measured faster than one in the
    dtype ``auto`` would pick here (fp32, or bf16 where it is fast; `cpu_int8_linear_speedup`)."""
    return _int8_linear_reason(runtime, spec, device) is not None


def uses_compile(runtime: RuntimeSettings, spec: EncoderSpec) -> bool:
    """Whether ``spec``'s image tower is compiled: ``runtime.compile_encoders``, except for the
    built-in encoders, which run no torch model."""
    return runtime.compile_encoders and spec.family is not EncoderFamily.BUILTIN


def quantize_linear_int8(encoder: object) -> None:
    """Swap the ``nn.Linear`` layers of ``encoder.image_tower`` (fp32, on CPU) for dynamically
    quantized int8 ones, in place: weights int8 per tensor, activations quantized per batch."""
    model = getattr(encoder, "image_tower", None)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"{type(encoder).__name__} has no torch model to quantize")
    with _int8_engine_lock:  # every layer packed for the one engine, never mid-probe
        engine = fastest_int8_engine()
        _quantize_dynamic(model, inplace=True)
    logger.info("%s: Linear layers quantized to int8 (dynamic, %s)", type(encoder).__name__, engine)


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
    elif (int8_reason := _int8_linear_reason(runtime, spec, device)) is not None:
        dtype, why = torch.float32, f"fp32 around int8 Linear layers: {int8_reason}"
    elif runtime.dtype == "auto":
        dtype, why = _auto_dtype(device)
    else:
        dtype, why = _DTYPES[runtime.dtype], "set in runtime settings"
    logger.info("encoder %s: device %s, dtype %s (%s)", spec.name, device, dtype, why)
    return device, dtype
