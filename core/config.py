"""One typed `Settings`, built at the entry point and passed in.

Environment variables use the prefix ``RADSEARCH_`` and ``__`` for nested groups, e.g.
``RADSEARCH_DATA_DIR=/srv/radsearch``, ``RADSEARCH_STORE__BACKEND=qdrant``,
``RADSEARCH_S3__ENDPOINT=minio:9000``.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "ApiSettings",
    "IngestSettings",
    "ModelSettings",
    "RedisSettings",
    "RuntimeSettings",
    "S3Settings",
    "SecuritySettings",
    "Settings",
    "StoreSettings",
]


class StoreSettings(BaseModel):
    """Where vectors live: the embedded Qdrant Edge engine or a Qdrant server."""

    backend: Literal["edge", "qdrant"] = "edge"
    url: str | None = None
    api_key: SecretStr | None = None
    timeout_s: float = 30.0
    # HNSW defaults; chosen from the sweep in bench/RESULTS.md.
    hnsw_m: int = 16
    hnsw_ef_construct: int = 100
    hnsw_payload_m: int = 16
    hnsw_ef: int = 128
    full_scan_threshold_kb: int = 10_000


class S3Settings(BaseModel):
    """An S3 endpoint (MinIO in production, moto's server in tests)."""

    endpoint: str = "127.0.0.1:9000"
    access_key: str | None = None
    secret_key: SecretStr | None = None
    secure: bool = False
    region: str | None = None


class RedisSettings(BaseModel):
    url: str = "redis://127.0.0.1:6379/0"


class RuntimeSettings(BaseModel):
    """Which device and dtype encoders run on. ``auto`` picks CUDA when present, and bf16 on CPUs
    with native bf16 instructions (fp16/bf16 on CUDA)."""

    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    torch_threads: int | None = None


class ModelSettings(BaseModel):
    """Where encoder weights come from."""

    cache_dir: Path | None = None  # default: <data_dir>/models
    offline: bool = False


class IngestSettings(BaseModel):
    batch_size: int = Field(default=32, ge=1, le=4096)
    decode_workers: int = Field(default=2, ge=1, le=64)
    max_frames_per_object: int = Field(default=64, ge=1)
    max_pixels_per_frame: int = Field(default=8192 * 8192, ge=1)
    max_object_bytes: int = Field(default=2 * 1024**3, ge=1)
    decode_timeout_s: float = Field(default=30.0, gt=0)


class SecuritySettings(BaseModel):
    # Key for the keyed hashes of DICOM UIDs and patient ids; generated once per data dir if unset.
    hash_key: SecretStr | None = None


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_bytes: int = 64 * 1024 * 1024
    max_limit: int = 1000


class Settings(BaseSettings):
    """All of radsearch's configuration."""

    model_config = SettingsConfigDict(
        env_prefix="RADSEARCH_",
        env_nested_delimiter="__",
        env_ignore_empty=True,
        extra="ignore",
    )

    data_dir: Path = Path("./data")
    store: StoreSettings = Field(default_factory=StoreSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    api: ApiSettings = Field(default_factory=ApiSettings)

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def model_cache_dir(self) -> Path:
        return self.models.cache_dir or self.data_dir / "models"

    def hash_key_bytes(self) -> bytes:
        """The key for keyed hashes of identifiers; created under the data dir on first use."""
        if self.security.hash_key is not None:
            return self.security.hash_key.get_secret_value().encode()
        path = self.data_dir / "hash.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip().encode()
