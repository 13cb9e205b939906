"""The one S3 URI parser and the allow-listed URI shape (`core.s3`); the client factory runs in the
S3 source and weight-download tests against moto's server."""

from __future__ import annotations

import pytest

from core.config import S3Settings
from core.errors import ConfigError
from core.s3 import S3_URI, S3Location, parse_s3_uri, s3_client


def test_parse_s3_uri_gives_bucket_and_key() -> None:
    assert parse_s3_uri("s3://raw/ct/chest/") == S3Location("raw", "ct/chest/")
    assert parse_s3_uri("s3://raw") == S3Location("raw", "")
    assert parse_s3_uri("s3://raw/") == S3Location("raw", "")
    assert parse_s3_uri("s3://models/clip/w.safetensors").uri == "s3://models/clip/w.safetensors"
    assert parse_s3_uri("s3://raw/").uri == "s3://raw"


@pytest.mark.parametrize("uri", ["s3://", "s3:///key", "/data/raw", "http://raw/x"])
def test_parse_s3_uri_refuses_what_names_no_bucket(uri: str) -> None:
    with pytest.raises(ConfigError, match="s3://bucket/prefix"):
        parse_s3_uri(uri)


@pytest.mark.parametrize(
    ("uri", "allowed"),
    [
        ("s3://raw-images/ct/", True),
        ("s3://raw.images", True),
        ("s3://Raw/ct", False),  # bucket names are lower case
        ("s3://a/x", False),  # too short for a bucket name
        ("s3://raw/x\x00y", False),
        ("https://raw/x", False),
    ],
)
def test_the_allowed_uri_shape(uri: str, allowed: bool) -> None:
    assert bool(S3_URI.match(uri)) is allowed


def test_the_client_factory_wants_credentials_unless_told_otherwise() -> None:
    anonymous = S3Settings(endpoint="127.0.0.1:9")
    with pytest.raises(ConfigError, match="RADSEARCH_S3__ACCESS_KEY"):
        s3_client(anonymous)
    assert s3_client(anonymous, credentials_required=False) is not None
