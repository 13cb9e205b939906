"""One typed `Settings`, built at the entry point and passed in.

Environment variables use the prefix ``RADSEARCH_`` and ``__`` for nested groups, e.g.
``RADSEARCH_DATA_DIR=/srv/radsearch``, ``RADSEARCH_STORE__BACKEND=qdrant``,
``RADSEARCH_S3__ENDPOINT=minio:9000``.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import secrets
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import SplitResult, urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from core.errors import ConfigError, os_reason, rule_broken
from core.payload import FILTER_FIELDS
from core.suggest import did_you_mean

__all__ = [
    "ApiKeyEntry",
    "ApiSettings",
    "CelerySettings",
    "DicomwebSettings",
    "EventSettings",
    "IngestSettings",
    "ModelSettings",
    "OidcSettings",
    "RedisSettings",
    "RuntimeSettings",
    "S3Settings",
    "SecuritySettings",
    "Settings",
    "StoreSettings",
    "Subscription",
    "check_setting_variables",
    "is_http_url",
    "unknown_setting_variables",
]


class _Group(BaseModel):
    """A group of settings, or an entry of a list setting: a key it does not have (a misspelt
    ``RADSEARCH_STORE='{"min_fre_mb": 1}'``, an ``"expires"`` on an API key) is an error naming
    it, never a default silently kept."""

    model_config = ConfigDict(extra="forbid")


class StoreSettings(_Group):
    """Where vectors live: the embedded Qdrant Edge engine or a Qdrant server."""

    backend: Literal["edge", "qdrant"] = "edge"
    url: str | None = None
    api_key: SecretStr | None = None
    timeout_s: float = Field(default=30.0, gt=0)
    # The id every job names (core.store_identity), instead of the one kept in the data dir or
    # made from the Qdrant URL: pinned to run the jobs queued under an id that changed, or to tell
    # two copies of one data dir apart.
    id: str | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9:._-]+$")
    # HNSW defaults, chosen from the sweeps in bench/RESULTS.md: ef_construct 64 builds 1 M x 512
    # in ~4.5 min on 2 cores (100: ~6.5 min, no better recall once filters are post-filtered);
    # ef 384 keeps unfiltered recall@10 near 0.997 at 1 M (256: 0.991).
    # New collections store int8 scalar-quantized vectors beside the originals and rescore with the
    # originals (recall unchanged: 1 M x 512, 0.997 / 0.996 / 1.0 none / modality / pathology). On 2
    # cores: 1 M build 251 s (float32 only: 751 s), p50 3.0 / 4.5 / 1.9 ms (9.6 / 9.8 / 4.6 ms), for
    # 25 % more memory; "none" keeps float32 only (bench/RESULTS.md).
    default_quantization: Literal["none", "int8"] = "int8"
    hnsw_m: int = Field(default=16, ge=2, le=512)
    hnsw_ef_construct: int = Field(default=64, ge=4)
    hnsw_payload_m: int = Field(default=16, ge=0, le=512)
    hnsw_ef: int = Field(default=384, ge=1)
    # Below this many KB of vectors a segment is searched by full scan and gets no HNSW graph; it is
    # also the engine's indexing threshold for new collections (both 10,000 KB, the engine's default)
    # and the unindexed volume at which the owner builds the index by itself (below).
    full_scan_threshold_kb: int = Field(default=10_000, ge=0)
    # Writes are refused (StoreFull: HTTP 507, CLI exit 4) while the disk under the store has less
    # free space than this, plus what the write itself may take: the engine memory-maps its files,
    # and a full disk would end the process with SIGBUS instead of an error.
    min_free_mb: int = Field(default=1024, ge=0)
    # The store's owner builds a collection's index (EdgeIndex.optimize) in a background thread once
    # the vectors written since its last build pass ``full_scan_threshold_kb``: after
    # ``auto_index_quiet_s`` without writes to it, at the latest ``auto_index_max_delay_s`` after the
    # threshold was passed (at 60 k points a search took 40.7 ms unindexed, 3.0 ms indexed).
    auto_index: bool = True
    auto_index_quiet_s: float = Field(default=5.0, ge=0)
    auto_index_max_delay_s: float = Field(default=300.0, ge=0)
    # Indexed payload fields that get payload-aware HNSW links (``payload_m`` per value block
    # larger than the full-scan threshold); the other indexed fields get none.
    hnsw_payload_fields: tuple[str, ...] = FILTER_FIELDS
    # New collections index every combination of two or more of these labels as one integer key
    # (core/index/combinations.py): a filter on several of them is one index lookup, not a check of
    # each further condition on every point of the narrowest (1 M points, modality AND anatomy AND
    # pathology: ~9 of the 16 ms a search took). () turns it off for new collections.
    combined_filter_fields: tuple[str, ...] = ("modality", "anatomy", "pathology")
    # Filtered searches (EdgeIndex._filtered_plan, bench/RESULTS.md):
    # - filters matching at least ``post_filter_min_share`` of the collection, for pages of at
    #   most ``post_filter_max_results``: the ``post_filter_factor`` x (page / share) nearest
    #   unfiltered candidates (at most ``post_filter_max_candidates``), then the filter over those
    #   alone; when they hold too few matches, the next rule;
    # - filters matching more than ``acorn_max_points`` points: payload-linked HNSW with
    #   ``hnsw_ef_filtered``;
    # - smaller ones matching at least ``acorn_min_selectivity`` of the collection: ACORN with
    #   ``hnsw_ef_acorn`` (the engine applies it below ``acorn_max_selectivity``);
    # - the rest (small, selective filters, served by their payload links): ``hnsw_ef_selective``.
    # ACORN gave recall 1.0 on a 25 k-point filter at 100 k points but 3-20x the latency on the
    # 250 k- and 20 k-point filters at 1 M.
    # The Qdrant-server backend leaves the plan to the server: ACORN (``acorn``, applied below
    # ``acorn_max_selectivity``) on every filtered search.
    post_filter_min_share: float = Field(default=0.2, ge=0, le=1)
    # 3 x (page / share) candidates: 1 M points, recall@10 the same as at 4 (0.9984 modality, 0.9998
    # modality AND anatomy), p50 3.4-3.7 / 3.2-3.6 ms against 4.2-4.3 / 4.1-4.6 ms (Zen 4). A filter
    # matching far fewer of the query's neighbours than its share falls back (the next rule).
    post_filter_factor: float = Field(default=3.0, gt=0)
    post_filter_max_candidates: int = Field(default=1000, ge=1)
    post_filter_max_results: int = Field(default=100, ge=0)
    # Filters matching at most this many points are scanned: every matching point scored (by its
    # original vector where the originals are in RAM, else by int8 then rescored; from disk the
    # pages the scan read count towards release_mapped_mb). At 1 M points
    # modality AND anatomy AND pathology (4.6 k points) reached recall 0.85-0.97 on the graphs
    # and 0.988 with ACORN (30 ms), 1.0 scanned (17.6 ms, ~10 of them the filter's evaluation;
    # 3-5 ms as one lookup of its combination: combined_filter_fields); at 300 k the 2 % filter
    # (6 k points) 0.9765 on its links. Where such a filter reaches the engine as one condition
    # (its labels' combination) under the engine's full-scan threshold, the engine's own plain
    # search (int8, the best rescored) replaces the scan: 0.5 instead of 1.6 ms for 4.6 k points.
    filter_exact_max_points: int = Field(default=10_000, ge=0)
    acorn: bool = True
    acorn_max_selectivity: float = Field(default=0.4, ge=0, le=1)
    acorn_max_points: int = Field(default=50_000, ge=0)
    acorn_min_selectivity: float = Field(default=0.1, ge=0, le=1)
    hnsw_ef_acorn: int = Field(default=32, ge=1)
    hnsw_ef_filtered: int = Field(default=384, ge=1)
    # Small filters ride their payload links: 1 M points, 2 % filter (20 k points), recall@10 1.0
    # at ef 128 in 3.6 ms (256: 6.1 ms). Smaller ones are scanned (filter_exact_max_points).
    hnsw_ef_selective: int = Field(default=128, ge=1)
    # Post-filtered searches draw their candidates at this ef (at least the number of candidates):
    # 1 M points, the 25 % modality filter (post_filter_factor 4), recall@10 0.9998 at 384 in 6.1 ms,
    # 0.9994 at 256 in 5.0 ms, 0.9992 at 192 in 4.2-5.0 ms, 0.9982 at 160 in 4.0 ms (Zen 4,
    # bench/RESULTS.md session 9).
    # Filters the post-filter cannot serve fall back to filtered HNSW at ``hnsw_ef_filtered``.
    post_filter_ef: int = Field(default=192, ge=1)
    # Combined filters post-filtered within their narrowest linked condition (EdgeIndex.
    # _filtered_plan) draw their candidates at this ef: 300 k points, modality AND anatomy,
    # recall@10 0.9945 at 128 in 6.4 ms, 0.997 at 384 in 12.0 ms.
    post_filter_base_ef: int = Field(default=128, ge=1)
    # Threads of each collection's engine search pool, which searches a collection's segments in
    # parallel. An optimized collection is one indexed segment (the optimizer builds the
    # appendable segment whole) and the engine holds the GIL while it searches, so a search runs on
    # one thread whatever this is; the pool's other threads (one per CPU by default) spin while
    # they wait, on the cores the search and the API need. 1 M points, 2 cores (Zen 4), four
    # reopens each: 21-36 % less CPU per search than the engine's default (8 threads), p50 8-22 %
    # and p99 17-33 % lower, recall the same (bench/RESULTS.md, session 10). Applied at every open.
    search_threads: int = Field(default=1, ge=1)
    # Processes beside the store's owner in `radsearch serve` that hold a copy of each searched
    # collection and share its searches (core/index/replica.py): the engine holds the GIL for a
    # whole search, so one process searches on one core. Each costs as much memory and disk as
    # the collections it copies; at most one per CPU beyond the first; 0 = the owner searches
    # alone. A copy is refreshed once its collection has had no write for
    # ``search_replica_quiet_s`` and its index is built; until then the owner answers alone.
    # A collection is copied only once its searches queue on the owner. 1 M x 512 on 2 cores (Zen 4),
    # 4 and 8 clients: QPS and latency the same within run-to-run noise at the default ef, where
    # the API's Python, not the engine, is the limit; +22-24 % QPS and p99 39-44 -> 33 ms where the
    # engine is (hnsw_ef 1024, ~4.9 ms per search; bench/RESULTS.md, session 12).
    search_replicas: int = Field(default=1, ge=0, le=16)
    search_replica_quiet_s: float = Field(default=10.0, ge=0)
    # Collections with on-disk originals: once the owner's RSS has grown by this many MB since the
    # last release, it drops the pages of their original vectors, payload pages and WAL that
    # searches mapped (they stay in the page cache; core/index/resident.py). Without it a server's
    # RSS grew with distinct queries (1,054 -> 1,283 MB over 3,000 at 1 M); 0 = never. A long run's
    # peak is what the server holds plus this budget: 1 M points, 5,000 queries, 1,130 / 1,103 MB
    # at 32 against 1,156 / 1,145 at 64, the same p50 and p99 (a release takes 3-8 ms; at ~40 KB of
    # new mappings per search, one in ~800 searches pays it; bench/RESULTS.md, session 16).
    release_mapped_mb: int = Field(default=32, ge=0)
    # A dropped embedded collection goes to ``<data>/trash/`` for this many hours (restorable with
    # ``radsearch collections restore``), then is purged when the owner starts or after a drop.
    trash_hours: float = Field(default=24.0, ge=0)

    @field_validator("combined_filter_fields", "hnsw_payload_fields")
    @classmethod
    def _known_filter_fields(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not set(value) <= set(FILTER_FIELDS):
            raise ValueError(f"must name filter fields only: {', '.join(FILTER_FIELDS)}")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="before")
    @classmethod
    def _no_replaced_settings(cls, data: Any) -> Any:
        # A setting that was replaced is refused, not ignored: the operator learns what to set.
        if isinstance(data, dict) and "release_originals_every" in data:
            raise ValueError(
                "release_originals_every was replaced by release_mapped_mb (an RSS budget in MB; "
                "RADSEARCH_STORE__RELEASE_MAPPED_MB)"
            )
        return data


class S3Settings(_Group):
    """An S3 endpoint (MinIO in production, moto's server in tests)."""

    endpoint: str = "127.0.0.1:9000"
    access_key: str | None = None
    secret_key: SecretStr | None = None
    secure: bool = False
    region: str | None = None

    @field_validator("endpoint")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        """``host:port`` as the S3 client takes it; a URL is refused at start-up, naming the form."""
        if "://" in value or "/" in value:
            raise ValueError(
                "give host:port without a scheme or path (minio:9000); RADSEARCH_S3__SECURE=true for https"
            )
        return value


class RedisSettings(_Group):
    url: str = "redis://127.0.0.1:6379/0"

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        """Checked at start-up: Celery would take a URL without one for a transport module's name."""
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix:// (redis://127.0.0.1:6379/0)")
        return value


_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
_FALSE_WORDS = frozenset({"false", "0", "no", "off"})


def _auto_or_bool(value: Any) -> Any:
    """``auto`` or a boolean, checked before pydantic tries the two kinds in turn (whose two errors
    would name setting variables that do not exist)."""
    if isinstance(value, bool) or value == "auto":
        return value
    word = str(value).strip().lower()
    if word in _TRUE_WORDS | _FALSE_WORDS:
        return word in _TRUE_WORDS
    raise ValueError("must be auto, true or false")


class RuntimeSettings(_Group):
    """Which device and dtype encoders run on. ``auto`` picks CUDA when present, and bf16 on CPUs
    with native bf16 instructions (fp16/bf16 on CUDA)."""

    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    torch_threads: int | None = Field(default=None, ge=1)
    # On CPU, run encoders in fp32 with their Linear layers (the attention's projections too)
    # dynamically quantized to int8 (torch's dynamic quantization, on the engine measured fastest
    # here): a clip-vit-b16 query by image ~2x faster than fp32 on a CPU without fast bf16 (Zen 3:
    # 165 instead of 312 ms over HTTP), embeddings at cosine 0.9997 of fp32's; faster than bf16 on
    # some CPUs with it (Zen 4: ~95 against ~150 ms per forward). auto: where dtype is auto too, no
    # encoder is compiled, and an int8 Linear is measured faster than one in the dtype auto would
    # pick here (fp32, or bf16 where it is fast); true: on CPU always; false: never.
    cpu_int8_linear: Annotated[Literal["auto"] | bool, BeforeValidator(_auto_or_bool)] = "auto"
    # Compile the image tower with torch.compile (inductor, weights frozen into the graph) when the
    # encoder loads: clip-vit-b16 at batch 1 in bf16 on a 2-core Zen 5 took 67-74 ms instead of
    # 81-131 ms eager. Costs ~40 s per process at the first load and needs a C++ compiler (gcc) on
    # the host; for query servers. Excludes cpu_int8_linear true (auto then stays off).
    compile_encoders: bool = False

    @model_validator(mode="after")
    def _one_acceleration(self) -> RuntimeSettings:
        if self.cpu_int8_linear is True and self.compile_encoders:
            raise ValueError("cpu_int8_linear and compile_encoders exclude each other: choose one")
        return self


class ModelSettings(_Group):
    """Where encoder weights come from."""

    cache_dir: Path | None = None  # default: <data_dir>/models
    offline: bool = False


class IngestSettings(_Group):
    batch_size: int = Field(default=32, ge=1, le=4096)
    decode_workers: int = Field(default=2, ge=1, le=64)
    max_frames_per_object: int = Field(default=64, ge=1)
    max_pixels_per_frame: int = Field(default=8192 * 8192, ge=1)
    max_object_bytes: int = Field(default=2 * 1024**3, ge=1)
    decode_timeout_s: float = Field(default=30.0, gt=0)


RoleName = Literal["reader", "ingest", "admin", "metrics", "clinician"]


class ApiKeyEntry(_Group):
    """One API key, stored as the SHA-256 hex digest of the key (the key itself is never stored).

    ``radsearch keys create --role reader --name ci`` prints a new key and this entry.
    """

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    role: RoleName
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")

    @field_validator("sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class OidcSettings(_Group):
    """Bearer JWTs from an OpenID Connect provider (e.g. Keycloak) or signed with a shared key.

    ``role_claim`` is a dotted path into the claims (Keycloak: ``realm_access.roles``) holding a
    string or a list of strings; values equal to a role name (or mapped by ``role_map``) grant it.
    """

    issuer: str
    audience: str
    role_claim: str = "roles"
    role_map: dict[str, RoleName] = Field(default_factory=dict)
    jwks_url: str | None = None  # e.g. <issuer>/protocol/openid-connect/certs
    shared_key: SecretStr | None = None  # HS256/384/512 instead of a JWKS
    algorithms: list[str] = Field(default_factory=lambda: ["RS256"])
    leeway_s: float = Field(default=30.0, ge=0, le=300)

    @field_validator("algorithms")
    @classmethod
    def _no_unsigned(cls, value: list[str]) -> list[str]:
        if not value or any(alg.lower() == "none" for alg in value):
            raise ValueError("algorithms must name signature algorithms (never 'none')")
        return value

    @model_validator(mode="after")
    def _one_way_to_check_signatures(self) -> OidcSettings:
        """Refused here, not met as a 401 for every token: no key to check signatures with, two
        of them, or algorithms the key cannot check (a shared key signs with HS*, a JWKS's keys
        with the others)."""
        if (self.jwks_url is None) == (self.shared_key is None):
            raise ValueError(
                "give jwks_url (the provider's keys, e.g. <issuer>/protocol/openid-connect/certs) or "
                'shared_key with algorithms ["HS256"], one of them'
            )
        shared = [alg for alg in self.algorithms if alg.upper().startswith("HS")]
        if self.shared_key is not None and len(shared) != len(self.algorithms):
            raise ValueError('a shared_key checks HS256, HS384 or HS512 only: set algorithms, e.g. ["HS256"]')
        if self.jwks_url is not None and shared:
            raise ValueError("a JWKS holds public keys: algorithms HS256/384/512 need shared_key instead")
        return self


class SecuritySettings(_Group):
    """Who may call the API. Without any key or OIDC issuer the API is open to loopback clients only
    and ``radsearch serve`` refuses to bind another address."""

    # Key for the keyed hashes of DICOM UIDs and patient ids; generated once per data dir if unset.
    hash_key: SecretStr | None = None
    # RADSEARCH_SECURITY__API_KEYS='[{"name": "web", "role": "reader", "sha256": "<hex>"}]'
    api_keys: list[ApiKeyEntry] = Field(default_factory=list)
    # The same list as a JSON file (a mounted secret), read at start-up.
    api_keys_file: Path | None = None
    oidc: OidcSettings | None = None

    def key_entries(self) -> list[ApiKeyEntry]:
        """Configured keys plus those of ``api_keys_file``; `ConfigError` naming the file and what
        is wrong with it (an entry by its position and field, never a value), or the entries that
        hold the same key."""
        entries = list(self.api_keys)
        if self.api_keys_file is not None:
            entries.extend(_read_key_file(self.api_keys_file))
        holders: dict[str, ApiKeyEntry] = {}
        for entry in entries:  # which role a key listed twice would get must not depend on order
            if (first := holders.setdefault(entry.sha256, entry)) is not entry:
                raise ConfigError(
                    f"API key entries {first.name!r} and {entry.name!r} hold the same key (one "
                    "sha256): a key has one name and one role; keep one entry"
                )
        return entries

    @property
    def auth_configured(self) -> bool:
        return bool(self.api_keys) or self.api_keys_file is not None or self.oidc is not None


def _read_key_file(path: Path) -> list[ApiKeyEntry]:
    where = f"RADSEARCH_SECURITY__API_KEYS_FILE ({path})"
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        line = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ConfigError(f"{where}: not JSON{line}") from None
    if not isinstance(raw, list):
        raise ConfigError(f'{where}: must hold a JSON list of {{"name", "role", "sha256"}} entries')
    entries = []
    for position, item in enumerate(raw, start=1):
        try:
            entries.append(ApiKeyEntry.model_validate(item))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'entry'}: {error['msg']}"
                for error in exc.errors()
            )
            raise ConfigError(f"{where}: entry {position}: {problems}") from None
    return entries


