"""Pick the reader from the bytes themselves (never the file name) and keep every failure typed.

The per-file time limit (``DecodeLimits.timeout_s``) is enforced here for every caller (ingest
pipeline, Celery workers, API uploads): the decode runs in a daemon thread and the caller stops
waiting at the deadline with a `DecodeTimeout`. Python cannot kill a thread, so a runaway decode
keeps its CPU until it returns; the DICOM reader also checks the deadline between frames, so a
long multi-frame object stops at the next frame. No time limit kills a single frame that never
finishes: the Celery workers run without ``time_limit`` (a batch's length varies with its size and
model), so such a thread lives until its process exits (a daemon thread never holds the exit up):
``radsearch worker --max-tasks-per-child N`` recycles prefork children, and with them any abandoned
decode. `abandoned_decodes` counts such threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

from core.errors import BadInput, DecodeError, DecodeTimeout, UnsupportedFormat
from ingest.readers.base import DecodedObject, DecodeLimits
from ingest.readers.dicom import decode_dicom
from ingest.readers.raster import decode_raster

__all__ = ["abandoned_decodes", "decode_object", "sniff_format"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# Label files often sit beside the images (the demo archive's manifest.csv). The name picks no
# reader; it only adds a hint to the reason, for someone who meant the file as the labels.
_MANIFEST_SUFFIXES = (".csv", ".jsonl")


def sniff_format(data: bytes) -> Literal["dicom", "png", "jpeg"] | None:
    """``dicom`` (``DICM`` at offset 128), ``png``, ``jpeg`` (magic numbers) or None."""
    if data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    return None


def decode_object(data: bytes, key: str, *, limits: DecodeLimits, hash_key: bytes) -> DecodedObject:
    """Decode one object's bytes into frames + labels + meta with the reader its content calls for.

    Every failure is a `BadInput` subclass naming ``key``: `UnsupportedFormat` for content that is
    neither DICOM Part 10 nor PNG/JPEG (including empty objects), `DecodeTimeout` past
    ``limits.timeout_s``, and whatever the reader raises; any other exception, ``MemoryError``
    included, becomes `DecodeError`.
    """
    kind = sniff_format(data)
    if kind is None:
        if key.lower().endswith(_MANIFEST_SUFFIXES):
            raise UnsupportedFormat(
                key,
                "unrecognised file format "
                "(labels in CSV or JSONL go in as the ingest's manifest: --manifest)",
            )
        raise UnsupportedFormat(key, "unrecognised file format")
    deadline = time.monotonic() + limits.timeout_s

    def decode() -> DecodedObject:
        if kind == "dicom":
            return decode_dicom(data, key, limits=limits, hash_key=hash_key, deadline=deadline)
        return decode_raster(data, key, limits=limits)

    return _typed(_with_deadline(decode, key, limits.timeout_s), kind, key)


_abandoned_lock = threading.Lock()
_abandoned = 0


def abandoned_decodes() -> int:
    """How many decodes ran past their deadline in this process (their threads may still run)."""
    return _abandoned


def _with_deadline(
    fn: Callable[[], DecodedObject], key: str, timeout_s: float
) -> Callable[[], DecodedObject]:
    """``fn`` run in a daemon thread, waited for at most ``timeout_s``; a thunk giving its outcome."""
    global _abandoned
    outcome: list[DecodedObject] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:  # handed to the waiting caller, typed there
            failure.append(exc)

    thread = threading.Thread(target=target, name="radsearch-decode", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        with _abandoned_lock:
            _abandoned += 1
        raise DecodeTimeout(key, f"decoding took longer than {timeout_s:g} s")

    def result() -> DecodedObject:
        if failure:
            raise failure[0]
        return outcome[0]

    return result


def _typed(result: Callable[[], DecodedObject], kind: str, key: str) -> DecodedObject:
    try:
        return result()
    except BadInput:
        raise
    except MemoryError:
        raise DecodeError(key, "out of memory while decoding") from None
    # Not chained: messages of third-party exceptions may quote header values. BaseException:
    # pyo3 PanicException from Rust decoders is not an Exception.
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        raise DecodeError(key, f"{kind} reader failed ({type(exc).__name__})") from None
