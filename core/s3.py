"""S3 in one place: the shape of an ``s3://`` URI, its parser, and the client factory (MinIO's
client, with bounded timeouts and retries) that ingest sources and weight downloads share."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.config import S3Settings
from core.errors import ConfigError

if TYPE_CHECKING:
    from minio import Minio

__all__ = ["S3_URI", "S3Location", "parse_s3_uri", "s3_client"]

# Allow-listed shape of a bucket URI an API caller may name (never a URL: no SSRF through ingest
# or backfill): a valid bucket name, then an optional key or prefix without NUL bytes.
S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\x00]*)?$")


@dataclass(frozen=True)
class S3Location:
    """A parsed ``s3://bucket/key``: ``key`` is an object key or a prefix, possibly empty."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        """``s3://bucket/key`` (``s3://bucket`` when the key is empty)."""
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"


def parse_s3_uri(uri: str) -> S3Location:
    """``s3://bucket/prefix`` → `S3Location`; the key (prefix) may be empty. `ConfigError` when
    ``uri`` is not an ``s3://`` URI or names no bucket."""
    if not uri.startswith("s3://"):
        raise ConfigError(f"{uri!r} is not an S3 URI; expected s3://bucket/prefix")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ConfigError(f"S3 URI {uri!r} has no bucket; expected s3://bucket/prefix")
    return S3Location(bucket, key)


def s3_client(
    s3: S3Settings,
    *,
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 60.0,
    retry_connect: bool = True,
    credentials_required: bool = True,
) -> Minio:
    """A MinIO client for the configured endpoint: connections open within ``connect_timeout_s``,
    reads stall at most ``read_timeout_s``, and a request is retried up to three times on a 5xx
    answer (and on a failed connection unless ``retry_connect`` is off, for callers that must fail
    at once when the endpoint is down). `ConfigError` without credentials when they are required."""
    import urllib3
    from minio import Minio

    if credentials_required and (not s3.access_key or s3.secret_key is None):
        raise ConfigError(
            "S3 credentials missing: set RADSEARCH_S3__ACCESS_KEY and RADSEARCH_S3__SECRET_KEY "
            f"(endpoint {s3.endpoint})"
        )
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=connect_timeout_s, read=read_timeout_s),
        maxsize=16,
        retries=urllib3.Retry(
            total=3,
            connect=None if retry_connect else 0,
            backoff_factor=0.2,
            status_forcelist=(500, 502, 503, 504),
        ),
    )
    return Minio(
        s3.endpoint,
        access_key=s3.access_key,
        secret_key=s3.secret_key.get_secret_value() if s3.secret_key is not None else None,
        secure=s3.secure,
        region=s3.region,
        http_client=http,
    )