class ApiSettings(_Group):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Every request body except image uploads (JSON searches, jobs, events).
    max_json_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_limit: int = Field(default=1000, ge=1, le=100_000)
    # /docs, /redoc and /openapi.json; None: on while the API is open (no keys), off once keys are set.
    docs: bool | None = None
    # The embedded store (backend "edge") in a child process of the server (core.index.hosted):
    # the engine holds the GIL while it searches, so in the server's own process the two take
    # turns on one core; apart, the server's Python runs beside the searches.
    index_process: bool = True
    # uvicorn's access log: a line per request (client, method, path, status). Off spares the API
    # process ~8 % of its CPU per search at high rates (bench/RESULTS.md, session 15); each
    # search's own line (collection, mode, hits, time; logged at INFO, `radsearch -v serve`) stays.
    access_log: bool = True
    # Plain JSON searches (by a point or a vector, no groups) answered by the route's own code
    # without FastAPI's routing, dependency solving and response validation: ~30 % less of the
    # API's CPU per search (search_api/direct_search.py, bench/RESULTS.md session 17). Off sends
    # them through FastAPI.
    direct_search: bool = True
    # Folders on the server's disk that ingest jobs run by the store's owner may read (and take a
    # manifest from), e.g. RADSEARCH_API__INGEST_ROOTS='["/srv/archive"]'. Without them a local
    # folder is read only while the API is open (no keys: loopback clients, the same machine).
    ingest_roots: list[Path] = Field(default_factory=list)


