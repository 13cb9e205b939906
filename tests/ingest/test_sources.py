from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from minio import Minio

from core.config import Settings
from core.errors import BadInput, ConfigError, ObjectNotFound, SourceError, TooLarge
from ingest.planner import plan_batches
from ingest.sources import open_source
from ingest.sources.s3 import S3Source


def test_local_source_lists_fetches_and_refuses_traversal(tmp_path: Path, settings: Settings) -> None:
    root = tmp_path / "archive"
    (root / "CT" / "chest").mkdir(parents=True)
    (root / "CT" / "chest" / "a.dcm").write_bytes(b"a" * 10)
    (root / "b.png").write_bytes(b"bb")
    (root / ".hidden").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("outside")
    source = open_source(str(root), settings)
    refs = list(source.list())
    assert sorted(r.key for r in refs) == ["CT/chest/a.dcm", "b.png"]
    by_key = {r.key: r for r in refs}
    assert by_key["CT/chest/a.dcm"].size == 10 and by_key["CT/chest/a.dcm"].etag
    assert source.fetch("b.png") == b"bb"
    with pytest.raises(BadInput, match="outside the source"):
        source.fetch("../secret.txt")
    with pytest.raises(BadInput, match="not found"):
        source.fetch("nope.png")
    assert source.stat("b.png").size == 2


def test_local_source_size_limit(tmp_path: Path, settings: Settings) -> None:
    (tmp_path / "big.png").write_bytes(b"x" * 100)
    small = settings.model_copy(
        update={"ingest": settings.ingest.model_copy(update={"max_object_bytes": 50})}
    )
    with pytest.raises(TooLarge):
        open_source(str(tmp_path), small).fetch("big.png")


def test_unknown_scheme_and_missing_folder_are_config_errors(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(ConfigError, match=r"unsupported source \(ftp://\.\.\.\)") as refused:
        open_source("ftp://user:secret@host/x", settings)
    assert "secret" not in str(refused.value)
    with pytest.raises(ConfigError, match="does not exist"):
        open_source(str(tmp_path / "missing"), settings)
    # found in the walkthrough: a URI missing a slash was read as a folder that does not exist
    for typo, meant in (
        ("s3:/bucket/ct", "s3://bucket/ct"),
        ("dicomweb+http:/pacs/x", "dicomweb+http://pacs/x"),
    ):
        with pytest.raises(ConfigError, match=f"is no folder here; did you mean {re.escape(meant)}\\?"):
            open_source(typo, settings)


def test_s3_source_over_http_pages_and_metadata(minio_client: Minio, bucket: str, settings: Settings) -> None:
    for i in range(1105):  # more than one listing page (1,000 keys)
        minio_client.put_object(bucket, f"raw/{i:05d}.png", io.BytesIO(b"p"), 1)
    minio_client.put_object(bucket, "other/x.png", io.BytesIO(b"q"), 1)
    minio_client.put_object(
        bucket, "raw/meta.dcm", io.BytesIO(b"dcm"), 3, metadata={"modality": "CT", "anatomy": "chest"}
    )
    source = open_source(f"s3://{bucket}/raw/", settings)
    assert isinstance(source, S3Source)
    assert source.uri == f"s3://{bucket}"
    keys = [ref.key for ref in source.list()]
    assert len(keys) == 1106 and all(k.startswith("raw/") for k in keys)
    assert source.fetch("raw/00001.png") == b"p"
    meta = source.stat("raw/meta.dcm")
    assert meta.metadata == {"modality": "CT", "anatomy": "chest"} and meta.size == 3
    with pytest.raises(BadInput, match="not found"):
        source.fetch("raw/missing.png")
    batches = list(plan_batches(source.list(), 500))
    assert [len(b) for b in batches] == [500, 500, 106]


def test_s3_source_unreachable_endpoint_is_a_source_error(settings: Settings) -> None:
    dead = settings.model_copy(update={"s3": settings.s3.model_copy(update={"endpoint": "127.0.0.1:1"})})
    source = open_source("s3://bucket/x", dead)
    with pytest.raises(SourceError):
        list(source.list())


def test_s3_source_needs_credentials(settings: Settings) -> None:
    anonymous = settings.model_copy(update={"s3": settings.s3.model_copy(update={"access_key": None})})
    with pytest.raises(ConfigError, match="credentials"):
        open_source("s3://bucket/x", anonymous)


def test_missing_object_is_object_not_found_from_every_source(
    tmp_path: Path, minio_client: Minio, bucket: str, settings: Settings
) -> None:
    """A missing object is `ObjectNotFound` (a `BadInput` naming the key), whatever the source."""
    minio_client.put_object(bucket, "raw/here.png", io.BytesIO(b"p"), 1)
    for uri in (str(tmp_path), f"s3://{bucket}/raw/"):
        source = open_source(uri, settings)
        for call in (source.stat, source.fetch):
            with pytest.raises(ObjectNotFound) as missing:
                call("raw/gone.png")
            assert isinstance(missing.value, BadInput)
            assert (missing.value.key, missing.value.reason) == ("raw/gone.png", "object not found")
