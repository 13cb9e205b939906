"""Where an encoder's weights come from: random, the Hugging Face hub, a local path, or S3."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from core.config import Settings
from core.encoders.spec import EncoderFamily, EncoderSpec
from core.errors import ConfigError, UpstreamUnreachable, WeightsUnavailable
from core.s3 import parse_s3_uri, s3_client

__all__ = [
    "HOW_TO_PROVIDE",
    "ResolvedWeights",
    "file_sha256",
    "find_weights_file",
    "hub_download",
    "hub_reachable",
    "is_offline",
    "resolve_weights",
]

logger = logging.getLogger(__name__)

# Said once per error, to HTTP callers and the CLI alike (the CLI adds its own flag).
HOW_TO_PROVIDE = (
    "provide the weights as a local file or directory, an s3:// URI in the model bucket (on the "
    "S3 endpoint RADSEARCH_S3__ENDPOINT), or a Hugging Face hub id with network access, or "
    "pre-populate the model cache (RADSEARCH_MODELS__CACHE_DIR, default <data dir>/models) or the "
    "Hugging Face cache; see README 'Encoders' > 'Using real weights'"
)
# How long a probe of the hub (or the proxy to it) may take before the hub counts as unreachable,
# and how long its answer is trusted.
HUB_PROBE_TIMEOUT_S = 2.0
_HUB_PROBE_TTL_S = 60.0
# The S3 endpoint of the weights: a refused or timed-out connection fails at once (no retries),
# so an admin request with the endpoint down answers in seconds; reads may be slow (large files).
_S3_CONNECT_TIMEOUT_S = 2.0
_S3_READ_TIMEOUT_S = 120.0
# Preferred weight file names in a directory or hub repo, best first (open_clip's own order).
WEIGHT_FILE_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
    "model.pt",
    "model.pth",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_CHUNK = 8 * 1024 * 1024

WeightsKind = Literal["random", "hub", "local", "s3"]


@dataclass(frozen=True)
class ResolvedWeights:
    """Resolved weights: ``path`` is a local file for local/s3 (and hub, once fetched or found in the
    cache); ``hub_id`` names the hub repo; ``version`` is what gets recorded with collections."""

    kind: WeightsKind
    path: Path | None
    hub_id: str | None
    version: str
    hub_filename: str | None = None


def is_offline(settings: Settings) -> bool:
    """Offline when the settings say so or ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set (read
    now, not at import, so a late environment change is honoured)."""
    if settings.models.offline:
        return True
    return any(
        os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


_probe_lock = threading.Lock()
_probe_cache: dict[tuple[str, int], tuple[bool, float]] = {}


def _hub_address() -> tuple[str, int]:
    """Where a hub request would connect first: the HTTPS proxy when one is set, else the hub
    endpoint (``HF_ENDPOINT``, default huggingface.co)."""
    from huggingface_hub import constants

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    parsed = urlparse(proxy if proxy else constants.ENDPOINT)
    default_port = 443 if parsed.scheme == "https" else 80
    return parsed.hostname or "huggingface.co", parsed.port or default_port


def hub_reachable(timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub (or its proxy) opens within ``timeout_s``, name lookup
    included; the answer is cached for a minute. Without it, huggingface_hub retries each file
    for minutes before failing."""
    address = _hub_address()
    now = time.monotonic()
    with _probe_lock:
        cached = _probe_cache.get(address)
    if cached is not None and now - cached[1] < _HUB_PROBE_TTL_S:
        return cached[0]
    result: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection(address, timeout=timeout_s).close()
            result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo has no timeout of its own: the probe runs in a thread that is waited for at most
    # timeout_s (a hung lookup is abandoned, the daemon thread ends with it).
    probe = threading.Thread(target=connect, name="hub-probe", daemon=True)
    probe.start()
    probe.join(timeout_s)
    reachable = bool(result and result[0])
    if not reachable:
        logger.info("the Hugging Face hub (%s:%d) is not reachable: using cached weights only", *address)
    with _probe_lock:
        _probe_cache[address] = (reachable, time.monotonic())
    return reachable


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def find_weights_file(directory: Path) -> Path | None:
    """The main weights file of a model directory (preferred names first, then any weights file)."""
    for name in WEIGHT_FILE_NAMES:
        if (directory / name).is_file():
            return directory / name
    candidates = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    candidates.sort(key=lambda p: p.suffix != ".safetensors")
    return candidates[0] if candidates else None


