"""An S3 bucket (MinIO, AWS, moto) as a source. Keys are full object keys within the bucket."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import urllib3
from minio.error import S3Error

from core.config import S3Settings
from core.errors import BadInput, ObjectNotFound, SourceError, TooLarge
from core.s3 import s3_client
from ingest.sources.base import ObjectRef, Source, check_source_name

__all__ = ["S3Source"]

_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NotFound"})


def _user_metadata(headers: Mapping[str, str] | None) -> dict[str, str]:
    return {
        name.lower().removeprefix("x-amz-meta-"): value
        for name, value in (headers or {}).items()
        if name.lower().startswith("x-amz-meta-")
    }


class S3Source(Source):
    """Objects under ``s3://bucket/prefix``. ``uri`` is ``s3://bucket`` (keys are full object keys,
    so the same object has the same key whichever prefix it was ingested through); ``name``
    defaults to ``bucket/prefix`` (``bucket`` without a prefix)."""

    def __init__(
        self, bucket: str, prefix: str, s3: S3Settings, *, max_object_bytes: int, name: str | None = None
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.uri = f"s3://{bucket}"
        default = f"{bucket}/{prefix.strip('/')}" if prefix.strip("/") else bucket
        self.name = check_source_name(
            name if name is not None else default,
            field="source_name" if name is not None else "the bucket/prefix name (give --source-name)",
        )
        self.max_object_bytes = max_object_bytes
        self.client = s3_client(s3)

    def list(self) -> Iterator[ObjectRef]:
        try:
            # list_objects pages through the listing lazily (1,000 keys per request).
            for obj in self.client.list_objects(self.bucket, prefix=self.prefix or None, recursive=True):
                if obj.is_dir or obj.object_name is None:
                    continue
                yield ObjectRef(key=obj.object_name, etag=(obj.etag or "").strip('"'), size=obj.size or 0)
        except S3Error as exc:
            raise SourceError(f"cannot list s3://{self.bucket}/{self.prefix}: {exc.code}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise SourceError(f"cannot reach S3 endpoint listing s3://{self.bucket}: {exc}") from exc

    def _request_error(self, exc: Exception, key: str, verb: str) -> BadInput | SourceError:
        """What a failed stat/get of ``key`` raises: a missing object is bad input, the rest transient."""
        if isinstance(exc, S3Error):
            if exc.code in _MISSING_CODES:
                return ObjectNotFound(key)
            return SourceError(f"cannot {verb} s3://{self.bucket}/{key}: {exc.code}")
        return SourceError(f"cannot reach S3 endpoint for s3://{self.bucket}: {exc}")

    def stat(self, key: str) -> ObjectRef:
        try:
            st = self.client.stat_object(self.bucket, key)
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._request_error(exc, key, "stat") from exc
        return ObjectRef(
            key=key, etag=(st.etag or "").strip('"'), size=st.size or 0, metadata=_user_metadata(st.metadata)
        )

    def fetch(self, key: str) -> bytes:
        return self.fetch_with_metadata(key)[0]

    def fetch_with_metadata(self, key: str) -> tuple[bytes, dict[str, str]]:
        try:
            response = self.client.get_object(self.bucket, key)
        except (S3Error, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._request_error(exc, key, "read") from exc
        try:
            length = int(response.headers.get("Content-Length", "0") or 0)
            if length > self.max_object_bytes:
                raise TooLarge(
                    key, f"object of {length} bytes exceeds the {self.max_object_bytes}-byte limit"
                )
            data = response.read(self.max_object_bytes + 1)
            if len(data) > self.max_object_bytes:
                raise TooLarge(key, f"object exceeds the {self.max_object_bytes}-byte limit")
            return data, _user_metadata(response.headers)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise SourceError(f"read of s3://{self.bucket}/{key} broke off: {exc}") from exc
        finally:
            response.close()
            response.release_conn()
