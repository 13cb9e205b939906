"""Coverage-guided fuzzing of the DICOM and PNG/JPEG readers with atheris (libFuzzer).

Run as its own process (atheris owns it)::

    python tests/security/fuzz_readers.py dicom CORPUS_DIR -max_total_time=60 -timeout=10 \\
        -rss_limit_mb=2048 -max_len=1048576

Any exception other than our typed `BadInput` is a crash; libFuzzer reports crashes, timeouts
(``-timeout``) and out-of-memory (``-rss_limit_mb``) and writes the input that caused them.

Without atheris (not installable on some platforms) ``--fallback`` runs a plain mutational fuzzer
(random bit flips, byte runs, truncation, splicing of the seeds) for ``--seconds``; it is NOT
coverage-guided and says so in its output.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

LIMITS_KW = {"max_pixels_per_frame": 4096 * 4096, "max_frames": 8, "timeout_s": 30.0}


def _targets() -> dict[str, Callable[[bytes], None]]:
    from core.errors import BadInput
    from ingest.readers.base import DecodeLimits
    from ingest.readers.dicom import decode_dicom
    from ingest.readers.raster import decode_raster

    limits = DecodeLimits(**LIMITS_KW)  # type: ignore[arg-type]

    def dicom(data: bytes) -> None:
        try:
            decode_dicom(data, "fuzz.dcm", limits=limits, hash_key=b"fuzz")
        except BadInput:
            pass

    def png(data: bytes) -> None:
        try:
            decode_raster(data, "fuzz.png", limits=limits)
        except BadInput:
            pass

    return {"dicom": dicom, "png": png}


def _mutate(data: bytes, seeds: list[bytes], rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(6)
        if not buf:
            buf = bytearray(rng.choice(seeds))
        pos = rng.randrange(len(buf))
        if op == 0:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif op == 2:
            del buf[pos : pos + rng.randint(1, 64)]
        elif op == 3:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 4:
            buf = buf[: rng.randrange(len(buf) + 1)]
        else:
            other = rng.choice(seeds)
            cut = rng.randrange(len(other) + 1)
            buf = buf[:pos] + bytearray(other[cut:])
    return bytes(buf)


def run_fallback(target: str, corpus: Path, seconds: float) -> int:
    """Not coverage-guided: random mutations of the seeds for ``seconds``."""
    fn = _targets()[target]
    seeds = [p.read_bytes() for p in sorted(corpus.iterdir()) if p.is_file()] or [b""]
    rng = random.Random(0)
    execs = crashes = timeouts = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        data = _mutate(rng.choice(seeds), seeds, rng)
        started = time.monotonic()
        try:
            fn(data)
        except Exception as exc:
            crashes += 1
            (corpus.parent / f"crash-{target}-{crashes}").write_bytes(data)
            print(f"crash: {type(exc).__name__}", file=sys.stderr)
        if time.monotonic() - started > 10:
            timeouts += 1
        execs += 1
    print(
        f"fallback mutational fuzzer (NOT coverage-guided): target={target} execs={execs} "
        f"exec_per_s={execs / seconds:.0f} crashes={crashes} timeouts={timeouts}"
    )
    return 1 if crashes or timeouts else 0


def main() -> int:
    args = sys.argv[1:]
    target = args.pop(0)
    if "--fallback" in args:
        args.remove("--fallback")
        seconds = float(os.environ.get("RADSEARCH_FUZZ_SECONDS", "30"))
        return run_fallback(target, Path(args[0]), seconds)
    import atheris

    with atheris.instrument_imports(include=["pydicom", "PIL", "ingest", "core"]):
        fn = _targets()[target]

    def one_input(data: bytes) -> None:
        fn(data)

    atheris.Setup([sys.argv[0], *args], one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