def _unavailable(spec: EncoderSpec, problem: str) -> WeightsUnavailable:
    return WeightsUnavailable(f"encoder {spec.name!r}: {problem}; {HOW_TO_PROVIDE}")


def _verify(spec: EncoderSpec, path: Path, digest: str) -> None:
    expected = (spec.weights_sha256 or "").strip().lower()
    if expected and digest != expected:
        raise _unavailable(
            spec, f"weights {path.name} have sha256 {digest}, expected {expected} (weights_sha256)"
        )


def _local(spec: EncoderSpec, location: str) -> ResolvedWeights:
    path = Path(location).expanduser()
    if not path.exists():
        raise _unavailable(spec, f"local weights path {str(path)!r} does not exist")
    file = find_weights_file(path) if path.is_dir() else path
    if file is None:
        raise _unavailable(spec, f"no weights file ({', '.join(_WEIGHT_SUFFIXES)}) in {str(path)!r}")
    digest = file_sha256(file)
    _verify(spec, file, digest)
    return ResolvedWeights(kind="local", path=file, hub_id=None, version=f"sha256:{digest[:16]}")


def _s3(spec: EncoderSpec, uri: str, settings: Settings) -> ResolvedWeights:
    from minio.error import S3Error
    from urllib3.exceptions import HTTPError as TransportError

    try:
        location = parse_s3_uri(uri)
    except ConfigError:
        location = None
    if location is None or not location.key or location.key.endswith("/"):
        raise _unavailable(spec, f"{uri!r} must name one object: s3://bucket/key")
    bucket, key = location.bucket, location.key
    if any(part in {"", ".", ".."} for part in key.split("/")) or bucket.startswith("."):
        # The key becomes a path under the model cache; it must not climb out of it.
        raise _unavailable(spec, f"{uri!r} has an empty, '.' or '..' path segment")
    target = settings.model_cache_dir / "s3" / bucket / key
    if not target.is_file():
        s3 = settings.s3
        client = s3_client(
            s3,
            connect_timeout_s=_S3_CONNECT_TIMEOUT_S,
            read_timeout_s=_S3_READ_TIMEOUT_S,
            retry_connect=False,
            credentials_required=False,
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            logger.info("encoder %s: downloading weights %s to %s", spec.name, uri, target)
            client.fget_object(bucket, key, str(tmp))
            os.replace(tmp, target)  # atomic: a reader never sees a partial file
        except (S3Error, OSError, ValueError) as exc:
            raise _unavailable(spec, f"cannot download weights {uri!r} from {s3.endpoint}: {exc}") from exc
        except TransportError as exc:
            # an endpoint that is down or unreachable: urllib3's own errors, not OSError
            raise UpstreamUnreachable(
                f"encoder {spec.name!r}: cannot reach the S3 endpoint {s3.endpoint} for weights {uri!r} "
                f"({type(exc).__name__}); check that it is up and RADSEARCH_S3__ENDPOINT names it"
            ) from exc
        finally:
            tmp.unlink(missing_ok=True)
    digest = file_sha256(target)
    try:
        _verify(spec, target, digest)
    except WeightsUnavailable:
        # A cached file that fails verification is useless (and maybe truncated): fetch it afresh next time.
        target.unlink(missing_ok=True)
        raise
    return ResolvedWeights(kind="s3", path=target, hub_id=None, version=f"sha256:{digest[:16]}")


def hub_download(
    spec: EncoderSpec, repo_id: str, filenames: tuple[str, ...], settings: Settings
) -> tuple[Path, str]:
    """The first of ``filenames`` in hub repo ``repo_id``: from ``settings.model_cache_dir`` or the
    default Hugging Face cache when offline or the hub is unreachable (`hub_reachable`: no network
    call, no retries), downloaded there otherwise."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cache_dir = settings.model_cache_dir
    offline = is_offline(settings)
    if offline or not hub_reachable():
        for filename in filenames:
            for cache in (cache_dir, None):
                found = try_to_load_from_cache(repo_id, filename, cache_dir=cache)
                if isinstance(found, str):
                    return Path(found), filename
        why = "offline" if offline else f"the Hugging Face hub ({_hub_address()[0]}) cannot be reached"
        raise _unavailable(
            spec,
            f"{why} and no weights file of hub repo {repo_id!r} ({', '.join(filenames)}) is cached "
            f"(looked in {cache_dir} and the default Hugging Face cache)",
        )
    # one line per distinct failure (the same "cannot connect" for each name is said once)
    errors: dict[str, list[str]] = {}
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir)), filename
        except Exception as exc:  # hub errors are many; the next name may exist
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            errors.setdefault(f"{type(exc).__name__}: {first_line}", []).append(filename)
    problems = "; ".join(f"{', '.join(names)}: {error}" for error, names in errors.items())
    raise _unavailable(spec, f"cannot fetch weights from hub repo {repo_id!r} ({problems})")


def _open_clip_hub_source(spec: EncoderSpec) -> tuple[str, tuple[str, ...]]:
    """(repo id, candidate file names) of an open_clip spec's default weights."""
    if spec.checkpoint.startswith("hf-hub:"):
        return spec.checkpoint.removeprefix("hf-hub:"), WEIGHT_FILE_NAMES[:3]
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(spec.checkpoint, spec.pretrained or "") if spec.pretrained else {}
    hub = str(tag_cfg.get("hf_hub", "")) if tag_cfg else ""
    if not hub:
        raise WeightsUnavailable(
            f"encoder {spec.name!r}: open_clip has no hub weights for {spec.checkpoint!r} with "
            f"pretrained={spec.pretrained!r}; {HOW_TO_PROVIDE}"
        )
    repo_id, filename = hub.rstrip("/").rsplit("/", 1) if not hub.endswith("/") else (hub.rstrip("/"), "")
    return repo_id, ((filename,) if filename else WEIGHT_FILE_NAMES[:3])


def _looks_local(weights: str) -> bool:
    # Hub ids are exactly "org/name"; anything path-like that is not must be a (missing) local path.
    return (
        Path(weights).expanduser().exists()
        or weights.startswith(("/", ".", "~"))
        or weights.endswith(_WEIGHT_SUFFIXES)
        or (weights.count("/") > 1 and not weights.startswith("hf-hub:"))
    )


def resolve_weights(spec: EncoderSpec, settings: Settings) -> ResolvedWeights:
    """Resolve ``spec.weights`` to something loadable, fetching into the model cache when needed.

    ``"random"`` → random init; ``None`` → the family's default (hub); an existing local file or
    directory → local; ``s3://bucket/key`` → downloaded once to ``<model_cache_dir>/s3/bucket/key``;
    any other value with a ``/`` → a hub repo id. ``weights_sha256`` is verified when given.
    Raises `WeightsUnavailable` saying how to provide the weights.
    """
    weights = spec.weights
    filenames: tuple[str, ...]
    if spec.family is EncoderFamily.BUILTIN:
        return ResolvedWeights(kind="random", path=None, hub_id=None, version="builtin")
    if weights == "random":
        return ResolvedWeights(kind="random", path=None, hub_id=None, version="random")
    if weights is not None and weights.startswith("s3://"):
        return _s3(spec, weights, settings)
    if weights is not None and _looks_local(weights):
        return _local(spec, weights)
    if weights is None:
        if spec.family is not EncoderFamily.OPEN_CLIP:
            repo_id, filenames = spec.checkpoint, WEIGHT_FILE_NAMES
        else:
            repo_id, filenames = _open_clip_hub_source(spec)
    elif "/" in weights:
        repo_id, filenames = weights.removeprefix("hf-hub:"), WEIGHT_FILE_NAMES
    else:
        raise _unavailable(spec, f"weights {weights!r} are not 'random', a path, an s3:// URI or a hub id")
    path, filename = hub_download(spec, repo_id, filenames, settings)
    if spec.weights_sha256:
        _verify(spec, path, file_sha256(path))
    return ResolvedWeights(
        kind="hub", path=path, hub_id=repo_id, version=f"hub:{repo_id}", hub_filename=filename
    )