class CelerySettings(_Group):
    """The scaled-out executor: Celery on Redis (see ``workers/``).

    ``visibility_timeout_s`` must exceed the longest batch: a task still running after it is
    delivered again, concurrently (harmless with deterministic ids, but wasted work).
    """

    broker_url: str | None = None  # default: redis.url
    result_backend: str | None = None  # default: redis.url
    visibility_timeout_s: int = Field(default=3600, ge=1)
    # How often a worker sweeps unacked messages older than the visibility timeout back into the
    # queue (kombu's unacked_restore_interval with throttle 1).
    restore_interval_s: int = Field(default=30, ge=1)
    task_batch_size: int = Field(default=256, ge=1, le=100_000)
    max_retries: int = Field(default=5, ge=0)
    retry_backoff_s: float = Field(default=2.0, gt=0)
    retry_backoff_max_s: float = Field(default=300.0, gt=0)
    # A message delivered this many times (worker killed while running it, retries) goes to the
    # dead-letter list instead of running again: breaks poison-message loops.
    max_deliveries: int = Field(default=10, ge=1)
    publish_timeout_s: float = Field(default=10.0, gt=0)
    job_ttl_s: int = Field(default=30 * 24 * 3600, ge=60)
    max_failed_items: int = Field(default=10_000, ge=0)
    # Periodic reconciliation of every subscription by Celery beat; 0 turns it off.
    reconcile_interval_s: float = Field(default=6 * 3600, ge=0)
    # Where `radsearch worker --metrics-port` listens (0.0.0.0 in compose, for the scraper).
    metrics_host: str = "127.0.0.1"
    # Every worker writes a heartbeat this often; one silent for ``worker_dead_after_s`` is gone
    # (its key expires), a job whose queue has had no live worker that long says so, and the
    # messages it held are given back to their queues (`workers.held_messages`).
    worker_heartbeat_s: float = Field(default=10.0, gt=0)
    worker_dead_after_s: float = Field(default=30.0, gt=0)


class Subscription(_Group):
    """Objects under ``s3://bucket/prefix`` feed these collections (bucket events, reconcile)."""

    bucket: str
    prefix: str = ""
    collections: list[str] = Field(min_length=1)
    path_template: str | None = None
    manifest: str | None = None  # a path or s3:// URI of a CSV/JSONL manifest

    @property
    def source(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


class EventSettings(_Group):
    """The bucket-notification webhook (``POST /v1/events/s3``) and its subscriptions.

    ``RADSEARCH_EVENTS__SUBSCRIPTIONS='[{"bucket": "raw", "prefix": "ct/", "collections": ["biomedclip"]}]'``
    """

    webhook_token: SecretStr | None = None  # the webhook is refused (503) while unset
    subscriptions: list[Subscription] = Field(default_factory=list)


DICOMWEB_SCHEMES = ("dicomweb+http://", "dicomweb+https://")


def split_dicomweb_uri(uri: str) -> SplitResult:
    """The http(s) parts of ``dicomweb+http(s)://HOST[:PORT]/PREFIX[?selectors]``; `ConfigError`
    naming what is wrong (never echoing the URI: it may hold credentials)."""
    if not uri.startswith(DICOMWEB_SCHEMES):
        raise ConfigError("a DICOMweb URI must start with dicomweb+http:// or dicomweb+https://")
    parts = urlsplit(uri.removeprefix("dicomweb+"))
    if parts.username or parts.password:
        raise ConfigError(
            "a DICOMweb URI must not hold credentials; set RADSEARCH_DICOMWEB__USERNAME/PASSWORD "
            "or RADSEARCH_DICOMWEB__BEARER_TOKEN"
        )
    if not parts.hostname:
        raise ConfigError("a DICOMweb URI needs a host: dicomweb+http://HOST[:PORT]/PREFIX")
    return parts


class DicomwebSettings(_Group):
    """A PACS spoken to over DICOMweb (QIDO-RS, WADO-RS): credentials for ``dicomweb+http(s)://``
    sources, the PACS that searches by UID fetch from, viewer deep links and re-identification.

    Credentials are basic (``username``/``password``) or bearer (``bearer_token``), never logged."""

    #: The PACS searches by UID and ``watch`` use, e.g. ``dicomweb+http://pacs:8042/dicom-web``.
    url: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    bearer_token: SecretStr | None = None
    #: Results per QIDO-RS page (studies, series, instances).
    page_size: int = Field(default=100, ge=1, le=10_000)
    #: WADO-RS retrievals in flight at once, per source.
    fetch_workers: int = Field(default=4, ge=1, le=64)
    timeout_s: float = Field(default=30.0, gt=0)
    #: The collection instances pushed by STOW-RS (``POST /v1/dicomweb/studies``) go to, unless
    #: the request names one (``?collection=``).
    stow_collection: str = "pacs"
    #: The viewer hits link to (``{viewer}`` in the template), e.g. an OHIF at ``https://ohif.example``.
    viewer: str | None = None
    viewer_template: str = "{viewer}/viewer?StudyInstanceUIDs={study_uid}"
    #: Fernet key (urlsafe base64 of 32 bytes) of the re-identification table; generated once per
    #: data dir (``<data_dir>/reid.key``) if unset.
    reid_key: SecretStr | None = None

    @field_validator("url")
    @classmethod
    def _dicomweb_url(cls, value: str | None) -> str | None:
        """Checked at start-up, not at a client's first search by UID (which would get the 400)."""
        if value is not None:
            try:
                split_dicomweb_uri(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value


def is_http_url(value: str) -> bool:
    """Whether ``value`` is an ``http://`` or ``https://`` URL with a host (a server's root)."""
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class Settings(BaseSettings):
    """All of radsearch's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="RADSEARCH_",
        env_nested_delimiter="__",
        env_ignore_empty=True,
        extra="ignore",
    )

    data_dir: Path = Path("./data")
    # Log lines as text, or one JSON object per line (with the request id) for a log collector.
    log_format: Literal["text", "json"] = "text"
    # A radsearch server to send commands to instead of opening the store (RADSEARCH_URL); by
    # default the CLI finds the server that owns the data dir by itself.
    url: str | None = None
    api_key: SecretStr | None = None  # RADSEARCH_API_KEY, for ``url`` or the owning server
    store: StoreSettings = Field(default_factory=StoreSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    celery: CelerySettings = Field(default_factory=CelerySettings)
    events: EventSettings = Field(default_factory=EventSettings)
    dicomweb: DicomwebSettings = Field(default_factory=DicomwebSettings)

    @field_validator("url")
    @classmethod
    def _an_http_url(cls, value: str | None) -> str | None:
        """A server's URL, checked here rather than met as "did not answer: UnsupportedProtocol"
        (the value is not echoed: a URL may carry credentials)."""
        if value is not None and not is_http_url(value):
            raise ValueError("must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000")
        return value

    @field_validator("data_dir")
    @classmethod
    def _a_folder(cls, value: Path) -> Path:
        """A data dir that is a file is refused here, not by the first command that writes into it."""
        if value.exists() and not value.is_dir():
            raise ValueError("is a file, not a folder (the data dir: --data-dir or RADSEARCH_DATA_DIR)")
        return value

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def snapshots_dir(self) -> Path:
        return self.data_dir / "snapshots"

    @property
    def trash_dir(self) -> Path:
        return self.data_dir / "trash"

    @property
    def model_cache_dir(self) -> Path:
        return self.models.cache_dir or self.data_dir / "models"

    @property
    def broker_url(self) -> str:
        """The Celery broker, which also holds the job store: ``celery.broker_url``, else ``redis.url``."""
        return self.celery.broker_url or self.redis.url

    @property
    def result_backend_url(self) -> str:
        """Celery's result backend: ``celery.result_backend``, else ``redis.url``."""
        return self.celery.result_backend or self.redis.url

    def hash_key_bytes(self) -> bytes:
        """The key for keyed hashes of identifiers; created under the data dir on first use (by
        one process: others read the key it made). `ConfigError` for a key file that cannot be
        read or is shorter than one radsearch makes (emptied or cut short, it would key every
        new hash with next to nothing)."""
        if self.security.hash_key is not None:
            return self.security.hash_key.get_secret_value().encode()
        path = self.data_dir / "hash.key"
        if not path.exists():
            _create_key_file(path)
        try:
            key = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"the hash key {path}: {os_reason(exc, 'not the hex text radsearch writes')}"
            ) from None
        if len(key) < _MIN_KEY_FILE_CHARS:
            raise ConfigError(
                f"the hash key {path} holds {len(key)} characters, fewer than the {_MIN_KEY_FILE_CHARS} "
                "radsearch writes: it was emptied or cut short. Restore it from a backup; removed, it "
                "is made anew, and every hash stored before (same-patient exclusion, DICOM ids) stays "
                "unmatched until the collections are ingested again"
            )
        return key.encode()


_MIN_KEY_FILE_CHARS = 32  # radsearch writes 64 hex characters (256 bits)


def _create_key_file(path: Path) -> None:
    """A new random key at ``path``, unless another process makes one first: written aside, then
    linked into place, which fails where the name exists, so no process reads a half-written key
    and every process keys its hashes with the same one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        aside.write_text(secrets.token_hex(32), encoding="ascii")
        aside.chmod(0o600)
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    finally:
        aside.unlink(missing_ok=True)


# RADSEARCH_* variables that are not settings: docker-compose.yml and infra/minio-init.sh build the
# services' settings from these (infra/dev.env.example), and the security tests read the fuzzing
# budget. They may sit in an operator's shell beside the settings.
COMPANION_VARIABLES = frozenset(
    {
        "RADSEARCH_API_KEYS",
        "RADSEARCH_API_MEM_LIMIT",
        "RADSEARCH_BUCKETS",
        "RADSEARCH_EVENT_BUCKETS",
        "RADSEARCH_FUZZ_SECONDS",
        "RADSEARCH_HASH_KEY",
        "RADSEARCH_METRICS_KEY",
        "RADSEARCH_S3_ACCESS_KEY",
        "RADSEARCH_S3_SECRET_KEY",
        "RADSEARCH_SUBSCRIPTIONS",
        "RADSEARCH_WEBHOOK_TOKEN",
    }
)

_PREFIX = "RADSEARCH_"

# Settings that were replaced, with what replaces them: refused naming the successor.
REPLACED_VARIABLES = {
    "RADSEARCH_STORE__RELEASE_ORIGINALS_EVERY": "RADSEARCH_STORE__RELEASE_MAPPED_MB (an RSS budget in MB)",
}


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The settings group an annotation holds (``OidcSettings | None`` -> OidcSettings), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        for arg in get_args(annotation):
            if (model := _nested_model(arg)) is not None:
                return model
    return None


def _group_keys(path: Sequence[str | int]) -> list[str]:
    """The keys the settings group at ``path`` takes (a validation error's location without its
    last part; list positions are skipped), or none where ``path`` leads to no group."""
    model: type[BaseModel] = Settings
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        annotation = field.annotation if field is not None else None
        nested = _nested_model(annotation) or next(
            (found for arg in get_args(annotation) if (found := _nested_model(arg)) is not None), None
        )
        if nested is None:
            return []
        model = nested
    return list(model.model_fields)


def _is_mapping(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_is_mapping(arg) for arg in get_args(annotation))
    return origin in (dict, Mapping)


def _setting_names(model: type[BaseModel], prefix: str) -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        variable = f"{prefix}{name.upper()}"
        names.append(variable)
        if (nested := _nested_model(field.annotation)) is not None:
            names.extend(_setting_names(nested, f"{variable}__"))
    return names


def _names_a_setting(model: type[BaseModel], parts: list[str]) -> bool:
    field = model.model_fields.get(parts[0].lower())
    if field is None:
        return False
    if len(parts) == 1:
        return True
    if (nested := _nested_model(field.annotation)) is not None:
        return _names_a_setting(nested, parts[1:])
    return _is_mapping(field.annotation)  # RADSEARCH_SECURITY__OIDC__ROLE_MAP__<claim value>


def unknown_setting_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per ``RADSEARCH_*`` variable in ``environ`` that names no setting (a typo, or a
    setting that no longer exists), with the nearest setting's name where one is close; the
    variables' values are never read. Settings would ignore such a variable without a trace."""
    problems = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith(_PREFIX) or upper in COMPANION_VARIABLES:
            continue
        if upper in REPLACED_VARIABLES:
            problems.append(f"{variable} was replaced by {REPLACED_VARIABLES[upper]}")
            continue
        name = upper.removeprefix(_PREFIX)
        if _names_a_setting(Settings, name.split("__")):
            continue
        # without the prefix, which would make every name close
        names = _setting_names(Settings, "")
        near = (
            difflib.get_close_matches(name, names, n=1, cutoff=0.75)
            or [
                # a top-level setting with words before it: RADSEARCH_API_URL for RADSEARCH_URL
                setting
                for setting in names
                if "__" not in setting and name.endswith(f"_{setting}")
            ][:1]
        )
        problems.append(
            f"{variable} is not a setting" + (f" (did you mean {_PREFIX}{near[0]}?)" if near else "")
        )
    return problems


def check_setting_variables(environ: Mapping[str, str]) -> None:
    """`ConfigError` listing `unknown_setting_variables`, if there are any: for entry points."""
    if unknown := unknown_setting_variables(environ):
        raise ConfigError(f"invalid setting: {'; '.join(unknown)}")


def _setting_problem(error: Any) -> str:
    """One validation error of the settings: the variable (or JSON key) and what is wrong with it."""
    location = error["loc"]
    where = f"RADSEARCH_{'__'.join(str(part) for part in location).upper()}"
    if error["type"] == "extra_forbidden":  # a key in a JSON setting that no setting has
        return f"{where} is not a setting{did_you_mean(str(location[-1]), _group_keys(location[:-1]))}"
    return f"{where}: {rule_broken(error)}"


def load_settings(overrides: Mapping[str, Any] | None = None) -> Settings:
    """The settings from the environment and ``overrides``, for entry points. A setting that fails
    validation is a `ConfigError` naming its environment variable (or JSON key) and the rule it
    breaks, never its value (a value may be a secret). A ``RADSEARCH_*`` variable that names no
    setting is one too: a typo in, say, RADSEARCH_SECURITY__API_KEYS would otherwise leave the API
    open without a trace."""
    check_setting_variables(os.environ)
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(f"invalid setting: {'; '.join(map(_setting_problem, exc.errors()))}") from None
    except SettingsError as exc:  # a list or mapping setting that is not JSON
        field = exc.args[0].split('"')[1] if exc.args and '"' in str(exc.args[0]) else "?"
        raise ConfigError(
            f"invalid setting: a RADSEARCH_{field.upper()}__* variable could not be parsed; lists and "
            "mappings are written as JSON, e.g. RADSEARCH_STORE__COMBINED_FILTER_FIELDS="
            '\'["modality","pathology"]\''
        ) from None
